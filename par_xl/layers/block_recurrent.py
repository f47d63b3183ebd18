"""The block-recurrent cell: Transformer-XL attention plus S state vectors carried across blocks.

Hutchins et al. 2022, "Block-Recurrent Transformers" (arXiv 2203.07852; google-research/meliad,
`transformer/transformer_layer.py` and `transformer_base.py`), on top of `RelativeAttention`,
whose steps (`project`, `attend`, `project_output`) and weights it reuses unchanged. Shape
letters as in `par_xl.layers.relative_attention` (B, T, M, K = M + T, D, N, H), plus S the state
vectors (`num_states`), W the block (`block_size`) and F the LSTM gate's hidden width
(`inner_size`).

A segment of T positions is read in blocks of W (the last one shorter when W does not divide
T). The state `c (B, S, D)` enters block j as `c_j`; per head n:

1. Vertical (the tokens): each position's query attends, as A's does, over `[XL memory;
   segment]` with its causal mask (`local`), and with a query of its own (`cross_query_kernel`)
   over the S vectors of `c_j` (`read`, no mask, no position term). The output is both
   projected back to D and summed: `local W_o + read W_c`, meliad's projection of the two heads'
   concatenation. A block's tokens see only the state of the blocks before it: causal.
2. Horizontal (the state): `s = LayerNorm(c_j) + P`, P `(S, D)` learned state position
   embeddings (so that each vector can learn to ask for something else), gives the state's
   queries, keys and values and a second query; the state attends over itself (the keys and
   values the tokens read) and with the second query over the block's own W tokens (their keys
   and values of step 1). The two results, concatenated over the heads `(B, S, 2N, H)`, update
   the state through a gate, instead of a residual:
   - `gate="fixed"` (meliad's `recurrent_gate_type="bias"` with `recurrent_skip_ffn`, the
     paper's "fixed:skip"): `c_{j+1} = g * c_j + (1 - g) * (W_u [self; read] + b_u)` with
     `g = sigmoid(b_g)` `(D,)` learned, no MLP.
   - `gate="lstm"` (`recurrent_gate_type="lstm"` with `recurrent_single_gate`, "lstm:single"):
     `h = relu(W_h [self; read] + b_h)` `(F,)`, `z = tanh(W_z h + b_z)`, `i = sigmoid(W_i h +
     b_i - 1)`, `f = sigmoid(W_f h + b_f + 1)`, `c_{j+1} = f * c_j + i * z`: an LSTM cell's
     update, biased to remember.
   No dropout in this direction (meliad runs it in its "pure" mode).
3. Empty streams: a stream with nothing before it starts from `initial_state` `(S, D)`, a
   learned weight (`par_xl.layers.block_recurrent_state`: why the carried state has a length).

Document starts (`document_starts`): a position at or after a start in its block reads the
initial state, not `c_j` (which holds the earlier document), and the block's update starts from
the initial state and reads only the positions of its last document: the state of the next
block is that of a stream in which the document began. Attention over `[XL memory; segment]`
is the model's mask's business, as for A.

Gradients: within a segment the state is an ordinary tensor, so a block's loss reaches the
updates of the blocks before it (backpropagation through the T / W updates of the segment, as
meliad's through the windows of its training sequence). Across segments the carried state is a
constant, as the XL memory is: with one block per segment (W >= T) the update's own weights
(its queries, gate, MLP) would get no gradient at all; choose W with T / W >= 2.
"""

import math
from typing import NamedTuple

import keras
from keras import ops

from par_xl.layers import block_recurrent_state
from par_xl.layers.block_recurrent_state import BlockRecurrentState
from par_xl.layers.relative_attention import RelativeAttention

GATES = ("fixed", "lstm")


