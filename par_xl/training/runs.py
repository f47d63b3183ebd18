"""A training run on disk: its lock, its `config.json`, the checks that it meets the same data
again, and the model restored from it (evaluate, generate).

`<checkpoint_dir>/config.json` holds the model and training configurations (`par_xl.configs`)
and `data`: each split's metadata fields as the run was trained on them (vocabulary, batch
shape, steps, token counts, the SentencePiece model's SHA-256...). A resume must find the same
data, generation the same SentencePiece model. The file is written atomically, and only after
every check of a start or resume has passed, so a refused resume leaves the run as it was.

Only one process at a time trains a run: `lock_run` holds an exclusive `flock` on
`<run>/.lock` for the run's life, and another on `<checkpoint_dir>/.lock`, so that a second
run is refused whether it names the same run directory or the same checkpoint directory, by
whatever path. The kernel releases a lock when the process ends, however it ends (kill -9
included), so a lock left behind by a dead run never blocks.

`config.json` also holds the run's identity (`run`, see `run_identity`), which each
checkpoint records: `load_run` refuses a checkpoint of another run.
"""

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from par_xl.checks import expected_type, has_type
from par_xl.configs import ConfigError, ModelConfig, from_json, to_json
from par_xl.data import DataError, load_dataset, read_metadata
from par_xl.data.metadata import DatasetMetadata
from par_xl.distribution.strategies import adapt_model, replica_batch_size
from par_xl.files import atomic_write_text, reporting_full_disk, sha256_file
from par_xl.models import PARTransformerXL
from par_xl.runtime.native_logs import quiet_native_logs
from par_xl.training.checkpoints import CONFIG, CheckpointManager
from par_xl.training.optimizers import make_optimizer
from par_xl.training.run_identity import RunIdentity, configuration_hash
from par_xl.training.schedules import WarmupCosine
from par_xl.training.search_optimizer import (
    SearchOptimizer,
    count_architecture_steps,
    make_architecture_optimizer,
)

LOCK_FILE = ".lock"
# Metadata fields that say where the data lies or how it is stored, not what it is.
NOT_IDENTITY = ("split", "sp_model", "source", "format_version")

log = logging.getLogger("par_xl")


# The run directory and its lock.


def make_directory(path, flag):
    """Creates `path` (and its parents) or raises ConfigError naming `flag`."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{flag}: cannot create {path}: {error.strerror or error}.") from None


@contextlib.contextmanager
def lock_run(directory, flag="--log_dir / --model_name"):
    """Holds an exclusive lock on `<directory>/.lock` inside the block (see the module
    docstring); a second holder gets a ConfigError naming the directory and the PID in it."""
    make_directory(directory, flag)
    directory = Path(directory).resolve()
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"{flag}: cannot write {path}: {error.strerror or error}.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"{directory} is in use by another training run (PID {holder}): wait for it to "
                f"end, or choose another {flag}."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def lock_run_directories(train_config):
    """Locks the run directory and the checkpoint directory (once, if they are the same
    directory): a run that shares either with a running one is refused, whatever path names
    it (a symlink, `..`, a relative path)."""
    run, checkpoints = Path(train_config.run_directory), Path(train_config.checkpoints)
    with contextlib.ExitStack() as stack:
        stack.enter_context(lock_run(run))
        make_directory(checkpoints, "--checkpoint_dir")
        if not os.path.samefile(run, checkpoints):
            stack.enter_context(lock_run(checkpoints, "--checkpoint_dir"))
        yield


# The data: metadata compared by field name.


def metadata_fields(metadata):
    """The scalar fields of a split's metadata (a `DatasetMetadata` or a dict of them)."""
    fields = metadata if isinstance(metadata, dict) else dataclasses.asdict(metadata)
    return {k: v for k, v in fields.items() if isinstance(v, str | int | float | bool)}


def differences(reference, other, names=None):
    """`[(name, reference value, other value)]` for the fields that differ, among `names`
    (default: every identity field both have; see NOT_IDENTITY)."""
    reference, other = metadata_fields(reference), metadata_fields(other)
    if names is None:
        names = [n for n in reference if n in other and n not in NOT_IDENTITY]
    return [(n, reference.get(n), other.get(n)) for n in names if reference.get(n) != other.get(n)]


def _show(name, value):
    return f"{value[:12]}..." if name.endswith("sha256") and isinstance(value, str) else value


