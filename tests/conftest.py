"""Shared test fixtures: the read-only WikiText-2 copy, its TFRecords, a small generated corpus."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# XLA's CPU backend compiles the tests' programs (TensorFlow's jit_compile, the JAX subprocesses)
# with LLVM at -O0: the same HLO and graph passes, a third less compile time, which is most of an
# XLA test's time. Read when XLA first compiles, so set before any test runs; a user's XLA_FLAGS
# wins. Training, benchmarks and the scripts outside the tests keep XLA's default.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

# The files that train models take most of the suite's time (`pytest --durations=0`, summed per
# file, heaviest first). Collected first, with `--dist loadfile --no-loadscope-reorder` (the
# Makefile's), the workers take them before the light files, which then fill the gaps: the
# longest file no longer starts last. Files not named keep their order after these.
HEAVIEST_FILES = (
    "test_training.py",
    "test_hostile_input.py",
    "test_knn_model.py",
    "test_model.py",
    "test_distribution.py",
    "test_notebook.py",
    "test_generation.py",
)


def pytest_collection_modifyitems(items):
    """Orders the tests by file, the heaviest files first (stable within a file)."""
    rank = {name: i for i, name in enumerate(HEAVIEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def wikitext2_path() -> Path:
    """WikiText-2 directory: $WIKITEXT2_DIR, else ../shared/data/wikitext-2 beside the repo."""
    return Path(os.environ.get("WIKITEXT2_DIR", REPO.parent / "shared" / "data" / "wikitext-2"))


@pytest.fixture(scope="session")
def wikitext2_dir() -> Path:
    path = wikitext2_path()
    if not (path / "train.txt").is_file():
        pytest.skip(f"WikiText-2 not found at {path} (set WIKITEXT2_DIR)")
    return path


class BuiltData(NamedTuple):
    """Built data: `<tfrecords_directory>/{train,valid,test}/`, `<sp_model_prefix>.model`."""

    tfrecords_directory: Path
    sp_model_prefix: Path


@pytest.fixture(scope="session")
def wikitext2_tfrecords(wikitext2_dir, tmp_path_factory) -> BuiltData:
    """WikiText-2 built once per session with the original defaults (vocabulary 12000, lowercase,
    batch 32, seq_len 32, 4 train shards). Takes 10-20 s: use it from tests marked slow."""
    from par_xl.data import BuildConfig, build_data

    root = tmp_path_factory.mktemp("wikitext2_tfrecords")
    built = BuiltData(root / "tfrecords", root / "sp12k")
    build_data(
        BuildConfig(
            input_text=str(wikitext2_dir),
            tfrecords_directory=str(built.tfrecords_directory),
            sp_model_prefix=str(built.sp_model_prefix),
        )
    )
    return built


def _write_small_corpus(directory: Path, lines: dict[str, int], seed: int = 0) -> Path:
    """Writes `<split>.txt` files of generated WikiText-like text (Zipfian words from a small
    vocabulary, mixed case, a document title every 9 lines, empty lines) with the given line
    counts."""
    rng = np.random.default_rng(seed)
    syllables = "ka lo mi ne ru sa to vi ze po qua er ba di fu".split()
    words = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(400)]
    words += [",", ".", "the", "of", "@-@", "<unk>"]
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in lines.items():
        out = []
        for i in range(count):
            if i % 9 in (0, 2):
                out.append("")
            elif i % 9 == 1:  # a document's title, between blank lines as in WikiText
                out.append(f" = {' '.join(rng.choice(words, size=2)).title()} = ")
            else:
                line = rng.choice(words, size=rng.integers(3, 40), p=weights)
                line = [w.capitalize() if rng.random() < 0.1 else w for w in line]
                out.append(" " + " ".join(line))
        (directory / f"{split}.txt").write_text("\n".join(out) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def small_text_dir(tmp_path_factory) -> Path:
    """A small generated corpus (train 3000 lines, valid and test 400) in WikiText layout."""
    return _write_small_corpus(
        tmp_path_factory.mktemp("small_text"), {"train": 3000, "valid": 400, "test": 400}
    )


def run_on_jax(script_text: str, directory: Path, *args: str) -> dict:
    """Runs `script_text` in a subprocess on the JAX backend (CPU), with this checkout's par_xl
    first on the path; fails the test on a non-zero exit. Returns the JSON object the script
    printed last."""
    script = directory / "jax_check.py"
    script.write_text(script_text)
    # This checkout's par_xl, not whichever one the environment has installed.
    path_list = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path_list}
    result = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_data(small_text_dir, tmp_path_factory) -> Path:
    """The generated corpus built with a 400-piece vocabulary into 4 x 16 batches:
    `<root>/tf/{train,valid,test}`, `<root>/sp.model`."""
    from par_xl.data import BuildConfig, build_data

    root = tmp_path_factory.mktemp("tiny_data")
    build_data(
        BuildConfig(
            input_text=str(small_text_dir),
            tfrecords_directory=str(root / "tf"),
            sp_model_prefix=str(root / "sp"),
            vocab_size=400,
            batch_size=4,
            seq_len=16,
        )
    )
    return root


def write_tiny_run(tiny_data, directory, architecture, choices="AMF", **overrides):
    """An untrained run on `tiny_data` as `train.py` leaves one (`config.json`, a checkpoint at
    step 0) in `directory`: 3 blocks of width 16, document boundaries, kNN stores of 1,024
    entries, weights drawn wide (initializer range 0.5) so that the stores change the losses.
    Returns its checkpoint directory."""
    import keras

    from par_xl.configs import ModelConfig, TrainConfig
    from par_xl.data import read_metadata
    from par_xl.training.checkpoints import CheckpointManager
    from par_xl.training.runs import build_model, write_run_config

    model_config = ModelConfig(**{
        **dict(vocab_size=400, d_model=16, num_heads=2, d_ffn=32, num_layers=3, mem_len=8,
               cutoffs=(), architecture=architecture, choices=choices, document_boundaries=True,
               knn_memory_size=1024, knn_neighbors=4, initializer_range=0.5),
        **overrides})  # fmt: skip
    split = tiny_data / "tf"
    train_config = TrainConfig(str(split / "train"), str(split / "valid"), str(split / "test"),
                               jit_compile=False)  # fmt: skip
    keras.utils.set_random_seed(0)
    model = build_model(model_config, train_config, (4, 16), 1)
    Path(directory).mkdir(parents=True)
    write_run_config(directory, model_config, train_config,
                     {"train": read_metadata(split / "train")})  # fmt: skip
    CheckpointManager(directory).save(model, 0)
    return Path(directory)
