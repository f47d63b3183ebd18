"""A PAR training run end to end: checks, model, `fit`, checkpoints, evaluation, results.

`train` and `evaluate` are what `train.py` calls. Everything the run writes lives in
`<log_dir>/<model_name>/`: `training_log.log`, TensorBoard events (`train/`, `validation/`),
`checkpoints/` (with `config.json`, see `runs`), `results.json`.

Both take an optional tf.distribute strategy (`par_xl.distribution.strategies`): the model is
then made in its scope, each replica trains and evaluates on its rows of every batch, and the
checkpoints hold the same global arrays as on one device. Under a multi-worker strategy every
worker runs all of it in step (the callbacks' reads are collectives); the chief writes the run
directory, another worker the same files in `<run>/<task>-<index>/` (e.g. `worker-1/`), its
checkpoints a complete copy that it resumes from.
"""

import contextlib
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import NamedTuple

import keras
import tensorflow as tf

from par_xl.configs import ConfigError, ModelConfig, TrainConfig, to_json
from par_xl.cost.flops import training_flops_per_token
from par_xl.cost.latency import read_latency_table
from par_xl.cost.objective import CostObjective, flops_costs
from par_xl.data import UNIGRAM_FILE, DataError, load_dataset, read_metadata
from par_xl.data.label_statistics import max_tail_labels_per_batch
from par_xl.data.unigram import read_unigram_file
from par_xl.distribution.strategies import (
    check_config,
    describe,
    distribute_rows,
    replica_batch_size,
    verify_rows,
    worker_role,
)
from par_xl.files import (
    DiskFull,
    atomic_write_text,
    is_out_of_space,
    remove_temporaries,
    reporting_full_disk,
)
from par_xl.models.rules import standard_architecture
from par_xl.reporting.search_picture import NoSearchHistory, draw_search
from par_xl.runtime.log_files import format_metrics, log_to_file
from par_xl.training import callbacks as cb
from par_xl.training.checkpoints import CONFIG, CheckpointManager
from par_xl.training.evaluation import evaluate_split
from par_xl.training.run_identity import RunIdentity, check_training_flags, configuration_hash
from par_xl.training.runs import (
    build_model,
    check_data,
    check_resume,
    differences,
    load_run,
    lock_run_directories,
    make_directory,
    metadata_fields,
    read_run_config,
    read_run_identity,
    write_run_config,
)

LOG_FILE = "training_log.log"

log = logging.getLogger("par_xl")


class Plan(NamedTuple):
    """A run's shape: its batches (B, T), the data epoch's length, the step the schedules end
    at, the step training stops at (--max_steps), and the step it starts from."""

    batch_shape: tuple[int, int]
    steps_per_epoch: int
    total_steps: int
    last_step: int
    first_step: int = 0

    def position(self, step):
        """`step` as "step N of M (epoch e, batch b of S)"."""
        epoch = max(step - 1, 0) // self.steps_per_epoch
        batch = step - epoch * self.steps_per_epoch
        return (f"step {step} of {self.last_step} (epoch {epoch + 1}, batch {batch} of "
                f"{self.steps_per_epoch})")  # fmt: skip


def train(model_config: ModelConfig, train_config: TrainConfig, strategy=None):
    """Trains (or resumes) a run, on one device or under a tf.distribute `strategy`; returns
    the results dict also written to `results.json`."""
    train_config.validate()  # the model flags: by check_data, with the data's vocabulary size
    check_config(strategy, train_config)
    train_config = for_this_worker(train_config, strategy)
    metadata = check_data(model_config, train_config)
    model_config = dataclasses.replace(model_config, vocab_size=metadata["train"].vocab_size)
    replica_batch_size(strategy, metadata["train"].batch_size)  # a clear error before any write
    run = Path(train_config.run_directory)
    with lock_run_directories(train_config), _run_log(run), _stop_on_full_disk(run):
        checkpoints = check_checkpoints(model_config, train_config, metadata)
        model, plan = build_and_restore(
            model_config, train_config, metadata["train"], checkpoints, strategy
        )
        cost = search_cost(model, model_config, train_config, plan)
        if train_config.cost != "none":
            model.cost_objective = cost
        write_run_config(checkpoints.directory, model_config, train_config, metadata,
                         checkpoints.owner)  # fmt: skip
        log_start(model, model_config, train_config, plan, strategy)
        evaluation = cb.PeriodicEvaluation(
            train_config.valid_directory, run, train_config.eval_every, train_config.eval_steps
        )
        checkpointer = cb.Checkpointer(checkpoints, train_config.checkpoint_every)
        callbacks = make_callbacks(model, model_config, train_config, plan, evaluation,
                                   checkpointer, cost)  # fmt: skip
        fit_epochs(model, train_config, plan, callbacks, checkpointer, strategy)
        return write_results(model, train_config, evaluation)