def check_data(model_config, train_config):
    """Reads and cross-checks the splits' metadata before anything is built.

    Returns `{split: DatasetMetadata}`. Raises DataError / ConfigError naming the directory or
    flag at fault: splits built with different vocabularies, batch shapes or SentencePiece
    models, a SentencePiece model (--sp_model_prefix) other than the one the data was built
    with, records that do not match their metadata, cutoffs that do not fit the vocabulary.
    """
    directories = {
        "train": train_config.train_directory,
        "valid": train_config.valid_directory,
        "test": train_config.test_directory,
    }
    metadata = {split: read_metadata(d) for split, d in directories.items() if d}
    train = metadata["train"]
    shape = ("vocab_size", "batch_size", "seq_len", "sp_model_sha256")
    for split, meta in metadata.items():
        for name, expected, value in differences(train, meta, shape):
            raise DataError(
                f"--{split}_directory={directories[split]} has {name}={value} but "
                f"--train_directory has {expected}: build all splits together with build_data.py."
            )
        check_records(directories[split], meta)
    if model_config.document_boundaries and not train.documents:
        raise ConfigError(
            f"--document_boundaries: --train_directory={train_config.train_directory} marks no "
            "document start (built with --document_start=''?); rebuild it with document "
            "boundaries, or train without the flag."
        )
    if train_config.sp_model_prefix:
        check_sp_model(f"{train_config.sp_model_prefix}.model", metadata_fields(train))
    dataclasses.replace(model_config, vocab_size=train.vocab_size).validate()
    return metadata


def check_records(directory, metadata):
    """Reads the first batch of a split: its records must parse with the shape and ids below
    the vocabulary size that `metadata.json` gives (a hand-edited or mixed-up metadata file)."""
    try:
        inputs, labels = next(iter(load_dataset(directory).take(1)))
    except (tf.errors.OpError, StopIteration) as error:
        raise DataError(
            f"{directory}: its records do not match its metadata.json (batch "
            f"{metadata.batch_size} x {metadata.seq_len}): {_first_line(error)}; rebuild it "
            "with build_data.py."
        ) from None
    largest = int(max(np.max(inputs), np.max(labels)))
    if largest >= metadata.vocab_size:
        raise DataError(
            f"{directory}: its records hold the id {largest}, but its metadata.json says "
            f"vocab_size={metadata.vocab_size}; rebuild it with build_data.py."
        )


def _first_line(error):
    return (getattr(error, "message", None) or str(error) or type(error).__name__).splitlines()[0]


def check_sp_model(model_file, data, flag="--sp_model_prefix", what="the data was built with"):
    """Raises unless `model_file` is the SentencePiece model recorded in `data` (metadata
    fields: `sp_model`, `sp_model_sha256`). `flag` names where `model_file` came from: a flag,
    or (any other text) the run's record, which --sp_model_prefix then replaces."""
    model_file = Path(model_file)
    if not model_file.is_file():
        if flag.startswith("--"):
            raise ConfigError(
                f"{flag}: {model_file} does not exist; expected <prefix>.model, the SentencePiece "
                f"model {what} ({data['sp_model']})."
            )
        raise ConfigError(
            f"{flag} {model_file} does not exist (moved or deleted?): pass "
            "--sp_model_prefix=<its path without .model> where a copy of it is (sha256 "
            f"{_show('sha256', data['sp_model_sha256'])})."
        )
    if sha256_file(model_file) != data["sp_model_sha256"]:
        raise DataError(
            f"{flag}: {model_file} is not the SentencePiece model {what} ({data['sp_model']}, "
            f"sha256 {_show('sha256', data['sp_model_sha256'])})."
        )


# config.json.


def read_run_config(checkpoint_dir, flag="--checkpoint_dir"):
    """`(ModelConfig, TrainConfig, data)` from a run's `config.json` (`flag` names the flag
    that gave `checkpoint_dir`); `data` maps each split to its recorded metadata fields (empty
    for a run recorded before they were). Every field is checked as a flag would be: a
    config.json edited by hand into something that cannot work is refused, naming the field."""
    return _read_config(checkpoint_dir, flag)[:3]


def read_run_identity(checkpoint_dir, flag="--checkpoint_dir"):
    """The run's `RunIdentity` (its `run` and configuration hash), or None for a run from
    before run identities."""
    model_config, _, data, run = _read_config(checkpoint_dir, flag)
    return RunIdentity.from_config(run, configuration_hash(model_config, data.get("train", {})))


