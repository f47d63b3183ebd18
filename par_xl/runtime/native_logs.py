"""`TF_CPP_MIN_LOG_LEVEL` applied to the native libraries that log through absl's C++ logging.

XLA inside TensorFlow ("I device_compiler.h] Compiled cluster using XLA!", at the first compile)
and ScaNN ("I partitioner_factory_base.cc] Size of sampled dataset ...", at every index build)
log through absl, which never reads TensorFlow's variable. `par_xl.runtime.quiet` sets the
variable for the scripts; the code that loads ScaNN or compiles with XLA calls
`quiet_native_logs`, which gives each loaded library's absl the level TensorFlow started with
(`quiet.STARTUP_LEVEL`; absl's severities are TensorFlow's: 1 hides INFO, 2 WARNING too, 3
ERROR too). Without `par_xl.runtime.quiet` (a library user's process), or with `--verbosity=1`,
nothing changes; the level that importing jax sets later (1) does not count. Importing this
module does nothing.
"""

import ctypes
import os
import sys

# absl::SetMinLogLevel(absl::LogSeverityAtLeast) of absl LTS 2025-01-27, which TensorFlow 2.20 and
# ScaNN 1.4.2 both export; another build of either leaves its logs as they are.
ABSL_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"
# The library of each package that holds its absl, relative to the package's directory.
NATIVE_LIBRARIES = {
    "tensorflow": "libtensorflow_framework.so.2",
    "scann": "scann_ops/cc/python/scann_pybind.so",
}


def quiet_native_logs():
    """Sets the absl C++ log level of the loaded TensorFlow and ScaNN libraries to the one
    TensorFlow started with (module docstring); returns the packages it set."""
    quiet = sys.modules.get("par_xl.runtime.quiet")
    try:
        level = min(int(quiet.STARTUP_LEVEL), 3)
    except (AttributeError, TypeError, ValueError):  # no quiet, no level, not an integer
        return []
    quieted = []
    for package, library in NATIVE_LIBRARIES.items():
        module = sys.modules.get(package)
        if module is None or getattr(module, "__file__", None) is None:
            continue
        path = os.path.join(os.path.dirname(module.__file__), library)
        try:
            set_min_log_level = getattr(ctypes.CDLL(path), ABSL_SET_MIN_LOG_LEVEL)
        except (OSError, AttributeError):
            continue
        set_min_log_level(ctypes.c_int(level))
        quieted.append(package)
    return quieted
