"""Keras callbacks of a PAR training run: tau, memory, evaluation, logs, checkpoints, divergence
stop, progress bar.

All of them count steps with the optimizer's iteration counter, which is saved in every
checkpoint, so a resumed run continues every schedule and interval where it stopped.
"""

import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from par_xl.models.rules import standard_architecture
from par_xl.reporting.search_picture import choice_figure
from par_xl.runtime.log_files import format_metrics
from par_xl.training.evaluation import evaluate_split
from par_xl.training.schedules import tau_at

log = logging.getLogger("par_xl")


def global_step(model):
    return int(ops.convert_to_numpy(model.optimizer.iterations))


class Interval:
    """Says when the global step passes a multiple of `every` (0: never) or one of the steps
    `at`, also when a compiled call advances it several steps at once
    (`steps_per_execution` > 1)."""

    def __init__(self, every, at=()):
        self.every = every
        self.at = tuple(at)
        self.last = None

    def due(self, step):
        previous = step - 1 if self.last is None else self.last
        self.last = step
        passed_multiple = bool(self.every) and step // self.every > previous // self.every
        return passed_multiple or any(previous < s <= step for s in self.at)


class TrainingDiverged(RuntimeError):
    """The loss became NaN, infinite, or larger than the divergence bound."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT / SIGTERM; the message says where and what was saved."""


class LossWindow:
    """The mean training loss over the steps since the last `mean` call (or `restart`).

    Keras logs `loss` as the running mean of the epoch. This reads the sums behind it, the
    `total` and `count` of the loss tracker (a `keras.metrics.Mean` that `fit` resets at each
    epoch start), and differences them: exact over any window, also when one compiled call
    trains several steps (--steps_per_execution). `metric` names the tracker: "loss", what
    the optimizer minimises (with a search's cost term), or "language_model_metrics", the
    cross-entropy per token alone.
    """

    def __init__(self, metric="loss"):
        self.metric = metric
        self.tracker = None
        self.start = (0.0, 0.0)

    def restart(self, model):
        self.tracker = next(m for m in model.metrics if m.name == self.metric)
        self.start = self._totals()

    def mean(self):
        """Mean loss since the last call, or None if no step was trained since."""
        total, count = self._totals()
        (start_total, start_count), self.start = self.start, (total, count)
        return (total - start_total) / (count - start_count) if count > start_count else None

    def _totals(self):
        variables = (self.tracker.total, self.tracker.count)
        return tuple(float(ops.convert_to_numpy(v)) for v in variables)


class TauAnnealing(keras.callbacks.Callback):
    """Sets the Gumbel temperature from the step before each batch (see `tau_at`)."""

    def __init__(self, total_steps, tau_start, tau_end, kind="exponential"):
        super().__init__()
        self.total_steps = total_steps
        self.tau_start = tau_start
        self.tau_end = tau_end
        self.kind = kind

    def on_train_batch_begin(self, batch, logs=None):
        step = global_step(self.model)
        self.model.set_tau(tau_at(step, self.total_steps, self.tau_start, self.tau_end, self.kind))


class MemoryReset(keras.callbacks.Callback):
    """Empties the model's state (the XL memory) at the start of each pass over the training
    data.

    Keyed on the step, not on `fit`'s epoch counter: a run resumed mid-epoch keeps the memory
    it restored from the checkpoint.
    """

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if global_step(self.model) % self.steps_per_epoch == 0:
            self.model.reset_state()


class DivergenceGuard(keras.callbacks.Callback):
    """Raises `TrainingDiverged`, naming the step, when the loss of the steps since the last
    batch end is not finite or exceeds `factor * log(vocab_size)`.

    `log(V)` is the loss of a uniform guess. A language model starts near it (below it with
    the unigram bias init) and goes down; a loss several times larger gives the right token a
    probability below V ** -factor, far worse than knowing nothing: the optimizer has blown the
    weights up (a learning rate far too large) and nothing good follows. Unlike a jump over the
    recent level, this bound needs no warm-up window and does not fire on the ordinary loss
    spikes of a healthy run. `factor` 0: only a non-finite loss stops.

    Placed before `PeriodicEvaluation` and `Checkpointer`: a diverged state is neither
    evaluated nor saved, and the good checkpoints are not rotated out by diverged ones.
    """

    def __init__(self, checkpoints, factor, vocab_size):
        super().__init__()
        self.checkpoints = checkpoints
        self.factor = factor
        self.vocab_size = vocab_size
        self.max_loss = factor * math.log(vocab_size) if factor else math.inf
        self.window = LossWindow()

    def on_epoch_begin(self, epoch, logs=None):
        self.window.restart(self.model)

    def on_train_batch_end(self, batch, logs=None):
        loss = self.window.mean()
        if loss is None or loss <= self.max_loss:  # NaN compares False: it goes on below
            return
        bound = ""
        if math.isfinite(loss):
            bound = (
                f", above the divergence bound {self.max_loss:.1f} (--divergence_factor="
                f"{self.factor:g} x log({self.vocab_size}), the loss of a uniform guess)"
            )
        message = (
            f"The training loss became {loss:.4g} at step {global_step(self.model)}{bound}; "
            f"training stopped before this state was evaluated or saved. "
            f"{last_checkpoint(self.checkpoints)} Lower --max_lr or raise --warmup_steps."
        )
        log.error(message)
        raise TrainingDiverged(message)


