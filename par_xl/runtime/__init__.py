"""Process set-up: quiet logs, lean imports, a job's log file. Imports nothing itself, so
`import par_xl.runtime.quiet` can come before TensorFlow."""