# Fields `config.json` must record for each split, and those that must be positive.
_DATA_FIELDS = ("batch_size", "seq_len", "sp_model", "sp_model_sha256")
_POSITIVE_DATA_FIELDS = ("vocab_size", "batch_size", "seq_len", "steps")


def _read_config(checkpoint_dir, flag):
    path = Path(checkpoint_dir) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{flag}: {path} does not exist (no training run?).")
    try:
        text = path.read_text()
        model_config, train_config = from_json(text)
        document = json.loads(text)
        data, run = document.get("data", {}), document.get("run")
        _check_data_fields(data)
        _check_run_fields(run)
        model_config.validate()
        train_config.validate()
    except ConfigError as error:
        raise ConfigError(
            f"{path} is damaged or edited: {error} Restore it from a backup, or start a new run."
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"{path} is damaged or edited ({type(error).__name__}: {_first_line(error)}); "
            "restore it from a backup, or start a new run."
        ) from None
    return model_config, train_config, data, run


def _check_data_fields(data):
    """config.json's `data`: each split's fields of the type `DatasetMetadata` gives them."""
    if not isinstance(data, dict):
        raise ConfigError("data must be an object of splits.")
    kinds = {f.name: f.type for f in dataclasses.fields(DatasetMetadata)}
    for split, fields in data.items():
        missing = set(_DATA_FIELDS) - set(fields if isinstance(fields, dict) else ())
        if missing:
            raise ConfigError(f"data.{split} lacks {', '.join(sorted(missing))}.")
        for name, value in fields.items():
            if name in kinds and not has_type(value, kinds[name]):
                raise ConfigError(
                    f"data.{split}.{name} must be {expected_type(kinds[name])}, received "
                    f"{value!r}."
                )
            if name in _POSITIVE_DATA_FIELDS and value < 1:
                raise ConfigError(f"data.{split}.{name} must be positive, received {value}.")


def _check_run_fields(run):
    """config.json's `run`: null (a run from before identities) or its id, name, directory."""
    if run is None:
        return
    if not (isinstance(run, dict) and all(isinstance(run.get(k), str) and run.get(k)
                                          for k in ("id", "name", "checkpoint_dir"))):  # fmt: skip
        raise ConfigError(
            f"run must hold the strings id, name and checkpoint_dir, received {run!r}."
        )


def write_run_config(checkpoint_dir, model_config, train_config, metadata, identity=None):
    """Writes `config.json` atomically: both configurations, the splits' metadata fields and
    the run's identity (a `RunIdentity`)."""
    document = json.loads(to_json(model_config, train_config))
    document["data"] = {split: metadata_fields(meta) for split, meta in metadata.items()}
    if identity is not None:
        document["run"] = identity.as_config()
    path = Path(checkpoint_dir) / CONFIG
    with reporting_full_disk(path):
        atomic_write_text(path, json.dumps(document, indent=2))


def check_resume(checkpoint_dir, model_config, metadata):
    """Raises unless the model flags and the data are those the run was trained with."""
    path = Path(checkpoint_dir) / CONFIG
    if not path.is_file():
        log.warning("%s does not exist: the model flags and data cannot be checked", path)
        return
    previous, previous_train, data = read_run_config(checkpoint_dir)
    changed = [
        f"{f.name}: {getattr(previous, f.name)!r} -> {getattr(model_config, f.name)!r}"
        for f in dataclasses.fields(ModelConfig)
        if getattr(previous, f.name) != getattr(model_config, f.name)
    ]
    if changed:
        raise ConfigError(
            "--resume: the model flags differ from the checkpointed run's: " + "; ".join(changed)
        )
    if not data:
        log.warning("%s records no data (an older run): the data cannot be checked", path)
    changed = [
        f"{split} {name} {_show(name, old)} -> {_show(name, new)}"
        for split, meta in metadata.items()
        if split in data
        for name, old, new in differences(data[split], meta)
    ]
    if changed:
        given = ", ".join(
            f"--{split}_directory={getattr(previous_train, f'{split}_directory')}"
            for split in metadata
            if split in data
        )
        raise DataError(
            "--resume: the data differ from those the run was trained on: "
            + "; ".join(changed)
            + f". Resume with the run's data ({given}), or start a new run."
        )


# The model of a run.


