"""Position-wise feed-forward sublayer."""

import keras

from par_xl.layers.initializers import default_initializer


@keras.saving.register_keras_serializable(package="par_xl")
class FeedForward(keras.layers.Layer):
    """`Dense(d_ffn, relu) -> dropout -> Dense(D)`, applied to each position.

    Args:
        inner_size: d_ffn, the hidden width.
        dropout_rate: dropout rate after the ReLU.
        kernel_initializer: initializer of both kernels.

    Call arguments:
        inputs: `(B, T, D)`.
        training: enables dropout.

    Returns:
        `(B, T, D)` (no residual, no norm: the block adds those).
    """

    def __init__(self, inner_size, dropout_rate=0.0, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if inner_size < 1:
            raise ValueError(f"inner_size must be positive, received {inner_size}.")
        self.inner_size = inner_size
        self.dropout_rate = dropout_rate
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )
        self.inner_dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    def build(self, inputs_shape):
        dense = dict(kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy)
        self.inner = keras.layers.Dense(self.inner_size, activation="relu", name="inner", **dense)
        self.inner.build(inputs_shape)  # (B, T, D) -> (B, T, d_ffn)
        self.outer = keras.layers.Dense(inputs_shape[-1], name="outer", **dense)
        self.outer.build((*inputs_shape[:-1], self.inner_size))  # (B, T, d_ffn) -> (B, T, D)
        self.built = True

    def call(self, inputs, training=None):
        return self.outer(self.inner_dropout(self.inner(inputs), training=training))

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            inner_size=self.inner_size,
            dropout_rate=self.dropout_rate,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