def last_checkpoint(checkpoints):
    latest = checkpoints.latest()
    return f"The last good checkpoint is {latest}." if latest else "No checkpoint was saved."


class Checkpointer(keras.callbacks.Callback):
    """Saves every `every` steps, at each epoch end, at the end, and on SIGINT / SIGTERM.

    Only finite weights are saved: a diverged state raises `TrainingDiverged` instead.

    A signal handler only sets `interrupted`; the save happens at the next batch end, then
    training stops.
    """

    def __init__(self, checkpoints, every):
        super().__init__()
        self.checkpoints = checkpoints
        self.interval = Interval(every)
        self.interrupted = None
        self.last_saved = None

    def save(self):
        step = global_step(self.model)
        if step != self.last_saved:
            state = [id(v) for v in self.model.state_variables]  # per replica, follows
            weights = [w for w in self.model.weights if id(w) not in state]
            if not all(np.isfinite(ops.convert_to_numpy(w)).all() for w in weights):
                raise TrainingDiverged(
                    f"The weights are no longer finite at step {step}; training stopped. "
                    f"{last_checkpoint(self.checkpoints)}"
                )
            path = self.checkpoints.save(self.model, step)
            self.last_saved = step
            log.info("step %d: saved checkpoint %s", step, path)

    def on_train_batch_end(self, batch, logs=None):
        if self.interrupted is not None:
            self.save()
            self.model.stop_training = True
        elif self.interval.due(global_step(self.model)):
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def on_train_end(self, logs=None):
        self.save()


