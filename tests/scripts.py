"""Runs the repository's command-line scripts (train.py, generate.py, build_data.py, ...) for
the tests, as `python <script> <args>` would, without paying TensorFlow's import each time.

Importing TensorFlow, Keras and par_xl takes 6-10 s of CPU on this project's 2-core machines,
more than most scripts under test then do. The scripts run in children forked from one server
process per pytest worker that has imported them once (multiprocessing's "forkserver"; nothing
is run in the server, so each child starts TensorFlow's runtime afresh). Each child gets the
caller's current environment, the working directory, the script as `sys.argv[0]` and
`__main__`, its stdout and stderr in files: a script sees what a new interpreter would, except
for the modules already in `sys.modules`. Tests about a fresh interpreter itself (TensorFlow's
start-up logs, signals, the JAX backend, several processes) start real subprocesses instead.
"""

import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# par_xl.runtime.quiet first: as in the scripts, before TensorFlow loads (its C++ log level).
PRELOAD = ["par_xl.runtime.quiet", "tensorflow", "keras", "par_xl.training.trainer", "par_xl.data"]
_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run(script, args, env, cwd, stdout, stderr):
    """In the child: the script as `python script args` would run it; its exit code (or 1 and
    the traceback on stderr, for an uncaught exception) becomes the child's."""
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY), fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    script = str(Path(cwd, script))
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).parent))
    runpy.run_path(script, run_name="__main__")


def run_script(script, *args, env=None, cwd=REPO, timeout=None):
    """`subprocess.run([python, script, *args], capture_output=True, text=True)` in a child of
    the preloaded server: a `CompletedProcess` with returncode, stdout and stderr. `script` is
    relative to `cwd` (default the repository); `env` defaults to this process's environment."""
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="par_xl_script_") as directory:
        out, err = Path(directory, "stdout"), Path(directory, "stderr")
        out.touch()
        err.touch()
        child = _forkserver().Process(
            target=_run, args=(str(script), [str(a) for a in args], env, str(cwd), out, err)
        )
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([script, *args], timeout, out.read_text())
        return subprocess.CompletedProcess(
            [script, *args], child.exitcode, out.read_text(), err.read_text()
        )
