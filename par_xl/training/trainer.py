"""A PAR training run end to end: checks, model, `fit`, checkpoints, evaluation, results.

`train` and `evaluate` are what `train.py` calls. Everything the run writes lives in
`<log_dir>/<model_name>/`: `training_log.log`, `config.json`, TensorBoard events (`train/`,
`validation/`), `checkpoints/`, `results.json`.
"""

import contextlib
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

import keras
import numpy as np

from par_xl.configs import ConfigError, ModelConfig, TrainConfig, from_json, to_json
from par_xl.cutoffs import read_unigram_file
from par_xl.data import UNIGRAM_FILE, DataError, load_dataset, read_metadata, sha256_file
from par_xl.files import atomic_write_text
from par_xl.flops import training_flops_per_token
from par_xl.layers.adaptive_softmax import tail_capacity
from par_xl.log_files import log_to_file
from par_xl.models import PARTransformerXL
from par_xl.training import callbacks as cb
from par_xl.training.checkpoints import CONFIG, CheckpointManager
from par_xl.training.evaluation import evaluate_split
from par_xl.training.schedules import WarmupCosine

log = logging.getLogger("par_xl")


def check_data(model_config, train_config):
    """Reads and cross-checks the splits' metadata before anything is built.

    Returns `{split: DatasetMetadata}`. Raises DataError / ConfigError naming the directory or
    flag at fault: splits built with different vocabularies, batch shapes or SentencePiece
    models, a SentencePiece model (--sp_model_prefix) other than the one the data was built
    with, cutoffs that do not fit the vocabulary.
    """
    directories = {
        "train": train_config.train_directory,
        "valid": train_config.valid_directory,
        "test": train_config.test_directory,
    }
    metadata = {split: read_metadata(d) for split, d in directories.items() if d}
    train = metadata["train"]
    for split, meta in metadata.items():
        for name in ("vocab_size", "batch_size", "seq_len", "sp_model_sha256"):
            if getattr(meta, name) != getattr(train, name):
                raise DataError(
                    f"--{split}_directory={directories[split]} has {name}="
                    f"{getattr(meta, name)} but --train_directory has {getattr(train, name)}: "
                    "build all splits together with build_data.py."
                )
    if train_config.sp_model_prefix:
        model_file = Path(f"{train_config.sp_model_prefix}.model")
        if not model_file.is_file():
            raise ConfigError(f"--sp_model_prefix: {model_file} does not exist.")
        if sha256_file(model_file) != train.sp_model_sha256:
            raise DataError(
                f"--sp_model_prefix: {model_file} is not the SentencePiece model the data was "
                f"built with ({train.sp_model}, sha256 {train.sp_model_sha256[:12]}...)."
            )
    dataclasses.replace(model_config, vocab_size=train.vocab_size).validate()
    return metadata


def build_model(model_config, train_config, batch_shape, total_steps, capacity=None):
    """A compiled PARTransformerXL with its warmup-cosine optimizer, built for `batch_shape`."""
    if train_config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = PARTransformerXL(
        **model_config.model_kwargs(),
        tau=train_config.tau_start,
        tail_capacity=capacity,
        seed=train_config.seed,
    )
    schedule = WarmupCosine(train_config.max_lr, train_config.warmup_steps, total_steps)
    optimizer = {
        "adam": lambda: keras.optimizers.Adam(schedule),
        "adamw": lambda: keras.optimizers.AdamW(schedule),
        "lamb": lambda: keras.optimizers.Lamb(schedule),
        "sgd": lambda: keras.optimizers.SGD(schedule, momentum=0.9),
    }[train_config.opt_name]()
    model.compile(
        optimizer=optimizer,
        jit_compile=train_config.jit_compile,
        steps_per_execution=train_config.steps_per_execution,
    )
    model.build(batch_shape)
    optimizer.build(model.trainable_variables)
    return model