def validate_recurrent(recurrent_states, recurrent_block_size, recurrent_gate):
    """Raises ValueError, naming the argument first (the model's and the flags' names), for a
    block-recurrent setting that cannot work."""
    for name, value in (("recurrent_states", recurrent_states),
                        ("recurrent_block_size", recurrent_block_size)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, received {value!r}.")
    if recurrent_gate not in GATES:
        raise ValueError(f"recurrent_gate must be one of {GATES}, received {recurrent_gate!r}.")


class _Projected(NamedTuple):
    """The state's projections, each `(B, S, N, H)`."""

    query: object
    key: object
    value: object
    cross_query: object


@keras.saving.register_keras_serializable(package="par_xl")
class BlockRecurrentAttention(RelativeAttention):
    """Relative attention over `[memory; segment]` plus attention over S recurrent state
    vectors, which are updated after every block of W positions (Hutchins et al. 2022).

    See the module docstring for the design (both directions, the gates, empty streams,
    document starts, gradients). The weights are `RelativeAttention`'s, plus the tokens'
    `cross_query_kernel` `(D, N, H)` and `cross_output_kernel` `(N, H, D)`, the state's
    `state_norm` (a LayerNormalization), `state_position_embeddings` and `initial_state`
    `(S, D)`, `state_{query,key,value,cross_query}_kernel` `(D, N, H)`, and the gate's: "fixed"
    `update_kernel` `(2N, H, D)`, `update_bias` and `gate_bias` `(D,)`; "lstm" `hidden_kernel`
    `(2N, H, F)`, `hidden_bias` `(F,)`, `{update,input_gate,forget_gate}_kernel` `(F, D)` and
    their biases `(D,)`.

    Args (after N and H, by keyword only):
        num_heads: N.
        head_size: H.
        num_states: S, the state vectors per stream.
        block_size: W, positions per block: the state is updated after each.
        gate: "fixed" or "lstm" (the module docstring).
        inner_size: F, the LSTM gate's hidden width (default 4 D); unused by "fixed".
        attention_dropout_rate: dropout rate on the tokens' attention probabilities (both).
        kernel_initializer: initializer of the projections and position biases.

    Call arguments:
        inputs: `(B, T, D)` segment states.
        memory: `(B, M, D)` XL memory states, or `None` (M = 0).
        position_encoding: `(K, D)` from `sinusoid_positions(K, D)`.
        mask: `(B, T, K)` boolean (B may be 1), from `causal_memory_mask`.
        state: the streams' `BlockRecurrentState` (B rows, S vectors of width D) before the
            segment, or `None`: streams with nothing before them, and only the output is
            returned.
        training: enables attention dropout.
        document_starts: `None`, or `(B, T)` 0/1: where documents start in the segment.

    Returns:
        `(output (B, T, D), state after the segment)`, or the output alone when `state` is
        `None`: the attention output projected back to width D (no residual, no norm).

    Example:
        >>> layer = BlockRecurrentAttention(4, 16, num_states=8, block_size=32)
        >>> state = block_recurrent_state.empty_state(2, 8, 64)  # B=2, S=8, D=64
        >>> output, state = layer(x, None, positions, mask, state)  # doctest: +SKIP
    """

    def __init__(self, num_heads, head_size, *, num_states=16, block_size=16, gate="fixed",
                 inner_size=None, **kwargs):  # fmt: skip
        super().__init__(num_heads, head_size, **kwargs)
        for name, value in (("num_states", num_states), ("block_size", block_size),
                            ("inner_size", 1 if inner_size is None else inner_size)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, received {value!r}.")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, received {gate!r}.")
        self.num_states = num_states
        self.block_size = block_size
        self.gate = gate
        self.inner_size = inner_size

    def build(self, inputs_shape, *args, **kwargs):
        super().build(inputs_shape)
        width = inputs_shape[-1]
        heads = (width, self.num_heads, self.head_size)
        both = (2 * self.num_heads, self.head_size)  # [self; read] over the heads
        small = keras.initializers.RandomNormal(stddev=0.1)  # meliad's for gate biases

        def weight(name, shape, initializer=None):
            return self.add_weight(
                name=name, shape=shape, initializer=initializer or self.kernel_initializer
            )

        self.cross_query_kernel = weight("cross_query_kernel", heads)  # (D, N, H)
        self.cross_output_kernel = weight("cross_output_kernel", (*heads[1:], width))  # (N,H,D)
        self.state_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, name="state_norm", dtype=self.dtype_policy
        )
        self.state_norm.build((None, self.num_states, width))
        self.state_position_embeddings = weight(
            "state_position_embeddings", (self.num_states, width),
            keras.initializers.RandomNormal(stddev=1.0),
        )  # fmt: skip  # P: (S, D), on the scale of the normed state
        self.initial_state = weight("initial_state", (self.num_states, width), small)  # (S, D)
        for name in ("query", "key", "value", "cross_query"):
            setattr(self, f"state_{name}_kernel", weight(f"state_{name}_kernel", heads))
        if self.gate == "fixed":
            self.update_kernel = weight("update_kernel", (*both, width))  # (2N, H, D)
            self.update_bias = weight("update_bias", (width,), "zeros")
            self.gate_bias = weight("gate_bias", (width,), small)  # b_g: (D,)
        else:
            inner = self.inner_size or 4 * width
            self.hidden_kernel = weight("hidden_kernel", (*both, inner))  # (2N, H, F)
            self.hidden_bias = weight("hidden_bias", (inner,), "zeros")
            for name in ("update", "input_gate", "forget_gate"):
                setattr(self, f"{name}_kernel", weight(f"{name}_kernel", (inner, width)))
                setattr(self, f"{name}_bias", weight(f"{name}_bias", (width,), small))
        self.built = True

    def call(self, inputs, memory, position_encoding, mask, state=None, training=None,
             document_starts=None):  # fmt: skip
        segment = inputs.shape[1]
        query, key, value = self.project(inputs, memory)  # (B, T, N, H), (B, K, N, H) x2
        local = self.attend(query, key, value, position_encoding, mask, training)  # (B,T,N,H)
        cross_query = ops.einsum("btd,dnh->btnh", inputs, self.cross_query_kernel)  # (B,T,N,H)
        token_keys, token_values = key[:, -segment:], value[:, -segment:]  # (B, T, N, H) each
        rows = ops.zeros_like(inputs[:, :1, :1])  # (B, 1, 1): broadcasts to the batch
        initial = ops.cast(self.initial_state, self.compute_dtype)[None] + rows  # (B, S, D)
        fresh = state is None
        if fresh:
            state = BlockRecurrentState(initial, ops.zeros_like(inputs[:, 0, 0], "int32"))
        vectors = block_recurrent_state.current(state, initial[0])  # (B, S, D)
        starts = None
        if document_starts is not None:
            starts = ops.cast(document_starts, "int32")  # (B, T)
            from_start = self._projected(initial)  # the initial state's, (B, S, N, H) x4
        reads = []
        for begin in range(0, segment, self.block_size):
            end = min(begin + self.block_size, segment)
            projected = self._projected(vectors)
            read = self._attend(cross_query[:, begin:end], projected.key, projected.value,
                                training=training)  # fmt: skip  # (B, w, N, H)
            token_mask = None
            if starts is not None:
                document = ops.cumsum(starts[:, begin:end], axis=1)  # (B, w)
                read_initial = self._attend(cross_query[:, begin:end], from_start.key,
                                            from_start.value, training=training)  # fmt: skip
                read = ops.where((document > 0)[:, :, None, None], read_initial, read)
                restarted = document[:, -1] > 0  # (B,): the update starts from the initial
                projected = _Projected(*(ops.where(restarted[:, None, None, None], a, b)
                                         for a, b in zip(from_start, projected)))  # fmt: skip
                vectors = ops.where(restarted[:, None, None], initial, vectors)
                token_mask = document == document[:, -1:]  # (B, w): its last document's
            reads.append(read)
            vectors = self.update(vectors, projected, token_keys[:, begin:end],
                                  token_values[:, begin:end], token_mask)  # fmt: skip
        read = ops.concatenate(reads, axis=1)  # (B, T, N, H)
        output = self.project_output(local) + ops.einsum(
            "btnh,nhd->btd", read, self.cross_output_kernel
        )  # (B, T, D)
        if fresh:
            return output
        if starts is None:
            restarted, count = ops.zeros_like(state.length, "bool"), segment
        else:
            index = ops.cumsum(starts, axis=1)  # (B, T)
            restarted = index[:, -1] > 0
            count = ops.sum(ops.cast(index == index[:, -1:], "int32"), axis=1)  # since the start
        length = block_recurrent_state.advanced(state.length, count, restarted)
        return output, BlockRecurrentState(ops.cast(vectors, "float32"), length)

    def _projected(self, vectors):
        """`(B, S, D)` state -> its queries, keys, values and cross queries `(B, S, N, H)`."""
        normed = self.state_norm(vectors) + ops.cast(
            self.state_position_embeddings, self.compute_dtype
        )  # (B, S, D)
        return _Projected(
            *(ops.einsum("bsd,dnh->bsnh", normed, getattr(self, f"state_{name}_kernel"))
              for name in _Projected._fields)
        )  # fmt: skip

    def _attend(self, queries, keys, values, mask=None, training=None):
        """Scaled dot-product attention of `queries (B, Q, N, H)` over `keys`, `values`
        `(B, S, N, H)` (no position term) -> `(B, Q, N, H)`; `mask` broadcasts to the scores
        `(B, N, Q, S)`."""
        scores = ops.einsum("bqnh,bsnh->bnqs", queries, keys) * (1.0 / math.sqrt(self.head_size))
        if mask is None:
            mask = ops.ones((1, 1, 1, 1), "bool")
        probabilities = self.attention_probabilities(scores, mask, training)  # (B, N, Q, S)
        return ops.einsum("bnqs,bsnh->bqnh", probabilities, values)

    def update(self, vectors, projected, token_keys, token_values, token_mask=None):
        """The state after one block: `vectors (B, S, D)` and their `_projected`, the block's
        W tokens' keys and values `(B, W, N, H)`, which of them it reads `(B, W)` (`None`: all)
        -> `(B, S, D)` in the compute dtype (the gate in float32)."""
        attended = self._attend(projected.query, projected.key, projected.value)  # (B,S,N,H)
        mask = None if token_mask is None else token_mask[:, None, None, :]  # (B, 1, 1, W)
        read = self._attend(projected.cross_query, token_keys, token_values, mask)  # (B,S,N,H)
        both = ops.concatenate([attended, read], axis=2)  # (B, S, 2N, H)
        previous = ops.cast(vectors, "float32")
        if self.gate == "fixed":
            update = ops.einsum("bsmh,mhd->bsd", both, self.update_kernel) + self.update_bias
            keep = ops.sigmoid(ops.cast(self.gate_bias, "float32"))  # (D,)
            new = keep * previous + (1.0 - keep) * ops.cast(update, "float32")
        else:
            hidden = ops.einsum("bsmh,mhf->bsf", both, self.hidden_kernel) + self.hidden_bias
            hidden = ops.relu(hidden)  # (B, S, F)

            def dense(name, offset=0.0):
                kernel, bias = getattr(self, f"{name}_kernel"), getattr(self, f"{name}_bias")
                return ops.cast(ops.matmul(hidden, kernel) + bias, "float32") + offset

            candidate = ops.tanh(dense("update"))  # z
            admit = ops.sigmoid(dense("input_gate", -1.0))  # i, biased to admit little
            keep = ops.sigmoid(dense("forget_gate", 1.0))  # f, biased to remember
            new = keep * previous + admit * candidate
        return ops.cast(new, self.compute_dtype)

    @staticmethod
    def update_macs(width, num_states, block_tokens, gate, inner_size):
        """Matrix multiply-adds of one state update per stream: the four projections of the S
        vectors, their attention over themselves and over the block's tokens (scores and
        values), and the gate's products."""
        d, s = width, num_states
        macs = 4 * s * d * d + 2 * s * s * d + 2 * s * block_tokens * d
        if gate == "fixed":
            return macs + s * 2 * d * d
        inner = inner_size or 4 * d
        return macs + s * 2 * d * inner + 3 * s * inner * d

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def compute_output_spec(self, inputs, memory, position_encoding, mask, state=None,
                            training=None, document_starts=None):  # fmt: skip
        output = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if state is None:
            return output
        return output, BlockRecurrentState(
            *(keras.KerasTensor(x.shape, dtype=x.dtype) for x in state)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            num_states=self.num_states,
            block_size=self.block_size,
            gate=self.gate,
            inner_size=self.inner_size,
        )
        return config