def for_this_worker(train_config, strategy):
    """The configuration as this process runs it: unchanged on the chief; another worker of a
    multi-worker strategy writes `<run>/<task>-<index>/` (and `<checkpoint_dir>/<task>-<index>`)
    instead, so that workers never write the same files (see the module docstring)."""
    chief, name = worker_role(strategy)
    if chief:
        return train_config
    checkpoint_dir = train_config.checkpoint_dir and f"{train_config.checkpoint_dir}/{name}"
    return dataclasses.replace(
        train_config, model_name=f"{train_config.model_name}/{name}", checkpoint_dir=checkpoint_dir
    )


@contextlib.contextmanager
def _run_log(run):
    """The run's log file; a directory that cannot be written is a ConfigError."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(log_to_file(run / LOG_FILE, "par_xl"))
        except OSError as error:
            raise ConfigError(
                f"--log_dir: cannot write {run / LOG_FILE}: {error.strerror or error}."
            ) from None
        yield


@contextlib.contextmanager
def _stop_on_full_disk(run):
    """Any other write that finds the disk full (TensorBoard events...) stops with DiskFull."""
    try:
        yield
    except OSError as error:
        if not is_out_of_space(error):
            raise
        raise DiskFull(
            f"no space left on the device of {run} ({error}). Free space there, then run "
            "again with --resume."
        ) from error


def check_checkpoints(model_config, train_config, metadata):
    """The run's CheckpointManager, after the checks on its directory.

    A fresh run refuses a directory that already holds checkpoints (so nothing is
    overwritten), and draws the run's identity; --resume requires one, and the same model
    configuration, data and training flags (`run_identity`), and keeps the run's identity.
    Nothing is written before these checks pass; temporary files left by a killed run are
    removed (this process holds the locks).
    """
    directory = Path(train_config.checkpoints)
    config_sha256 = configuration_hash(model_config, metadata_fields(metadata["train"]))
    for stale_in in (directory, Path(train_config.run_directory)):
        for stale in remove_temporaries(stale_in):
            log.info("removed %s, left by an interrupted run", stale)
    older = False  # a run from before run identities and checkpoint records
    if train_config.resume:
        owner = check_resume_of(directory, model_config, train_config, metadata)
        older = owner is None
        owner = owner or RunIdentity.new(train_config, config_sha256)
    else:
        if CheckpointManager(directory).steps():
            raise ConfigError(
                f"{directory} already holds checkpoints of a run: pass --resume to continue "
                "it, or choose another --model_name / --checkpoint_dir."
            )
        if train_config.init_from:
            read_run_config(train_config.init_from, "--init_from")
        owner = RunIdentity.new(train_config, config_sha256)
    make_directory(directory, "--checkpoint_dir")
    checkpoints = CheckpointManager(directory, owner=owner)
    checkpoints.records_required = not older
    return checkpoints


def check_resume_of(directory, model_config, train_config, metadata):
    """--resume's checks (a checkpoint, the same model flags, data and training flags);
    returns the run's identity (None for a run from before identities)."""
    if not CheckpointManager(directory).steps():
        raise ConfigError(f"--resume: no checkpoint in {directory} to resume.")
    check_resume(directory, model_config, metadata)
    if not (directory / CONFIG).is_file():
        return None
    if train_config.init_from:
        log.warning("--init_from=%s is not used on --resume: the weights are the checkpoint's",
                    train_config.init_from)  # fmt: skip
    previous = read_run_config(directory)[1]
    check_training_flags(previous, train_config, metadata["train"].steps)
    owner = read_run_identity(directory)
    if owner is None:
        log.warning("%s records no run identity (an older run): its checkpoints from now on do",
                    directory / CONFIG)  # fmt: skip
    return owner


