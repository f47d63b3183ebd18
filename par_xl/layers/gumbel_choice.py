"""Gumbel-softmax choice among K options (Jang et al. 2017, arXiv 1611.01144)."""

import keras
from keras import ops

CHOICE_AT_INFERENCE_MODES = ("expected", "argmax")
MIN_TAU = 1e-3  # a trainable tau is clipped here so that logits / tau stays finite


def validate_choice_at_inference(mode):
    """Checks that `mode` is one of CHOICE_AT_INFERENCE_MODES; returns it."""
    if mode not in CHOICE_AT_INFERENCE_MODES:
        raise ValueError(
            f"choice_at_inference must be one of {CHOICE_AT_INFERENCE_MODES}, received {mode!r}."
        )
    return mode


@keras.saving.register_keras_serializable(package="par_xl")
class GumbelChoice(keras.layers.Layer):
    """Learned logits over K choices, relaxed into per-example weights by Gumbel noise.

    Training: `softmax((logits + g) / tau)` with `g ~ Gumbel(0, 1)` drawn independently for
    each example, so one batch explores several choices. The logits are unconstrained weights
    (the original kept clipped probabilities and took `log(max(pi, 0) + eps)`, which has no
    gradient once a weight falls below zero). With `straight_through`, the forward pass uses
    the one-hot argmax sample and the backward pass the relaxed sample's gradient.

    Inference (`choice_at_inference`): no noise; `"expected"` gives `softmax(logits)`,
    `"argmax"` its one-hot argmax.

    tau lives in a variable that `TauAnnealing` (or anything else) assigns; with
    `tau_is_trainable` it is a trainable weight instead, clipped below at 1e-3.

    Args:
        num_choices: K.
        tau: initial temperature.
        straight_through: hard one-hot samples in the forward pass.
        tau_is_trainable: learn tau by gradient descent.
        choice_at_inference: `"expected"` or `"argmax"`.
        seed: seed of the noise generator.

    Call arguments:
        inputs: any tensor whose first axis is the batch B (only its shape is used).
        training: enables the noise.

    Returns:
        `(B, K)` non-negative weights that sum to one per example.
    """

    def __init__(
        self,
        num_choices=3,
        tau=1.0,
        straight_through=False,
        tau_is_trainable=False,
        choice_at_inference="expected",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_choices < 1:
            raise ValueError(f"num_choices must be positive, received {num_choices}.")
        if tau <= 0:
            raise ValueError(f"tau must be positive, received tau={tau}.")
        self.num_choices = num_choices
        self.initial_tau = tau
        self.straight_through = straight_through
        self.tau_is_trainable = tau_is_trainable
        self.choice_at_inference = validate_choice_at_inference(choice_at_inference)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, inputs_shape=None):
        self.logits = self.add_weight(
            name="logits", shape=(self.num_choices,), initializer="zeros", dtype="float32"
        )
        self.tau = self.add_weight(
            name="tau",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_tau),
            trainable=self.tau_is_trainable,
            dtype="float32",
        )
        self.built = True

    def probabilities(self):
        """`softmax(logits)`: the expected choice weights, `(K,)`, float32."""
        return ops.softmax(ops.cast(self.logits, "float32"))

    def single_choice(self, training=None):
        """One choice for the whole batch, GDAS-style (Dong & Yang 2019, arXiv 1910.04465).

        Training: one Gumbel draw `g` per call; `index = argmax(logits + g)`, a sample of
        `softmax(logits)` whatever tau (the Gumbel-max trick), and `gate = 1 + p[index] -
        stop_gradient(p[index])` with `p = softmax((logits + g) / tau)`: 1 in the forward pass,
        while its gradient reaches the logits through the relaxed sample (straight-through).
        Inference: `index = argmax(logits)`, gate 1.

        Returns:
            `(index, gate)`: an int32 scalar and a compute-dtype scalar.
        """
        logits = ops.cast(self.logits, "float32")
        if not training:
            return ops.cast(ops.argmax(logits), "int32"), ops.ones((), self.compute_dtype)
        uniform = keras.random.uniform(
            (self.num_choices,), minval=1e-10, maxval=1.0, dtype="float32",
            seed=self.seed_generator,
        )  # fmt: skip
        noisy = logits - ops.log(-ops.log(uniform))  # (K,)
        tau = ops.maximum(ops.cast(self.tau, "float32"), MIN_TAU)
        index = ops.cast(ops.argmax(noisy), "int32")
        chosen = ops.take(ops.softmax(noisy / tau), index)
        return index, ops.cast(1.0 + chosen - ops.stop_gradient(chosen), self.compute_dtype)

    def call(self, inputs, training=None):
        batch = ops.shape(inputs)[0]
        if not training:
            if self.choice_at_inference == "expected":
                weights = self.probabilities()
            else:
                weights = ops.one_hot(ops.argmax(self.logits), self.num_choices)
            return ops.cast(
                ops.broadcast_to(weights, (batch, self.num_choices)), self.compute_dtype
            )

        # float32 throughout (Keras autocasts variables to float16 under mixed precision).
        uniform = keras.random.uniform(
            (batch, self.num_choices), minval=1e-10, maxval=1.0, dtype="float32",
            seed=self.seed_generator,
        )  # fmt: skip
        gumbel = -ops.log(-ops.log(uniform))  # (B, K)
        tau = ops.maximum(ops.cast(self.tau, "float32"), MIN_TAU)
        soft = ops.softmax((ops.cast(self.logits, "float32") + gumbel) / tau, axis=-1)  # (B, K)
        if self.straight_through:
            hard = ops.one_hot(ops.argmax(soft, axis=-1), self.num_choices)
            soft = hard + soft - ops.stop_gradient(soft)
        return ops.cast(soft, self.compute_dtype)

    def compute_output_shape(self, inputs_shape):
        return (inputs_shape[0], self.num_choices)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_choices=self.num_choices,
            tau=self.initial_tau,
            straight_through=self.straight_through,
            tau_is_trainable=self.tau_is_trainable,
            choice_at_inference=self.choice_at_inference,
            seed=self.seed,
        )
        return config
