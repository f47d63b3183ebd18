"""Gated position-wise feed-forward sublayer (GLU variants), with F's parameter count."""

import keras

from par_xl.layers.initializers import default_initializer

# The --ffn_activation values: gated (SwiGLU, GeGLU: Shazeer 2020, arXiv 2002.05202) or not
# (gelu, relu: F's form with that activation, for comparing the activation without the gate).
FFN_ACTIVATIONS = ("swiglu", "geglu", "gelu", "relu")
GATED = {"swiglu": "silu", "geglu": "gelu"}  # the gate's activation


def validate_ffn_activation(activation):
    """Checks that `activation` is one of FFN_ACTIVATIONS; returns it."""
    if activation not in FFN_ACTIVATIONS:
        raise ValueError(
            f"ffn_activation must be one of {FFN_ACTIVATIONS}, received {activation!r}."
        )
    return activation


def matching_inner_size(width, inner_size, activation):
    """The inner width h that gives a G block F's parameter count, as nearly as an integer can.

    F (`FeedForward`, inner width d_ffn) holds `2 D d_ffn + d_ffn + D` parameters; a gated G
    `3 D h + 2 h + D` (gate, up and down projections with biases), so `h = d_ffn (2 D + 1) /
    (3 D + 2)` rounded (about 2/3 of d_ffn), which misses F's count by at most `(3 D + 2) / 2`
    parameters (base: 42 of 131,712). An ungated G has F's form: `h = d_ffn`, exactly.
    """
    if activation not in GATED:
        return inner_size
    return max(1, round(inner_size * (2 * width + 1) / (3 * width + 2)))


@keras.saving.register_keras_serializable(package="par_xl")
class GatedFeedForward(keras.layers.Layer):
    """A feed-forward sublayer with a gated linear unit (Dauphin et al. 2017; Shazeer 2020, arXiv
    2002.05202; x-transformers' `FeedForward(glu=True)`):

        swiglu: Dense(D)(Dropout(silu(x W_g + b_g) * (x W_u + b_u)))
        geglu:  Dense(D)(Dropout(gelu(x W_g + b_g) * (x W_u + b_u)))
        gelu, relu: Dense(D)(Dropout(act(x W_g + b_g)))     (no gate: F's form)

    With `matching_inner_size` as `inner_size`, a G block has F's parameter count.

    Args:
        inner_size: h, the hidden width.
        activation: one of FFN_ACTIVATIONS.
        dropout_rate: dropout rate on the hidden units.
        kernel_initializer: initializer of the kernels.

    Call arguments:
        inputs: `(B, T, D)`.
        training: enables dropout.

    Returns:
        `(B, T, D)` (no residual, no norm: the block adds those).
    """

    def __init__(self, inner_size, activation="swiglu", dropout_rate=0.0, kernel_initializer=None,
                 **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        if inner_size < 1:
            raise ValueError(f"inner_size must be positive, received {inner_size}.")
        self.inner_size = inner_size
        self.activation = validate_ffn_activation(activation)
        self.dropout_rate = dropout_rate
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )
        self.inner_dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    @property
    def gated(self):
        return self.activation in GATED

    def build(self, inputs_shape):
        dense = dict(kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy)
        inner_shape = (*inputs_shape[:-1], self.inner_size)
        activation = GATED.get(self.activation, self.activation)
        self.gate = keras.layers.Dense(self.inner_size, activation=activation, name="gate",
                                       **dense)  # fmt: skip
        self.gate.build(inputs_shape)  # (B, T, D) -> (B, T, h)
        if self.gated:
            self.up = keras.layers.Dense(self.inner_size, name="up", **dense)
            self.up.build(inputs_shape)  # (B, T, D) -> (B, T, h)
        self.down = keras.layers.Dense(inputs_shape[-1], name="down", **dense)
        self.down.build(inner_shape)  # (B, T, h) -> (B, T, D)
        self.built = True

    def call(self, inputs, training=None):
        hidden = self.gate(inputs)
        if self.gated:
            hidden = hidden * self.up(inputs)
        return self.down(self.inner_dropout(hidden, training=training))

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            inner_size=self.inner_size,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