def build_and_restore(model_config, train_config, train_meta, checkpoints, strategy=None):
    """The compiled model, initialized (a fresh run) or restored from the newest intact
    checkpoint (--resume), under `strategy` if given; returns `(model, plan)`. A checkpoint
    restores whatever strategy wrote it."""
    steps_per_epoch = train_meta.steps
    total_steps = steps_per_epoch * train_config.epochs
    last_step = min(total_steps, train_config.max_steps or total_steps)
    keras.utils.set_random_seed(train_config.seed)
    capacity = None
    if train_config.tail_capacity and model_config.cutoffs:
        capacity = max_tail_labels_per_batch(
            train_config.train_directory, model_config.cutoffs, model_config.vocab_size
        )
    batch_shape = (train_meta.batch_size, train_meta.seq_len)
    model = build_model(model_config, train_config, batch_shape, total_steps, capacity, strategy)
    if strategy is not None:
        verify_rows(strategy, *batch_shape)
    first_step = 0
    if train_config.resume:
        first_step = checkpoints.restore(model, set_aside_damaged=True)
        log.info("resumed from %s at step %d", checkpoints.restored, first_step)
    elif train_config.init_from:
        initialize_from(model, model_config, train_config.init_from)
    elif train_config.unigram_bias_init:
        unigram = Path(train_config.train_directory) / UNIGRAM_FILE
        model.output_layer.initialize_biases(read_unigram_file(unigram))
    log.info("tail capacity: %s; steps per epoch: %d", capacity, steps_per_epoch)
    return model, Plan(batch_shape, steps_per_epoch, total_steps, last_step, first_step)


def initialize_from(model, model_config, checkpoint_dir):
    """--init_from: starts `model` from the newest checkpoint of the run in `checkpoint_dir`
    (e.g. a derived architecture from its supernet; see `PARTransformerXL.copy_weights_from`).
    Its shape must be this run's; a ConfigError names what differs."""
    source_config = read_run_config(checkpoint_dir, "--init_from")[0]
    shape = ("vocab_size", "d_model", "num_heads", "d_ffn", "num_layers", "cutoffs",
             "proj_factor", "tie_embeddings")  # fmt: skip
    differ = [(n, getattr(source_config, n), getattr(model_config, n)) for n in shape
              if getattr(source_config, n) != getattr(model_config, n)]  # fmt: skip
    if differ:
        raise ConfigError(
            f"--init_from={checkpoint_dir}: that run's model has another shape ("
            + "; ".join(f"{n} {a} there, {b} here" for n, a, b in differ)
            + "): give this run the same model flags."
        )
    source = load_run(checkpoint_dir, flag="--init_from")[0]
    try:
        model.copy_weights_from(source)
    except ValueError as error:
        raise ConfigError(f"--init_from={checkpoint_dir}: {error}") from None
    log.info("weights from %s (step %d); the optimizer and schedules start afresh",
             checkpoint_dir, cb.global_step(source))  # fmt: skip


def search_cost(model, model_config, train_config, plan):
    """A supernet's cost (`CostObjective`), which the logs show and `--cost` adds to the loss:
    the latency table's (`--cost=latency`) or the registry's FLOPs per token at the run's
    shape; its weight is 0 without `--cost`. None for a fixed architecture (no search)."""
    if model_config.architecture is not None:
        return None
    batch, segment = plan.batch_shape
    if train_config.cost == "latency":
        path = train_config.latency_table
        costs, fixed = read_latency_table(path, model_config, segment, model_config.mem_len)
        unit = "ms per batch"
    else:
        path, unit = None, "FLOPs per token"
        costs, fixed = flops_costs(model, segment, model_config.mem_len, batch)
    needed = {*model.choice_letters, *standard_architecture(2)}
    if not needed <= set(costs):
        raise ConfigError(
            f"--latency_table={path} has no latency for {sorted(needed - set(costs))}: measure "
            f"the letters {''.join(sorted(needed))} with latency_table.py."
        )
    weight = train_config.cost_weight if train_config.cost != "none" else 0.0
    return CostObjective(costs, weight, train_config.cost_target, train_config.cost_form, unit,
                         fixed)  # fmt: skip


def log_start(model, model_config, train_config, plan, strategy=None):
    model.summary(print_fn=lambda line, **_: log.info(line))
    log.info("config:\n%s", to_json(model_config, train_config))
    batch = plan.batch_shape[0]
    log.info("devices: %s; global batch %d rows, %d per replica", describe(strategy), batch,
             replica_batch_size(strategy, batch))  # fmt: skip
    log.info("training from step %d to %d; the schedules end at step %d",
             plan.first_step, plan.last_step, plan.total_steps)  # fmt: skip


