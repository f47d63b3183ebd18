"""Keras callbacks of a PAR training run: tau, memory, evaluation, logs, checkpoints, NaN stop.

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

from par_xl.layers.stochastic_block import CHOICES
from par_xl.training.evaluation import evaluate_split
from par_xl.training.schedules import tau_at

log = logging.getLogger("par_xl")


def global_step(model):
    return int(ops.convert_to_numpy(model.optimizer.iterations))


class Interval:
    """Says when the global step passes a multiple of `every` (0: never), also when a compiled
    call advances it several steps at once (`steps_per_execution` > 1)."""

    def __init__(self, every):
        self.every = every
        self.last = None

    def due(self, step):
        previous = step - 1 if self.last is None else self.last
        self.last = step
        return bool(self.every) and step // self.every > previous // self.every


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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
    """Empties the XL memory at the start of each pass over the training data.

    Keyed on the step, not on `fit`'s epoch counter: a run resumed mid-epoch keeps the memory
    it restored from the checkpoint.
    """

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if global_step(self.model) % self.steps_per_epoch == 0:
            self.model.reset_memory()


class StopAtStep(keras.callbacks.Callback):
    """Stops training once the global step reaches `max_steps`."""

    def __init__(self, max_steps):
        super().__init__()
        self.max_steps = max_steps

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.max_steps:
            self.model.stop_training = True


class NaNGuard(keras.callbacks.Callback):
    """Raises `TrainingDiverged`, naming the step, when the loss is not finite.

    Placed before `Checkpointer`, so the diverged state is never saved.
    """

    def __init__(self, checkpoints):
        super().__init__()
        self.checkpoints = checkpoints

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"The training loss became {float(loss)} at step {global_step(self.model)}; "
                f"training stopped. The last good checkpoint is {self.checkpoints.latest()}."
            )


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
            if not all(np.isfinite(ops.convert_to_numpy(w)).all() for w in self.model.weights):
                raise TrainingDiverged(
                    f"The weights are no longer finite at step {step}; training stopped. The "
                    f"last good checkpoint is {self.checkpoints.latest()}."
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


def choice_heat_map(probabilities, cell=24):
    """`(layers, 3)` probabilities -> `(1, H, W, 3)` uint8 image, dark blue (0) to yellow (1)."""
    low, high = np.array([68, 1, 84], "float32"), np.array([253, 231, 37], "float32")
    colors = low + probabilities[..., None] * (high - low)  # (layers, 3, rgb)
    image = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
    return image[None].astype("uint8")


class TrainingLogger(keras.callbacks.Callback):
    """One line every `every` steps in the log file, with TensorBoard scalars beside it.

    The line: step, mean loss over the interval, its perplexity, learning rate, tau, ms/step,
    tokens/s and model GFLOP/s. TensorBoard (`<run>/train`): the same scalars, each block's
    choice probabilities, and once per epoch a blocks x choices heat map of them, so the
    architecture search can be watched as it happens.
    """

    def __init__(self, run_directory, every, tokens_per_step, flops_per_token):
        super().__init__()
        self.interval = Interval(every)
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.writer = tf.summary.create_file_writer(f"{run_directory}/train")
        self._interval_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = (0, 0.0)  # (batches, running mean loss) at the interval start
        self._interval_start = (global_step(self.model), time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        step = global_step(self.model)
        if not self.interval.due(step) or "loss" not in (logs or {}):
            return
        seen = batch + 1  # Keras's running mean covers `seen` batches of this fit epoch
        mean = float(logs["loss"])
        start_batches, start_mean = self._epoch_start
        loss = (seen * mean - start_batches * start_mean) / max(seen - start_batches, 1)
        self._epoch_start = (seen, mean)
        start_step, start_time = self._interval_start
        elapsed = max(time.perf_counter() - start_time, 1e-9)
        steps = max(step - start_step, 1)
        self._interval_start = (step, time.perf_counter())
        tokens_per_second = steps * self.tokens_per_step / elapsed
        lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        probabilities, architecture = self.model.choice_probabilities()
        tau = self._tau()
        log.info(
            "step %d | loss %.4f | ppl %.2f | lr %.3e | tau %.4f | %.1f ms/step | %.0f tok/s | "
            "%.1f GFLOP/s | %s",
            step, loss, math.exp(min(loss, 50.0)), lr, tau, 1000 * elapsed / steps,
            tokens_per_second, tokens_per_second * self.flops_per_token / 1e9, architecture,
        )  # fmt: skip
        with self.writer.as_default(step=step):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("perplexity", math.exp(min(loss, 50.0)))
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("tau", tau)
            tf.summary.scalar("tokens_per_second", tokens_per_second)
            for layer, row in enumerate(probabilities):
                for letter, value in zip(CHOICES, row):
                    tf.summary.scalar(f"choice/block_{layer}/{letter}", float(value))

    def on_epoch_end(self, epoch, logs=None):
        probabilities, architecture = self.model.choice_probabilities()
        with self.writer.as_default(step=global_step(self.model)):
            tf.summary.image("choice_probabilities", choice_heat_map(probabilities))
            tf.summary.text("architecture", architecture)
        self.writer.flush()
        log.info("epoch %d end | %s | %s", epoch + 1, architecture, _format_logs(logs))

    def _tau(self):
        layers = self.model.choice_layers
        return float(ops.convert_to_numpy(layers[0].tau)) if layers else float("nan")


class PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluates the valid split, in order with its own memory, every `every` steps (0: never)
    and at each epoch end; adds `val_*` entries to the epoch logs for TensorBoard."""

    def __init__(self, dataset, run_directory, every=0):
        super().__init__()
        self.dataset = dataset
        self.interval = Interval(every)
        self.writer = tf.summary.create_file_writer(f"{run_directory}/validation")
        self.history = []
        self._last_step = None

    def evaluate(self):
        step = global_step(self.model)
        if step == self._last_step:
            return self.history[-1]
        result = {"step": step, **evaluate_split(self.model, self.dataset)}
        self.history.append(result)
        self._last_step = step
        log.info("step %d | valid | %s", step, _format_logs(result))
        with self.writer.as_default(step=step):
            for name in ("loss", "perplexity", "perplexity_batch_mean", "bits_per_token"):
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


def _format_logs(logs):
    return " | ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in (logs or {}).items()
    )
