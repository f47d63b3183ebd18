"""Training: schedules, callbacks, checkpoints, evaluation and the run itself."""