def make_callbacks(model, model_config, train_config, plan, evaluation, checkpointer, cost=None):
    """The run's callbacks, in order: the divergence guard before the evaluation and the
    checkpointer, so a diverged state is neither evaluated nor saved. `cost` (a supernet's
    `search_cost`) is logged beside the choice probabilities."""
    run = train_config.run_directory
    batch, segment = plan.batch_shape
    flops = training_flops_per_token(model, segment, batch)
    callbacks = [
        cb.MemoryReset(plan.steps_per_epoch),
        cb.TrainingLogger(
            run, train_config.log_every, batch * segment, flops, plan.steps_per_epoch, cost
        ),  # fmt: skip
        cb.DivergenceGuard(
            checkpointer.checkpoints, train_config.divergence_factor, model_config.vocab_size
        ),  # fmt: skip
        evaluation,
        checkpointer,
        cb.EpochProgress(train_config.epochs, plan.steps_per_epoch),
        keras.callbacks.TensorBoard(str(run), write_graph=False),
    ]
    if not model_config.tau_is_trainable and model_config.architecture is None:
        callbacks.insert(
            0,
            cb.TauAnnealing(
                plan.total_steps, train_config.tau_start, train_config.tau_end,
                train_config.tau_schedule,
            ),
        )  # fmt: skip
    return callbacks


def fit_epochs(model, train_config, plan, callbacks, checkpointer, strategy=None):
    """Trains from `plan.first_step` to exactly `plan.last_step`.

    One `fit` per data epoch, on exactly the batches left to train in it: a compiled call
    (--steps_per_execution) stops where its data ends, so training never passes
    --max_steps or the end of the schedules, and every epoch starts on a fresh memory.
    Under a strategy each replica gets its rows of every batch (`distribute_rows`).
    SIGINT / SIGTERM save a checkpoint and stop; then TrainingInterrupted says where.
    """
    step = plan.first_step
    if step >= plan.last_step:
        log.info("the run already reached its last step, %s: nothing is left to train; its "
                 "final evaluation follows", plan.position(step))  # fmt: skip
        return
    try:
        with save_on_signals(checkpointer):
            while step < plan.last_step and checkpointer.interrupted is None:
                epoch, batch = divmod(step, plan.steps_per_epoch)
                count = min(plan.steps_per_epoch - batch, plan.last_step - step)
                data = load_dataset(
                    train_config.train_directory,
                    skip_batches=batch,
                    document_starts=model.document_boundaries,
                ).take(count)
                steps = None  # the dataset's length
                if strategy is not None:  # a distributed dataset does not know its length
                    data = distribute_rows(strategy, lambda data=data: data, plan.batch_shape[0])
                    steps = count
                model.fit(data, initial_epoch=epoch, epochs=epoch + 1, shuffle=False,
                          steps_per_epoch=steps, callbacks=callbacks,
                          verbose=2 if _quiet() else 1)  # fmt: skip
                step, previous = cb.global_step(model), step
                if step == previous:
                    break
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
        raise DataError(
            f"training stopped at {plan.position(cb.global_step(model))}: reading "
            f"{train_config.train_directory} failed ({error.message.splitlines()[0]}); its "
            "records do not match its metadata.json (damaged, or edited by hand?): rebuild it "
            "with build_data.py."
        ) from None
    except KeyboardInterrupt:  # a second signal: no time to save
        raise cb.TrainingInterrupted(
            f"interrupted at {plan.position(cb.global_step(model))} before a checkpoint could "
            f"be saved. {cb.last_checkpoint(checkpointer.checkpoints)} Continue with --resume."
        ) from None
    if checkpointer.interrupted is not None:
        message = (f"interrupted by signal {checkpointer.interrupted} at "
                   f"{plan.position(step)}: checkpoint saved, continue with --resume")  # fmt: skip
        log.info(message)
        raise cb.TrainingInterrupted(message)


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


