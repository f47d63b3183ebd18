"""Transformer-XL relative multi-head attention over `[memory; segment]`.

Shape letters, used throughout the package:
    B batch, T segment length, M memory size (`mem_len`), K = M + T key length,
    D model width, N heads, H head size (D = N * H).
"""

import math

import keras
from keras import ops

from par_xl.layers.initializers import default_initializer
from par_xl.layers.positions import T5_BUCKETS, rotate, t5_bias, validate_position


def sinusoid_positions(key_length, width, dtype="float32"):
    """Sinusoidal encodings of the distances `K-1, ..., 1, 0` (Vaswani et al. 2017).

    Row j encodes distance `K - 1 - j`, the distance from the last query to key j, which is
    the order `relative_shift` expects. Shape `(K, D)`: `[sin(d * f), cos(d * f)]` over the
    `D / 2` frequencies `f_k = 10000^(-2k / D)`.
    """
    if width % 2:
        raise ValueError(f"Sinusoid width must be even, received width={width}.")
    distances = ops.arange(key_length - 1, -1, -1, dtype="float32")  # (K,)
    frequencies = 1.0 / (10000.0 ** (ops.arange(0, width, 2, dtype="float32") / width))
    angles = distances[:, None] * frequencies[None, :]  # (K, D/2)
    return ops.cast(ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1), dtype)


def relative_shift(scores):
    """Re-index position scores from "key row j" to "distance from query i".

    Input `scores[..., i, c]` is the score of query i against distance `K-1-c`; the output
    `[..., i, j]` is the score against key j, i.e. against distance `M + i - j`, for every
    `j <= M + i` (the causal part; the rest is junk that the causal mask removes). Done with
    one pad and two reshapes instead of a gather (Dai et al. 2019, appendix B). The row is
    dropped with `ops.slice`, whose gradient TensorFlow computes as a pad: a strided slice's
    (`x[..., 1:, :]`) took ~6% of the training step's kernel time.

    Args:
        scores: `(..., T, K)` with `K >= T`.
    Returns:
        `(..., T, K)`.
    """
    *lead, t, k = scores.shape
    lead = [-1 if size is None else size for size in lead]  # -1: a symbolic batch
    padded = ops.pad(scores, [[0, 0]] * len(lead) + [[0, 0], [1, 0]])  # (..., T, K+1)
    padded = ops.reshape(padded, (*lead, k + 1, t))  # (..., K+1, T)
    padded = ops.slice(padded, [0] * len(lead) + [1, 0], (*lead, k, t))  # (..., K, T)
    return ops.reshape(padded, (*lead, t, k))  # (..., T, K)


def causal_memory_mask(segment_length, mem_len, valid_memory_length, document_index=None):
    """Which keys each query may see: valid memory slots and segment positions `<= i`.

    Memory is right-aligned: of the M = `mem_len` slots of row b only the last
    `valid_memory_length[b]` hold real states (fewer than M after a reset or a document start).
    With document boundaries, `document_index[b, i]` counts the document starts in row b up to
    position i: a query sees only keys of its own document, and memory only while no document
    has started before it in the segment.

    Args:
        segment_length: T.
        mem_len: M.
        valid_memory_length: scalar or `(B,)` int, valid memory slots per row.
        document_index: `None`, or `(B, T)` int, non-decreasing along T.

    Returns:
        `(B, T, K)` boolean (B is 1 when neither `valid_memory_length` nor `document_index` has
        rows).
    """
    query = ops.arange(segment_length)[:, None]  # (T, 1)
    key = ops.arange(mem_len + segment_length)[None, :]  # (1, K)
    causal = (key <= mem_len + query)[None]  # (1, T, K)
    valid = ops.reshape(ops.cast(valid_memory_length, "int32"), (-1, 1, 1))  # (B|1, 1, 1)
    mask = ops.logical_and(causal, key[None] >= mem_len - valid)  # (B|1, T, K)
    if document_index is None:
        return mask
    document_index = ops.cast(document_index, "int32")
    # Memory keys come before every start of this segment: document 0 of the row.
    key_document = ops.pad(document_index, [[0, 0], [mem_len, 0]])  # (B, K)
    same_document = document_index[:, :, None] == key_document[:, None, :]  # (B, T, K)
    return ops.logical_and(mask, same_document)