@contextlib.contextmanager
def save_on_signals(checkpointer):
    """SIGINT / SIGTERM ask the checkpointer to save at the next batch end and stop; a second
    signal stops at once (the last periodic checkpoint stays)."""

    def handler(signum, frame):
        if checkpointer.interrupted is not None:
            raise KeyboardInterrupt(signum)
        checkpointer.interrupted = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def prepare_run(model_config, train_config):
    """Checks the data and the run directory; writes `config.json`.

    A fresh run refuses a checkpoint directory that already holds checkpoints (so nothing is
    overwritten); `--resume` requires one and the same model configuration.
    """
    train_config.validate()
    model_config.validate()
    metadata = check_data(model_config, train_config)
    model_config = dataclasses.replace(model_config, vocab_size=metadata["train"].vocab_size)
    run = Path(train_config.run_directory)
    checkpoints = CheckpointManager(train_config.checkpoints)
    saved_config = Path(train_config.checkpoints) / CONFIG
    if train_config.resume:
        if checkpoints.latest() is None:
            raise ConfigError(f"--resume: no checkpoint in {checkpoints.directory} to resume.")
        if saved_config.is_file():
            previous, _ = from_json(saved_config.read_text())
            if previous != model_config:
                changed = [
                    f"{f.name}: {getattr(previous, f.name)!r} -> {getattr(model_config, f.name)!r}"
                    for f in dataclasses.fields(ModelConfig)
                    if getattr(previous, f.name) != getattr(model_config, f.name)
                ]
                raise ConfigError(
                    "--resume: the model flags differ from the checkpointed run's: "
                    + "; ".join(changed)
                )
    elif checkpoints.latest() is not None:
        raise ConfigError(
            f"{checkpoints.directory} already holds checkpoints of a run: pass --resume to "
            "continue it, or choose another --model_name / --checkpoint_dir."
        )
    run.mkdir(parents=True, exist_ok=True)
    checkpoints.directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved_config, to_json(model_config, train_config))
    return model_config, metadata, checkpoints