def write_results(model, train_config, evaluation):
    """Final validation (and test) evaluation, written to `results.json`; returns it.

    Also for a resumed run that had no step left to train (stopped during this evaluation).
    SIGINT / SIGTERM meanwhile stop it with `TrainingInterrupted`, whose message says what is
    saved and how to finish (`--resume`).
    """
    step = cb.global_step(model)
    run = Path(train_config.run_directory)
    evaluation.set_model(model)  # a resumed run without a step left to train never ran `fit`
    written = []

    def interrupted(signum):
        if written:
            return (
                f"interrupted by signal {signum} while drawing the search's pictures: "
                f"{written[0]} is written; draw them with plot_search.py --run_dir={run}."
            )
        saved = CheckpointManager(train_config.checkpoints).path(step)
        return (
            f"interrupted by signal {signum} during the final evaluation at step {step}: the "
            f"checkpoint of step {step} is saved ({saved}), results.json is not written. Run "
            "again with --resume to finish the evaluation and write it."
        )

    with stop_on_signals(interrupted):
        results = {"step": step, "architecture": model.choice_probabilities()[1]}
        if model.cost_objective is not None and model.choice_layers:
            within = model.cost_objective.within_target(model)
            results["architecture_within_target"] = within
            log.info("the most probable architecture within --cost_target=%g: %s",
                     model.cost_objective.target_fraction,
                     within or "none (the cheapest costs more)")  # fmt: skip
        results["valid"] = evaluation.evaluate()
        results["validation_history"] = evaluation.history
        if train_config.test_directory:
            results["test"] = evaluate_split(model, train_config.test_directory)
            log.info("test | %s", format_metrics(results["test"]))
            print(f"test perplexity: {results['test']['perplexity']:.2f}")
        with reporting_full_disk(run / "results.json"):
            atomic_write_text(run / "results.json", json.dumps(results, indent=2))
        written.append(run / "results.json")
        log.info("step %d: final evaluation written to %s", step, written[0])
        if model.choice_layers:  # a fixed architecture has no search to draw
            try:
                log.info("pictures of the search: %s, %s", *draw_search(run))
            except NoSearchHistory as error:  # e.g. a run stopped before its first log line
                log.info("no pictures of the search: %s", error)
    return results


@contextlib.contextmanager
def stop_on_signals(message):
    """SIGINT / SIGTERM inside the block raise `TrainingInterrupted(message(signum))`: work
    that cannot stop at a batch end (the final evaluation) stops at once and says why."""

    def handler(signum, frame):
        text = message(signum)
        log.info(text)
        raise cb.TrainingInterrupted(text)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _quiet():
    """Progress bars only on a terminal; one line per epoch in logs and CI."""
    return not sys.stdout.isatty()


def evaluate(checkpoint_dir, split_directory=None, checkpoint=None, jit_compile=False,
             strategy=None, knn_backend=None, choice_at_inference=None):  # fmt: skip
    """Perplexity of a checkpoint on a split directory (default: the run's test split), in
    order, with memory; on one device or on the replicas of `strategy`; the kNN memory
    searched by `knn_backend` (default: the run's); a supernet's blocks weighted by
    `choice_at_inference` (default: the run's).

    As in training (`TrainConfig.tail_capacity`), the loss scores each tail cluster sparsely,
    sized by the split's own labels (the most any of its batches puts in each cluster): every
    batch stays on the sparse path, which matters for a derived model, whose blocks cost
    less than the full softmax (benchmarks/results/inference.md).
    """
    model_config, train_config, _ = read_run_config(checkpoint_dir)
    split_directory = split_directory or train_config.test_directory
    if not split_directory:
        raise ConfigError("--eval_directory is required: the run has no test split.")
    split = read_metadata(split_directory)
    capacity = None
    if train_config.tail_capacity and model_config.cutoffs:
        if split.vocab_size == model_config.vocab_size:  # else refused below
            capacity = max_tail_labels_per_batch(
                split_directory, model_config.cutoffs, model_config.vocab_size
            )
    model, _, _, train_data = load_run(checkpoint_dir, checkpoint, jit_compile, strategy,
                                       capacity, knn_backend, choice_at_inference)  # fmt: skip
    for name, expected, value in differences(
        train_data, split, ("vocab_size", "batch_size", "sp_model_sha256")
    ):
        raise DataError(
            f"{split_directory} has {name}={value}, the model was trained with {expected}: "
            "build it with the run's SentencePiece model and batch size."
        )
    result = evaluate_split(model, split_directory)
    return {"split": split.split, "directory": str(split_directory), **result}
