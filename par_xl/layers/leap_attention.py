"""LEAP: Linear Explainable Attention in Parallel (mtanghu/LEAP), causal linear attention by
focus-weighted cumulative sums.

Shape letters as in `par_xl.layers.relative_attention` (B, T, D, N, H).
"""

import keras
from keras import ops

from par_xl.layers import leap_state
from par_xl.layers.initializers import default_initializer
from par_xl.layers.leap_state import LeapState

NORM_EPSILON = 1e-5


def _normalized(x):
    """LEAP's parameter-free norm over the head axis: zero mean, unit variance (float32)."""
    x = ops.cast(x, "float32")
    centered = x - ops.mean(x, axis=-1, keepdims=True)
    return centered * ops.rsqrt(ops.mean(ops.square(centered), axis=-1, keepdims=True)
                                + NORM_EPSILON)  # fmt: skip


@keras.saving.register_keras_serializable(package="par_xl")
class LeapAttention(keras.layers.Layer):
    """LEAP attention ("Linear Explainable Attention in Parallel", github.com/mtanghu/LEAP: the
    equations of its write-up, with the rescaled dot product), causal, linear in the context's
    length, with O(1) state per stream and head.

    Per head n, with `Norm` a parameter-free LayerNorm over H and c the `rescale` (10):

        q_i = Norm(x_i W_q)   f_i = Norm(x_i W_f)   k_i = Norm(x_i W_k)   v_i = x_i W_v
        w_i = exp(c (f_i . k_i) / H - c)                  focus weight, in [e^-2c, 1]
        K_i = sum_{j<=i} w_j k_j / sum_{j<=i} w_j         focused key (V_i: the same of v)
        out_i = sigmoid(c (q_i . K_i) / H) * V_i

    then the output projection of the N heads back to width D. "Rescaled dot product": the
    normed vectors have squared length H, so each product over H lies in [-c, c] whatever the
    width (LEAP's remedy for dot products that grow with it). Subtracting c from the focus
    logit only scales both sums of a ratio: it keeps the sums small.

    The sums run over the whole stream (`par_xl.layers.leap_state`): the layer takes the
    stream's `LeapState` and returns it after the segment, which the model carries like the XL
    memory (`par_xl.models.state`). A segment of T > 1 positions uses the parallel form
    (cumulative sums); one position, as in generation, the recurrent form: both agree to float
    rounding, so cached generation equals reading the whole context. At a document start the
    sums restart. LEAP has no position term of its own (its reference model adds absolute
    position embeddings; this model has none): the cumulative sums give the order. Its local
    (windowed) variant is not implemented: its state grows with the window.

    Args:
        num_heads: N.
        head_size: H.
        rescale: c > 0, the rescaled dot products' range.
        kernel_initializer: initializer of the projections.

    Call arguments:
        inputs: `(B, T, D)` segment states.
        state: the stream's `LeapState` (B rows, N heads, size H) before the segment, or
            `None`: a stream with nothing before it, and only the output is returned.
        training: unused (no dropout inside; the block's residual dropout applies).
        document_starts: `None`, or `(B, T)` 0/1.

    Returns:
        `(output (B, T, D), state after the segment)`, or the output alone when `state` is
        `None` (no residual, no norm).

    Example:
        >>> layer = LeapAttention(num_heads=4, head_size=32)
        >>> state = leap_state.empty_state(2, 4, 32)  # B=2, N=4, H=32
        >>> output, state = layer(x, state)  # doctest: +SKIP
    """

    def __init__(self, num_heads, head_size, rescale=10.0, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if num_heads < 1 or head_size < 1:
            raise ValueError(
                f"num_heads and head_size must be positive, received num_heads={num_heads}, "
                f"head_size={head_size}."
            )
        if not rescale > 0:
            raise ValueError(f"rescale must be positive, received {rescale}.")
        self.num_heads = num_heads
        self.head_size = head_size
        self.rescale = float(rescale)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )

    def build(self, inputs_shape, *args, **kwargs):
        width = inputs_shape[-1]
        heads = (width, self.num_heads, self.head_size)

        def weight(name, shape):
            return self.add_weight(name=name, shape=shape, initializer=self.kernel_initializer)

        self.query_kernel = weight("query_kernel", heads)  # (D, N, H)
        self.focus_kernel = weight("focus_kernel", heads)  # (D, N, H)
        self.key_kernel = weight("key_kernel", heads)  # (D, N, H)
        self.value_kernel = weight("value_kernel", heads)  # (D, N, H)
        self.output_kernel = weight("output_kernel", (self.num_heads, self.head_size, width))
        self.built = True

    def call(self, inputs, state=None, training=None, document_starts=None):
        query, weights, key, value = self.project(inputs)
        fresh = state is None
        if fresh:
            zeros = ops.zeros_like(key[:, 0])  # (B, N, H) float32
            state = LeapState(zeros, zeros, zeros[..., 0])
        if inputs.shape[1] == 1:  # the recurrent form: one position
            start = None if document_starts is None else document_starts[:, 0]
            focused_key, focused_value, state = leap_state.focus_step(
                state, weights[:, 0], key[:, 0], value[:, 0], start
            )
            focused_key, focused_value = focused_key[:, None], focused_value[:, None]
        else:
            focused_key, focused_value, state = leap_state.focus(
                state, weights, key, value, document_starts
            )  # (B, T, N, H) x2
        alignment = ops.sigmoid(self._rescaled_dot(query, focused_key))  # (B, T, N)
        attended = ops.cast(alignment[..., None] * focused_value, self.compute_dtype)
        output = ops.einsum("btnh,nhd->btd", attended, self.output_kernel)
        return output if fresh else (output, state)

    def project(self, inputs):
        """`(B, T, D)` -> `(normed queries (B, T, N, H), focus weights (B, T, N), normed keys
        (B, T, N, H), values (B, T, N, H))`, all float32."""
        query = _normalized(ops.einsum("btd,dnh->btnh", inputs, self.query_kernel))
        focus = _normalized(ops.einsum("btd,dnh->btnh", inputs, self.focus_kernel))
        key = _normalized(ops.einsum("btd,dnh->btnh", inputs, self.key_kernel))
        value = ops.cast(ops.einsum("btd,dnh->btnh", inputs, self.value_kernel), "float32")
        weights = ops.exp(self._rescaled_dot(focus, key) - self.rescale)  # (B, T, N)
        return query, weights, key, value

    def _rescaled_dot(self, a, b):
        """`c (a . b) / H` over the head axis: in [-c, c] for normed vectors."""
        return ops.sum(a * b, axis=-1) * (self.rescale / self.head_size)

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def compute_output_spec(self, inputs, state=None, training=None, document_starts=None):
        output = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if state is None:
            return output
        return output, LeapState(*(keras.KerasTensor(x.shape, dtype=x.dtype) for x in state))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            head_size=self.head_size,
            rescale=self.rescale,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