class TrainingLogger(keras.callbacks.Callback):
    """One line every `every` steps in the log file, with TensorBoard scalars beside it.

    The line: step, mean cross-entropy over the interval (the loss without a search's cost
    term), its perplexity, learning rate, tau, ms/step,
    tokens/s, model GFLOP/s, the architecture (the search's argmax) and, with a `cost`
    (`par_xl.cost.objective.CostObjective`), the expected cost and the argmax's, as multiples
    of the standard model's. TensorBoard (`<run>/train`): the same scalars (`cost/expected`,
    `cost/derived`), each block's choice probabilities, and once per epoch a blocks x choices
    heat map of them, so the architecture search can be watched as it happens. A fixed
    architecture has no search: no tau, no probabilities, no heat map, no cost.
    """

    def __init__(self, run_directory, every, tokens_per_step, flops_per_token, steps_per_epoch,
                 cost=None):  # fmt: skip
        super().__init__()
        self.cost = cost
        self.interval = Interval(every)
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.steps_per_epoch = steps_per_epoch
        self.writer = tf.summary.create_file_writer(f"{run_directory}/train")
        self.window = LossWindow("language_model_metrics")  # the cross-entropy, cost or not
        self.interval_start = (0, 0.0)  # (step, time) where the current interval began

    def on_epoch_begin(self, epoch, logs=None):
        self.window.restart(self.model)
        self.interval_start = (global_step(self.model), time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if not self.interval.due(step):
            return
        loss = self.window.mean()
        if loss is None:
            return
        start_step, start_time = self.interval_start
        elapsed = max(time.perf_counter() - start_time, 1e-9)
        steps = max(step - start_step, 1)
        self.interval_start = (step, time.perf_counter())
        tokens_per_second = steps * self.tokens_per_step / elapsed
        lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        probabilities, architecture = self.model.choice_probabilities()
        tau = self._tau() if self.model.choice_layers else None
        costs = self._costs(architecture)
        log.info(
            "step %d | loss %.4f | ppl %.2f | lr %.3e%s | %.1f ms/step | %.0f tok/s | "
            "%.1f GFLOP/s | %s%s",
            step, loss, math.exp(min(loss, 50.0)), lr, "" if tau is None else f" | tau {tau:.4f}",
            1000 * elapsed / steps,
            tokens_per_second, tokens_per_second * self.flops_per_token / 1e9, architecture,
            "" if costs is None else " | cost {:.3f}x, argmax {:.3f}x".format(*costs),
        )  # fmt: skip
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("perplexity", math.exp(min(loss, 50.0)))
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("tokens_per_second", tokens_per_second)
            if tau is not None:
                tf.summary.scalar("tau", tau)
                for layer, row in enumerate(probabilities):
                    for letter, value in zip(self.model.choice_letters, row):
                        tf.summary.scalar(f"choice/block_{layer}/{letter}", float(value))
            if costs is not None:
                tf.summary.scalar("cost/expected", costs[0])
                tf.summary.scalar("cost/derived", costs[1])

    def on_epoch_end(self, epoch, logs=None):
        step = global_step(self.model)
        probabilities, architecture = self.model.choice_probabilities()
        with self.writer.as_default(step=step):
            if self.model.choice_layers:
                tf.summary.image(
                    "choice_probabilities",
                    choice_figure(probabilities, self.model.choice_letters, step, self._tau()),
                )
            tf.summary.text("architecture", architecture)
        self.writer.flush()
        batch = step - epoch * self.steps_per_epoch
        where = "end" if batch == self.steps_per_epoch else (
            f"stopped at batch {batch} of {self.steps_per_epoch}")  # fmt: skip
        log.info("epoch %d %s | %s | %s", epoch + 1, where, architecture, format_metrics(logs))

    def _tau(self):
        return float(ops.convert_to_numpy(self.model.choice_layers[0].tau))

    def _costs(self, architecture):
        """`(expected, argmax architecture's)` cost as multiples of the standard model's, or
        None without a cost (a fixed architecture)."""
        if self.cost is None:
            return None
        standard = self.cost.architecture_cost(standard_architecture(self.model.num_layers))
        expected = float(ops.convert_to_numpy(self.cost.expected_cost(self.model)))
        return expected / standard, self.cost.architecture_cost(architecture) / standard


EVALUATION_SCALARS = (
    "loss",
    "perplexity",
    "perplexity_batch_mean",
    "bits_per_token",
    "word_perplexity",
    "bits_per_character",
)


class PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluates the valid split (a split directory), in order with its own memory, every
    `every` steps (0: never), at the steps `at` and at each epoch end; adds `val_*` entries to
    the epoch logs for TensorBoard."""

    def __init__(self, directory, run_directory, every=0, at=()):
        super().__init__()
        self.directory = directory
        self.interval = Interval(every, at)
        self.writer = tf.summary.create_file_writer(f"{run_directory}/validation")
        self.history = []
        self._last_step = None

    def evaluate(self):
        step = global_step(self.model)
        if step == self._last_step:
            return self.history[-1]
        result = {"step": step, **evaluate_split(self.model, self.directory)}
        self.history.append(result)
        self._last_step = step
        metrics = {k: v for k, v in result.items() if k != "step"}
        log.info("step %d | valid | %s", step, format_metrics(metrics))
        with self.writer.as_default(step=step):
            for name in EVALUATION_SCALARS:
                tf.summary.scalar(name, result[name])
        self.writer.flush()
        return result

    def on_train_batch_end(self, batch, logs=None):
        if self.interval.due(global_step(self.model)):
            self.evaluate()

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training:  # stopped early (max_steps, signal): the caller decides
            return
        result = self.evaluate()
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in result.items() if k not in ("step", "batches")})


class EpochProgress(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, counting the batches of the data epoch, not of one `fit` call.

    The trainer runs one `fit` per data epoch, and a resumed run starts mid-epoch. Keras's own
    bar counts the batches of the call and, when training stops early (Ctrl-C, --max_steps),
    still ends at the full count with a speed computed for it: `2806/2806 - 69s - 24ms/step`
    for an epoch stopped at batch 354. This bar shows `batch/steps_per_epoch` of the data
    epoch, "Epoch e/epochs" of the whole run, and, stopped early, ends where it stopped, with
    the speed of the steps it ran.
    """

    def __init__(self, epochs, steps_per_epoch):
        super().__init__()
        self.total_epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.epoch_start = 0  # global step at which the current data epoch began

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs
        self.target = self.steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = epoch * self.steps_per_epoch
        super().on_epoch_begin(epoch, logs)

    def _maybe_init_progbar(self):
        if self.progbar is None:
            first = global_step(self.model) - self.epoch_start
            self.progbar = _ResumedProgbar(first, target=self.target, verbose=self.verbose,
                                           unit_name="step", stateless_metrics=set())  # fmt: skip

    def _update_progbar(self, batch, logs=None):
        self._maybe_init_progbar()
        self.seen = global_step(self.model) - self.epoch_start
        if self.verbose == 1:
            self.progbar.update(self.seen, list((logs or {}).items()), finalize=False)

    def _finalize_progbar(self, logs):
        self._maybe_init_progbar()
        self.seen = global_step(self.model) - self.epoch_start
        self.progbar.update(self.seen, list((logs or {}).items()), finalize=True)


class _ResumedProgbar(keras.utils.Progbar):
    """A Progbar that starts at batch `first` of its target: the time per step counts only
    the steps run since."""

    def __init__(self, first, **kwargs):
        super().__init__(**kwargs)
        self.first = first

    def _estimate_step_duration(self, current, now):
        return super()._estimate_step_duration(current - self.first, now)
