"""Importing this module quiets TensorFlow's C++ start-up logs: import it before TensorFlow.

TensorFlow's C++ logging reads `TF_CPP_MIN_LOG_LEVEL` once, when TensorFlow loads, so the
import must come before anything that imports TensorFlow (keras, `par_xl.data`,
`par_xl.layers`, ...); the scripts import it first among the par_xl modules. On a machine
without a GPU a newcomer otherwise sees, before anything of ours:

    I cudart_stub.cc]  Could not find cuda drivers on your machine, GPU will not be used.
    I port.cc]  oneDNN custom operations are on. You may see slightly different numerical ...
    I cpu_feature_guard.cc]  This TensorFlow binary is optimized to use available CPU
        instructions ... rebuild TensorFlow with the appropriate compiler flags.
    E cuda_platform.cc]  failed call to cuInit: INTERNAL: CUDA error: ... UNKNOWN ERROR (303)
    I local_rendezvous.cc]  Local rendezvous is aborting with status: OUT_OF_RANGE: End of
        sequence                                            (at the end of a dataset)

The level hides messages below it: 1 hides INFO, 2 WARNING as well, 3 ERROR as well (FATAL
stays). All the lines above are INFO except the failed cuInit, which TensorFlow logs as an
ERROR on every machine without the NVIDIA driver, so no level hides it and keeps errors. The
choice: level 2 (INFO and WARNING hidden, ERROR kept) where the NVIDIA driver library loads,
and level 3 where it does not, there the only start-up ERROR being that cuInit says there is
no GPU. Real failures still reach the user as Python exceptions carrying TensorFlow's message.
`TF_ENABLE_ONEDNN_OPTS` is left alone: only its message is hidden, the numerics do not change.

Nothing is changed when the user has set `TF_CPP_MIN_LOG_LEVEL` or asked absl for more logs
(`--verbosity=1` or higher, `-v 1`): then TensorFlow logs as it always does.

Two native libraries log through absl's C++ logging, which never reads `TF_CPP_MIN_LOG_LEVEL`:
XLA inside TensorFlow ("I device_compiler.h] Compiled cluster using XLA!", at every first
compile) and ScaNN ("I partitioner_factory_base.cc] Size of sampled dataset ...", at every index
build). `par_xl.runtime.native_logs` gives each loaded library's absl the same level; the code that
loads or first compiles with them calls it. A user's own `TF_CPP_MIN_LOG_LEVEL` applies there
too.
"""

import ctypes
import os
import sys

LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


def absl_verbosity(argv):
    """The integer given to absl's `--verbosity` (or `-v`) in `argv`, the last one wins;
    None when absent or not an integer (absl then reports the bad flag itself)."""
    verbosity = None
    for i, arg in enumerate(argv):
        if arg == "--":  # the end of the flags
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in ("verbosity", "v"):
            continue
        if not has_value:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        try:
            verbosity = int(value)
        except ValueError:
            continue
    return verbosity


def cuda_init_fails():
    """Whether TensorFlow will log a failed cuInit: on Linux without the NVIDIA driver library
    (the library TensorFlow loads, loaded the same way)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


def tensorflow_log_level(argv, environ):
    """The `TF_CPP_MIN_LOG_LEVEL` to set (module docstring), or None to leave TensorFlow's
    logging alone: the user set the variable, or passed `--verbosity` >= 1."""
    if LOG_LEVEL in environ:
        return None
    verbosity = absl_verbosity(argv)
    if verbosity is not None and verbosity >= 1:
        return None
    return "3" if cuda_init_fails() else "2"


def quiet_tensorflow_logs(argv=None, environ=None):
    """Sets `TF_CPP_MIN_LOG_LEVEL` in `environ` (default `os.environ`) as the module docstring
    says, from the command line `argv` (default `sys.argv[1:]`); returns the level set, or
    None. Runs on import; it has no effect once TensorFlow is loaded."""
    environ = os.environ if environ is None else environ
    level = tensorflow_log_level(sys.argv[1:] if argv is None else argv, environ)
    if level is not None:
        environ[LOG_LEVEL] = level
    return level


quiet_tensorflow_logs()
# The level TensorFlow starts with (ours, or the user's; None when the user asked for logs):
# `par_xl.runtime.native_logs` gives it to the libraries that log through absl.
STARTUP_LEVEL = os.environ.get(LOG_LEVEL)
