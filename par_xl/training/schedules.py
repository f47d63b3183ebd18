"""Learning-rate and Gumbel-temperature schedules, as functions of the global step."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="par_xl")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `max_lr` over `warmup_steps`, then cosine decay to 0 at
    `total_steps`; 0 afterwards.

        lr(s) = max_lr * s / warmup                                  s < warmup
              = max_lr * (1 + cos(pi * (s - warmup) / (total - warmup))) / 2
    """

    def __init__(self, max_lr, warmup_steps, total_steps):
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(
                f"total_steps must be positive and warmup_steps >= 0, received "
                f"total_steps={total_steps}, warmup_steps={warmup_steps}."
            )
        self.max_lr = max_lr
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.cast(max(self.warmup_steps, 1), "float32")
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        rising = step / warmup
        return self.max_lr * ops.where(step < self.warmup_steps, rising, cosine)

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def tau_at(step, total_steps, tau_start, tau_end, kind="exponential"):
    """Gumbel-softmax temperature at `step`: `tau_start` at 0, `tau_end` from `total_steps` on.

    exponential: `tau_start * (tau_end / tau_start) ** (step / total)`; linear: interpolation.
    """
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if kind == "exponential":
        return tau_start * (tau_end / tau_start) ** progress
    if kind == "linear":
        return tau_start + (tau_end - tau_start) * progress
    raise ValueError(f"tau schedule must be 'exponential' or 'linear', received {kind!r}.")
