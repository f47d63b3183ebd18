"""Sliding-window attention with T5's relative bias (meliad's Transformer-XL with a window).

Shape letters as in `par_xl.layers.relative_attention` (B, T, M, K, D, N, H), plus W the
window.
"""

import keras
from keras import ops

from par_xl.layers.positions import t5_bias
from par_xl.layers.relative_attention import RelativeAttention


def _windows(x, chunk, chunks):
    """The keys of each chunk of queries: `(B, C + n C, ...)` -> `(B, n, 2 C, ...)`, chunk c
    getting positions `[c C, c C + 2 C)`: the chunk before it and its own."""
    blocks = ops.reshape(x, (-1, chunks + 1, chunk, *x.shape[2:]))  # (B, n + 1, C, ...)
    return ops.concatenate([blocks[:, :-1], blocks[:, 1:]], axis=2)


@keras.saving.register_keras_serializable(package="par_xl")
class WindowAttention(RelativeAttention):
    """Causal attention over a sliding window of the W positions before each query, across the
    segment boundary, with a learned T5 bias (google-research/meliad's Transformer-XL with a
    window; Raffel et al. 2020, arXiv 1910.10683, for the bias).

    Query i sees itself and exactly the W positions before it, those of the segment and of the
    memory, where the block's mask lets it (valid memory slots, its own document): the mask is
    `causal_memory_mask`'s, narrowed to the window. Score per head:

        q_i . k_j / sqrt(H)  +  b_n[bucket(distance)]         distance = 0 ... W

    `bucket` is T5's (`par_xl.layers.positions.relative_position_buckets`).

    The window's keys and values of the previous segment are those of the block's XL memory:
    the layer reads the last `min(W, M)` memory slots and projects them with the segment, so a
    model with M >= W carries exactly the window's cache in its XL memory, under the memory's
    rules for state, checkpoints, document starts and replicas (`par_xl.models.state`). With M
    < W the first `W - M` positions of a segment see fewer than W predecessors (M + i).

    Cost per query: with `W >= T` one pass over `min(W, M) + T` keys; with `W < T` the segment
    is cut into chunks of W queries, each scored against its own chunk and the W keys before
    it (2W keys: linear in T).

    Args:
        num_heads: N.
        head_size: H.
        window: W >= 1, the predecessors each position sees.
        attention_dropout_rate: dropout rate on the attention probabilities.
        kernel_initializer: initializer of the projections and the bias.

    Call arguments:
        inputs: `(B, T, D)` segment states.
        memory: `(B, M, D)` the block's XL memory, or `None` (M = 0).
        position_encoding: unused (the block's sinusoids, for the other attentions).
        mask: `(B, T, M + T)` boolean (B may be 1), from `causal_memory_mask`.
        training: enables attention dropout.

    Returns:
        `(B, T, D)`: the attention output projected back to width D (no residual, no norm).
    """

    def __init__(self, num_heads, head_size, *, window, **kwargs):
        position = kwargs.pop("position", "t5")
        if position != "t5":
            raise ValueError(f"WindowAttention's position is 't5', received {position!r}.")
        super().__init__(num_heads, head_size, position="t5", **kwargs)
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, received {window!r}.")
        self.window = window

    def call(self, inputs, memory, position_encoding, mask, training=None):
        mem_len = 0 if memory is None else memory.shape[1]
        read = min(self.window, mem_len)  # the memory slots the window can reach
        if 0 < read < mem_len:
            memory = memory[:, mem_len - read :]
        query, key, value = self.project(inputs, memory if read else None)  # keys: read + T
        if self.window >= inputs.shape[1]:
            attended = self._attend_whole(query, key, value, mask[:, :, mem_len - read :],
                                          training)  # fmt: skip
        else:
            attended = self._attend_chunks(query, key, value, mask, mem_len, read, training)
        return self.project_output(attended)

    def _attend_whole(self, query, key, value, mask, training):
        """`W >= T`: the T queries over all `read + T` keys, the window cut from `mask`
        `(B, T, read + T)`."""
        segment, keys = query.shape[1], key.shape[1]
        distance = keys - segment + ops.arange(segment)[:, None] - ops.arange(keys)[None, :]
        visible = ops.logical_and(mask, (distance <= self.window)[None])  # (B, T, read + T)
        probs = self.attention_probabilities(
            self.scores(query, key, None), visible[:, None], training
        )  # (B, N, T, read + T)
        return ops.einsum("bntk,bknh->btnh", probs, value)

    def _attend_chunks(self, query, key, value, mask, mem_len, read, training):
        """`W < T`: chunks of W queries, each over the 2W keys `[previous chunk; its own]` of
        the padded `[W memory slots; segment]`; `mask` is the block's `(B, T, M + T)`."""
        window, segment = self.window, query.shape[1]
        chunks = -(-segment // window)  # n
        extra = chunks * window - segment  # queries padded to whole chunks
        keys_padding = [[0, 0], [window - read, extra], [0, 0], [0, 0]]
        key = _windows(ops.pad(key, keys_padding), window, chunks)  # (B, n, 2W, N, H)
        value = _windows(ops.pad(value, keys_padding), window, chunks)
        query = ops.pad(query, [[0, 0], [0, extra], [0, 0], [0, 0]])
        query = ops.reshape(query, (-1, chunks, window, *query.shape[2:]))  # (B, n, W, N, H)
        content = ops.einsum("bcqnh,bcknh->bncqk", query, key) / (self.head_size**0.5)
        bias = t5_bias(self.relative_attention_bias, window, window, 2 * window)  # (N, W, 2W)
        scores = content + ops.cast(bias, content.dtype)[None, :, None]  # (B, N, n, W, 2W)
        # Query i's key b (of 2W) is `[W memory slots; segment]` position (i // W) W + b,
        # i.e. column M + (i // W) W + b of the mask padded with W hidden columns before it
        # (and the padded queries' columns after it).
        padded = ops.pad(mask, [[0, 0], [0, 0], [window, extra]])  # (B, T, W + M + T + extra)
        rows = ops.arange(segment)
        columns = mem_len + (rows // window * window)[:, None] + ops.arange(2 * window)[None]
        flat = ops.reshape(padded, (-1, segment * padded.shape[2]))  # (B, T (W + M + nW))
        visible = ops.take(flat, rows[:, None] * padded.shape[2] + columns, axis=1)  # (B,T,2W)
        visible = ops.pad(visible, [[0, 0], [0, extra], [0, 0]])
        visible = ops.reshape(visible, (-1, chunks, window, 2 * window))  # (B, n, W, 2W)
        local = ops.arange(window)[:, None] <= ops.arange(2 * window)[None]  # distance <= W
        visible = ops.logical_and(visible, local[None, None])
        probs = self.attention_probabilities(scores, visible[:, None], training)
        attended = ops.einsum("bncqk,bcknh->bcqnh", probs, value)  # (B, n, W, N, H)
        attended = ops.reshape(attended, (-1, chunks * window, *attended.shape[3:]))
        return attended[:, :segment]

    def get_config(self):
        config = super().get_config()
        config.update(window=self.window)
        return config