def build_model(model_config, train_config, batch_shape, total_steps, capacity=None,
                strategy=None):  # fmt: skip
    """A compiled PARTransformerXL with its optimizer (`make_training_optimizer`), for
    `batch_shape` (B, T) global batches. Under a tf.distribute `strategy` it is created in the
    strategy's scope and built for the B / R rows each of its R replicas trains on
    (`par_xl.distribution.strategies`).
    """
    if train_config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    rows = replica_batch_size(strategy, batch_shape[0])
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = PARTransformerXL(
            **model_config.model_kwargs(),
            tau=train_config.tau_start,
            tail_capacities=capacity,
            seed=train_config.seed,
        )
        optimizer = make_training_optimizer(model, model_config, train_config, total_steps)
        quiet_native_logs()  # XLA's C++ "Compiled cluster" line under jit_compile
        model.compile(
            optimizer=optimizer,
            jit_compile=train_config.jit_compile,
            steps_per_execution=train_config.steps_per_execution,
        )
        model.build((rows, *batch_shape[1:]))
        optimizer.build(model.trainable_variables)
    if strategy is not None:
        adapt_model(model, strategy)
    return model


def make_training_optimizer(model, model_config, train_config, total_steps):
    """The run's optimizer: `--opt_name` with its warm-up-cosine schedule for the weights, and,
    for a supernet with an `--arch_optimizer`, the choice logits' own (`SearchOptimizer`). The
    weights' schedule then spans the weight updates only (`--arch_fraction` takes some steps)."""
    search = model_config.architecture is None and train_config.arch_optimizer != "none"
    start, fraction = train_config.architecture_start, train_config.arch_fraction
    weight_steps = total_steps - (
        count_architecture_steps(0, total_steps, start, fraction) if search else 0
    )
    schedule = WarmupCosine(train_config.max_lr, train_config.warmup_steps, weight_steps)
    weights = make_optimizer(train_config.opt_name, schedule)
    if not search:
        return weights
    architecture = make_architecture_optimizer(
        train_config.arch_optimizer, train_config.arch_lr, train_config.arch_beta_1,
        train_config.arch_weight_decay,
    )  # fmt: skip
    return SearchOptimizer(weights, architecture, lambda: model.architecture_variables, start,
                           fraction)  # fmt: skip


def load_run(checkpoint_dir, checkpoint=None, jit_compile=False, strategy=None,
             tail_capacities=None, knn_backend=None, choice_at_inference=None,
             flag="--checkpoint_dir", knn_memory_size=None):  # fmt: skip
    """A compiled model restored from a run: its `config.json` and its newest intact (or the
    given) checkpoint, on one device or under `strategy`, whichever the run was trained with;
    `tail_capacities` as `AdaptiveSoftmax` takes them (`None`: the loss scores every position);
    `knn_backend` (if given) replaces the run's, the kNN search of evaluation and generation;
    `choice_at_inference` (if given) a supernet's: "argmax" evaluates the architecture the
    search prefers, as `derive()` keeps it, without fine-tuning; `knn_memory_size` (if given)
    replaces a fixed architecture's C: the stores are state, not weights, so the weights are
    copied into a model with stores of that size (empty, as evaluation starts them). `flag`
    names the flag that gave `checkpoint_dir`. A checkpoint of another run is refused
    (`run_identity`).
    Returns `(model, model_config, train_config, train data)`, the last the training split's
    metadata fields as recorded (as read, for a run that recorded none)."""
    model_config, train_config, data = read_run_config(checkpoint_dir, flag)
    owner = read_run_identity(checkpoint_dir, flag)
    if knn_backend is not None:
        model_config = dataclasses.replace(model_config, knn_backend=knn_backend)
    if choice_at_inference is not None:
        model_config = dataclasses.replace(model_config, choice_at_inference=choice_at_inference)
    train_config = dataclasses.replace(train_config, jit_compile=jit_compile)
    train = data.get("train") or metadata_fields(read_metadata(train_config.train_directory))
    batch_shape = (train["batch_size"], train["seq_len"])
    model = build_model(model_config, train_config, batch_shape, 1, tail_capacities, strategy)
    CheckpointManager(checkpoint_dir, owner=owner).restore(model, checkpoint)
    if knn_memory_size not in (None, model_config.knn_memory_size):
        if model_config.architecture is None:
            raise ConfigError("a search's kNN store size is its own: its choice logits are "
                              "not copied into another model.")  # fmt: skip
        model_config = dataclasses.replace(model_config, knn_memory_size=knn_memory_size)
        source = model
        model = build_model(model_config, train_config, batch_shape, 1, tail_capacities,
                            strategy)  # fmt: skip
        model.copy_weights_from(source)
    return model, model_config, train_config, train