def train(model_config: ModelConfig, train_config: TrainConfig):
    """Trains (or resumes) a run; returns the results dict also written to `results.json`."""
    model_config, metadata, checkpoints = prepare_run(model_config, train_config)
    run = Path(train_config.run_directory)
    train_meta = metadata["train"]
    steps_per_epoch = train_meta.steps
    total_steps = steps_per_epoch * train_config.epochs
    last_step = min(total_steps, train_config.max_steps or total_steps)
    batch_shape = (train_meta.batch_size, train_meta.seq_len)
    keras.utils.set_random_seed(train_config.seed)

    with log_to_file(run / "training_log.log", "par_xl"):
        capacity = None
        if train_config.tail_capacity and model_config.cutoffs:
            labels = (y for _, y in load_dataset(train_config.train_directory).as_numpy_iterator())
            capacity = tail_capacity(labels, model_config.cutoffs, model_config.vocab_size)
        model = build_model(model_config, train_config, batch_shape, total_steps, capacity)
        if train_config.unigram_bias_init and not train_config.resume:
            unigram = Path(train_config.train_directory) / UNIGRAM_FILE
            model.output_layer.initialize_biases(read_unigram_file(unigram))
        step = checkpoints.restore(model) if train_config.resume else 0
        if train_config.resume:
            log.info("resumed from %s at step %d", checkpoints.latest(), step)
        model.summary(print_fn=lambda line, **_: log.info(line))
        log.info("config:\n%s", to_json(model_config, train_config))
        log.info("tail capacity: %s; steps per epoch: %d", capacity, steps_per_epoch)

        flops = training_flops_per_token(model, train_meta.seq_len, train_meta.batch_size)
        valid = load_dataset(train_config.valid_directory)
        evaluation = cb.PeriodicEvaluation(valid, run, every=train_config.eval_every)
        checkpointer = cb.Checkpointer(checkpoints, train_config.checkpoint_every)
        callbacks = [
            cb.MemoryReset(steps_per_epoch),
            cb.TrainingLogger(run, train_config.log_every, np.prod(batch_shape), flops),
            evaluation,
            cb.NaNGuard(checkpoints),
            checkpointer,
            cb.StopAtStep(last_step),
            keras.callbacks.TensorBoard(str(run), write_graph=False),
        ]
        if not model_config.tau_is_trainable and model_config.architecture is None:
            callbacks.insert(
                0,
                cb.TauAnnealing(
                    total_steps, train_config.tau_start, train_config.tau_end,
                    train_config.tau_schedule,
                ),
            )  # fmt: skip

        with save_on_signals(checkpointer):
            epoch, batch = divmod(step, steps_per_epoch)
            if step < last_step and batch:  # finish the interrupted epoch first
                model.fit(
                    load_dataset(train_config.train_directory, skip_batches=batch),
                    initial_epoch=epoch,
                    epochs=epoch + 1,
                    callbacks=callbacks,
                    verbose=2 if _quiet() else 1,
                )
                epoch += 1
            if cb.global_step(model) < last_step and not checkpointer.interrupted:
                model.fit(
                    load_dataset(train_config.train_directory, repeat=True),
                    steps_per_epoch=steps_per_epoch,
                    initial_epoch=epoch,
                    epochs=-(-last_step // steps_per_epoch),
                    callbacks=callbacks,
                    verbose=2 if _quiet() else 1,
                )
        if checkpointer.interrupted:
            log.info("interrupted by signal %d at step %d: checkpoint saved, run with --resume "
                     "to continue", checkpointer.interrupted, cb.global_step(model))  # fmt: skip
            raise KeyboardInterrupt(checkpointer.interrupted)

        results = {"step": cb.global_step(model), "architecture": model.architecture()[1]}
        results["valid"] = evaluation.evaluate()
        results["validation_history"] = evaluation.history
        if train_config.test_directory:
            results["test"] = evaluate_split(model, load_dataset(train_config.test_directory))
            log.info("test | %s", cb._format_logs(results["test"]))
            print(f"test perplexity: {results['test']['perplexity']:.2f}")
        atomic_write_text(run / "results.json", json.dumps(results, indent=2))
        return results


def _quiet():
    """Progress bars only on a terminal; one line per epoch in logs and CI."""
    return not sys.stdout.isatty()


def load_run(checkpoint_dir, checkpoint=None, jit_compile=False):
    """A compiled model restored from a run's checkpoint directory (its `config.json` and latest
    or given checkpoint); returns `(model, model_config, train_config, train metadata)`."""
    config_path = Path(checkpoint_dir) / CONFIG
    if not config_path.is_file():
        raise ConfigError(f"--checkpoint_dir: {config_path} does not exist (no training run?).")
    model_config, train_config = from_json(config_path.read_text())
    train_config = dataclasses.replace(train_config, jit_compile=jit_compile)
    meta = read_metadata(train_config.train_directory)
    model = build_model(model_config, train_config, (meta.batch_size, meta.seq_len), 1)
    CheckpointManager(checkpoint_dir).restore(model, checkpoint)
    return model, model_config, train_config, meta


def evaluate(checkpoint_dir, split_directory=None, checkpoint=None, jit_compile=False):
    """Perplexity of a checkpoint on a split directory (default: the run's test split), in
    order, with memory."""
    model, _, train_config, train_meta = load_run(checkpoint_dir, checkpoint, jit_compile)
    split_directory = split_directory or train_config.test_directory
    if not split_directory:
        raise ConfigError("--eval_directory is required: the run has no test split.")
    split = read_metadata(split_directory)
    for name in ("vocab_size", "batch_size", "sp_model_sha256"):
        if getattr(split, name) != getattr(train_meta, name):
            raise DataError(
                f"{split_directory} has {name}={getattr(split, name)}, the model was trained "
                f"with {getattr(train_meta, name)}: build it with the run's SentencePiece model "
                "and batch size."
            )
    result = evaluate_split(model, load_dataset(split_directory))
    return {"split": split.split, "directory": str(split_directory), **result}