@keras.saving.register_keras_serializable(package="par_xl")
class RelativeAttention(keras.layers.Layer):
    """Relative multi-head attention with Transformer-XL memory (Dai et al. 2019, arXiv 1901.02860).

    Score of query i against key j, per head, with `R` the sinusoidal encoding of the distance
    `M + i - j`, `u` and `v` learned global content and position biases:

        (q_i + u) . k_j  +  (q_i + v) . (W_r R)        scaled by 1 / sqrt(H)

    Keys and values are projected from `[memory; segment]`; queries from the segment only.
    Memory never receives gradients (the caller passes it through `stop_gradient`).

    `position` replaces the position term (`par_xl.layers.positions`): "rotary" scores
    `rot(q_i, M + i) . rot(k_j, j) / sqrt(H)`, queries and keys rotated by their positions in
    `[memory; segment]` (no W_r, u, v); "t5" scores `q_i . k_j / sqrt(H) + b_n[bucket(M + i -
    j)]` with a learned bias per head and distance bucket (`relative_attention_bias`, no W_r,
    u, v). Both depend on the offset `M + i - j` only, as the XL term does.

    Args:
        num_heads: N.
        head_size: H.
        attention_dropout_rate: dropout rate on the attention probabilities.
        kernel_initializer: initializer of the projections and biases.
        position: "xl" (the default, Transformer-XL's), "rotary" (H even) or "t5".

    Call arguments:
        inputs: `(B, T, D)` segment states.
        memory: `(B, M, D)` states of the previous segments, or `None` (M = 0).
        position_encoding: `(K, D)` from `sinusoid_positions(K, D)` (read by "xl" only).
        mask: `(B, T, K)` boolean (B may be 1), from `causal_memory_mask`.
        training: enables attention dropout.

    Returns:
        `(B, T, D)`: the attention output projected back to width D (no residual, no norm).
    """

    def __init__(
        self,
        num_heads,
        head_size,
        attention_dropout_rate=0.0,
        kernel_initializer=None,
        position="xl",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_heads < 1 or head_size < 1:
            raise ValueError(
                f"num_heads and head_size must be positive, received num_heads={num_heads}, "
                f"head_size={head_size}."
            )
        if not 0.0 <= attention_dropout_rate < 1.0:
            raise ValueError(
                f"attention_dropout_rate must be in [0, 1), received {attention_dropout_rate}."
            )
        self.num_heads = num_heads
        self.head_size = head_size
        self.attention_dropout_rate = attention_dropout_rate
        self.position = validate_position(position, head_size)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )
        self.attention_dropout = keras.layers.Dropout(
            attention_dropout_rate, dtype=self.dtype_policy
        )

    def build(self, inputs_shape, *args, **kwargs):
        width = inputs_shape[-1]
        heads = (width, self.num_heads, self.head_size)

        def weight(name, shape):
            return self.add_weight(name=name, shape=shape, initializer=self.kernel_initializer)

        self.query_kernel = weight("query_kernel", heads)  # (D, N, H)
        self.key_kernel = weight("key_kernel", heads)  # (D, N, H)
        self.value_kernel = weight("value_kernel", heads)  # (D, N, H)
        if self.position == "xl":  # in this order: the checkpoints' layout
            self.position_kernel = weight("position_kernel", heads)  # (D, N, H)
            self.content_bias = weight("content_bias", heads[1:])  # u: (N, H)
            self.position_bias = weight("position_bias", heads[1:])  # v: (N, H)
        self.output_kernel = weight("output_kernel", (self.num_heads, self.head_size, width))
        if self.position == "t5":
            self.relative_attention_bias = weight(
                "relative_attention_bias", (T5_BUCKETS, self.num_heads)
            )  # (buckets, N)
        self.built = True

    def call(self, inputs, memory, position_encoding, mask, training=None):
        query, key, value = self.project(inputs, memory)
        attended = self.attend(query, key, value, position_encoding, mask, training)
        return self.project_output(attended)

    def project(self, inputs, memory):
        """Queries of the segment, keys and values of `[memory; segment]`.

        Args:
            inputs: `(B, T, D)`.
            memory: `(B, M, D)` or `None`.

        Returns:
            `(query (B, T, N, H), key (B, K, N, H), value (B, K, N, H))`; the segment's own
            keys and values are the last T of K.
        """
        keys_in = inputs if memory is None else ops.concatenate([memory, inputs], axis=1)
        query = ops.einsum("btd,dnh->btnh", inputs, self.query_kernel)  # (B, T, N, H)
        key = ops.einsum("bkd,dnh->bknh", keys_in, self.key_kernel)  # (B, K, N, H)
        value = ops.einsum("bkd,dnh->bknh", keys_in, self.value_kernel)  # (B, K, N, H)
        return query, key, value

    def attend(self, query, key, value, position_encoding, mask, training=None):
        """Relative attention of `project`'s outputs: per head attended values `(B, T, N, H)`,
        before the output projection."""
        probs = self.attention_probabilities(
            self.scores(query, key, position_encoding), mask[:, None], training
        )  # (B, N, T, K)
        return ops.einsum("bntk,bknh->btnh", probs, value)  # (B, T, N, H)

    def scores(self, query, key, position_encoding):
        """The `(B, N, T, K)` scores of the T queries `(B, T, N, H)` against the K keys `(B, K,
        N, H)` of `[memory; segment]`, with the layer's `position` term, before the mask."""
        segment, keys = query.shape[1], key.shape[1]
        scale = 1.0 / math.sqrt(self.head_size)
        if self.position == "rotary":  # query i at M + i, key j at j
            query = rotate(query, ops.arange(keys - segment, keys))
            key = rotate(key, ops.arange(keys))
            return ops.einsum("btnh,bknh->bntk", query, key) * scale
        if self.position == "t5":
            content = ops.einsum("btnh,bknh->bntk", query, key) * scale
            bias = t5_bias(self.relative_attention_bias, keys - segment, segment, keys)
            return content + ops.cast(bias, content.dtype)[None]  # (N, T, K) per row
        position = ops.einsum("kd,dnh->knh", position_encoding, self.position_kernel)  # (K,N,H)
        content = ops.einsum("btnh,bknh->bntk", query + self.content_bias, key)  # (B, N, T, K)
        positional = ops.einsum("btnh,knh->bntk", query + self.position_bias, position)
        return (content + relative_shift(positional)) * scale

    def attention_probabilities(self, scores, mask, training=None):
        """Softmax over the last axis of `scores` where `mask` (broadcast to them) is True,
        then attention dropout; in the compute dtype."""
        # Softmax in float32 so that mixed precision keeps the masked logits exact.
        scores = ops.where(mask, ops.cast(scores, "float32"), -1e30)
        probs = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        return self.attention_dropout(probs, training=training)

    def project_output(self, attended):
        """`(B, T, N, H)` attended values -> `(B, T, D)`."""
        return ops.einsum("btnh,nhd->btd", attended, self.output_kernel)

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            head_size=self.head_size,
            attention_dropout_rate=self.attention_dropout_rate,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            position=self.position,
        )
        return config
