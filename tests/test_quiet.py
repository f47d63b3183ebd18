"""par_xl.runtime.quiet: TensorFlow starts without its C++ noise, unless the user asks for logs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What TensorFlow 2.20 prints on start-up on a machine without a GPU (par_xl/runtime/quiet.py).
NOISE = (
    "Could not find cuda drivers",
    "oneDNN custom operations are on",
    "cpu_feature_guard",
    "rebuild TensorFlow with the appropriate compiler flags",
    "failed call to cuInit",
)
SHOW_LEVEL = "import os; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"


def run_python(code, *argv, **environ):
    """Runs `python -c code *argv` on this checkout with TF_CPP_MIN_LOG_LEVEL unset (unless
    given); returns (stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    path_list = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(PYTHONPATH=path_list, **environ)
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip(), result.stderr


def test_tensorflow_starts_without_its_cpp_noise():
    start = (
        "import os, par_xl.runtime.quiet; level = os.environ.get('TF_CPP_MIN_LOG_LEVEL'); "
        "import tensorflow as tf; tf.constant(1); print(level)"
    )  # the level par_xl.runtime.quiet left (TensorFlow's import of jax sets 1 where it is unset)
    level, loud = run_python(start, "--verbosity=1")
    assert level == "None"  # asked for logs: TensorFlow's logging is left alone
    if not any(line in loud for line in NOISE):
        pytest.skip("TensorFlow prints none of its start-up noise on this machine")
    level, quiet = run_python(start)
    assert level in ("2", "3")
    assert not [line for line in NOISE if line in quiet], quiet


@pytest.mark.parametrize(
    "argv,level",
    [
        ((), "quiet"),
        (("--verbosity=0",), "quiet"),
        (("--verbosity=-1",), "quiet"),
        (("--verbosity=1",), "None"),
        (("-v", "2"), "None"),
        (("--v=1",), "None"),
        (("--verbosity", "1", "--verbosity=0"), "quiet"),  # absl: the last one wins
        (("--", "--verbosity=1"), "quiet"),  # after --: not a flag
    ],
)
def test_absl_verbosity_decides(argv, level):
    shown, _ = run_python("import par_xl.runtime.quiet; " + SHOW_LEVEL, *argv)
    assert shown in ("2", "3") if level == "quiet" else shown == level


def test_a_level_the_user_set_is_kept():
    shown, _ = run_python("import par_xl.runtime.quiet; " + SHOW_LEVEL, TF_CPP_MIN_LOG_LEVEL="0")
    assert shown == "0"


# XLA's first compile and a ScaNN index build, through the code paths that call
# `quiet_native_logs` (par_xl.runtime.native_logs): absl C++ logs TF_CPP_MIN_LOG_LEVEL misses.
NATIVE = (
    "import par_xl.runtime.quiet, sys, numpy as np, keras\n"
    "from par_xl.models.compiled import compiled_function\n"
    "from par_xl.memory.scann_backend import ScannKNNMemory\n"
    "double = compiled_function(keras.layers.Dense(1), lambda layer, x: x * 2.0, True)\n"
    "print(double(np.ones(3, 'float32')).numpy().sum())\n"
    "memory = ScannKNNMemory(batch_size=1, num_heads=1, capacity=512, key_size=4,"
    " min_index_size=16)\n"
    "rows = np.random.default_rng(0).normal(size=(1, 500, 1, 4)).astype('float32')\n"
    "memory.add(rows, rows)\n"
    "print(memory.build_count)\n"
)
NATIVE_NOISE = ("Compiled cluster using XLA", "partitioner_factory_base.cc")


def test_xla_and_scann_logs_hidden_unless_asked_for():
    out, loud = run_python(NATIVE, "--verbosity=1")
    assert out.split() == ["6.0", "1"]  # it compiled with XLA and built one ScaNN index
    assert all(line in loud for line in NATIVE_NOISE), loud  # what there is to hide
    out, quiet = run_python(NATIVE)
    assert out.split() == ["6.0", "1"]
    assert not [line for line in NATIVE_NOISE if line in quiet], quiet
