"""Memorizing attention: Transformer-XL attention plus attention over a kNN memory.

Wu et al. 2022, "Memorizing Transformers" (arXiv 2203.08913), on top of `RelativeAttention`,
whose steps (`project`, `attend`, `project_output`) and weights it reuses unchanged. Shape
letters as in `par_xl.layers.relative_attention` (B, T, M, K = M + T, D, N, H), plus C the
store's capacity and k = `num_neighbors`.

One call, per head n:

1. Local: `RelativeAttention`'s attention of the segment's queries `q (B, T, N, H)` over
   `[XL memory; segment]` with its causal mask: attended values `local (B, T, N, H)`.
2. Retrieved: the store returns, for each (row, query, head), the k stored entries whose keys
   are most similar to `q / |q|`: keys `(B, T, N, k, H)` (unit vectors: the store normalizes
   keys when they are added, the paper's key/query normalization), values `(B, T, N, k, H)`,
   and which of them are valid `(B, T, N, k)`. Each is scored `s_n * (q/|q|) . k_hat`, with no
   position term (an entry may be any distance back), and a softmax over the k gives attended
   values `retrieved (B, T, N, H)`.
   - The scale `s_n = exp(w_n)` is a learned per-head temperature: a cosine lies in [-1, 1],
     so without it the k logits could differ by at most 2 and the softmax would stay almost
     uniform. `w_n` starts at `log sqrt(H)`, which puts the logits on the scale of the local
     attention's `q . k / sqrt(H)` for projections of norm about `sqrt(H)`; the exponential
     keeps the scale positive and makes optimizer steps change it by ratios.
   - Masked neighbours: invalid ones (a row holding fewer than k entries), and every one of a
     query at or after a document start in this segment (`document_starts`), since the store
     then holds only earlier documents, which `add` forgets at the start.
3. Gate: `g_n * retrieved + (1 - g_n) * local`, `g_n = sigmoid(b_n)` learned per head, `b_n`
   starting at 0 (an even mix; training moves each head towards the source that helps it). A
   query with no usable neighbour takes `local` alone (its gate is 0), so with an empty store
   the layer equals `RelativeAttention` with the same weights. Then the shared output
   projection `(B, T, N, H) -> (B, T, D)`.
4. Store: after the search, the keys and values of the segment's own T positions (the last T
   of `project`'s K; the XL memory's M positions were stored when they were a segment) are
   added, without gradients, with `document_starts`. Search, then add: a query never retrieves
   its own segment (the local attention covers it), and the store only ever holds the past.

Gradients reach the projections (through both attentions; the retrieval scores through `q`),
the gate and the scale; never the store, whose entries are constants (the paper's
non-differentiable memory).

Which store runs where (the `knn_state` argument):
- a `KNNState` (`par_xl.memory.exact_state`): exact search as pure functions, returned updated.
  Eager, `tf.function` with or without XLA, `fit`, `jax.jit`, and inside the loop of cached
  generation; the caller keeps the state (e.g. in an `ExactKNNMemory`'s variables, through its
  `state` and `assign_state`).
- a `KNNMemory` object, updated in place and returned as given: an `ExactKNNMemory` (eager,
  `tf.function` with or without XLA) or a `ScannKNNMemory` (host ScaNN for large stores: eager
  on any backend, or a `tf.function` without XLA; never under XLA or `jax.jit`).

Mixed precision: like every float argument of a Keras layer, a `KNNState`'s keys and values are
cast to the compute dtype on the way in, so the state comes back in that dtype; keep it there
(`exact_state.empty_state(..., dtype=layer.compute_dtype)`) to avoid a copy of the store per
call. The retrieval scores, the softmax and the gate are computed in float32.
"""

import math

import keras
from keras import ops

from par_xl.layers.relative_attention import RelativeAttention
from par_xl.memory import exact_state
from par_xl.memory.exact_state import KNNState, l2_normalize
from par_xl.memory.knn_memory import KNNMemory, check_sizes


@keras.saving.register_keras_serializable(package="par_xl")
class MemorizingAttention(RelativeAttention):
    """Relative attention over `[memory; segment]` gated per head with kNN-retrieved memories.

    See the module docstring for the design (scale, gate, masks, what is stored, which store runs
    where). The weights are `RelativeAttention`'s, plus `gate_bias` `(N,)` and
    `log_retrieval_scale` `(N,)` (both float32, never autocast).

    Args (after N and H, by keyword only):
        num_heads: N.
        head_size: H.
        num_neighbors: k, the entries retrieved per query and head; at most the store's C.
        attention_dropout_rate: dropout rate on both attentions' probabilities.
        kernel_initializer: initializer of the projections and position biases.

    Call arguments:
        inputs: `(B, T, D)` segment states.
        memory: `(B, M, D)` XL memory states, or `None` (M = 0).
        position_encoding: `(K, D)` from `sinusoid_positions(K, D)`.
        mask: `(B, T, K)` boolean (B may be 1), from `causal_memory_mask`.
        knn_state: the store, of B rows, N heads and key size H: a `KNNState`, or a
            `KNNMemory` object (normalizing keys).
        training: enables attention dropout.
        document_starts: `None`, or `(B, T)` 0/1: where documents start in the segment.

    Returns:
        `(output (B, T, D), knn_state)`: the attention output projected back to width D (no
        residual, no norm), and the store with the segment added (a new `KNNState`, or the
        same `KNNMemory` object, updated).

    Example:
        >>> layer = MemorizingAttention(num_heads=4, head_size=16, num_neighbors=8)
        >>> state = exact_state.empty_state(2, 4, 1024, 16)  # B=2, N=4, C=1024, H=16
        >>> output, state = layer(x, None, positions, mask, state)  # doctest: +SKIP
    """

    def __init__(self, num_heads, head_size, *, num_neighbors=32, **kwargs):
        super().__init__(num_heads, head_size, **kwargs)
        check_sizes(num_neighbors=num_neighbors)
        self.num_neighbors = int(num_neighbors)
        self._allow_non_tensor_positional_args = True  # `knn_state` may be a KNNMemory object

    def build(self, inputs_shape, *args, **kwargs):
        super().build(inputs_shape)

        def head_weight(name, value):
            return self.add_weight(
                name=name,
                shape=(self.num_heads,),
                initializer=keras.initializers.Constant(value),
                autocast=False,
            )

        self.gate_bias = head_weight("gate_bias", 0.0)  # b: (N,)
        self.log_retrieval_scale = head_weight(
            "log_retrieval_scale", 0.5 * math.log(self.head_size)
        )  # w: (N,)
        self.built = True

    def call(
        self,
        inputs,
        memory,
        position_encoding,
        mask,
        knn_state,
        training=None,
        document_starts=None,
    ):
        self._check_store(knn_state, inputs.shape[0])
        query, key, value = self.project(inputs, memory)  # (B, T, N, H), (B, K, N, H) x2
        local = self.attend(query, key, value, position_encoding, mask, training)  # (B,T,N,H)
        segment = inputs.shape[1]
        new_keys, new_values = key[:, -segment:], value[:, -segment:]  # (B, T, N, H) each
        if isinstance(knn_state, KNNMemory):  # in place; search, then add, in program order
            found = knn_state.search(query, self.num_neighbors)
            knn_state.add(new_keys, new_values, document_starts)
        else:
            found = exact_state.search(knn_state, query, self.num_neighbors)
            knn_state = exact_state.add(knn_state, new_keys, new_values, document_starts)
        retrieved, usable = self.retrieve(query, *found, document_starts, training)
        gate = ops.sigmoid(self.gate_bias) * ops.cast(usable, "float32")  # (B, T, N)
        gate = ops.cast(gate[..., None], self.compute_dtype)  # (B, T, N, 1)
        combined = gate * retrieved + (1 - gate) * local  # (B, T, N, H)
        return self.project_output(combined), knn_state

    def retrieve(self, query, keys, values, valid, document_starts=None, training=None):
        """Attention of the queries over their retrieved entries.

        Args:
            query: `(B, T, N, H)`, as projected (normalized here).
            keys: `(B, T, N, k, H)` retrieved unit keys.
            values: `(B, T, N, k, H)` retrieved values.
            valid: `(B, T, N, k)` bool, the store's mask.
            document_starts: `None`, or `(B, T)` 0/1.
            training: enables attention dropout.

        Returns:
            `(retrieved (B, T, N, H), usable (B, T, N) bool)`: `usable` is False for a query
            with no neighbour left after masking (its `retrieved` is meaningless).
        """
        unit_query = l2_normalize(ops.cast(query, "float32"))  # (B, T, N, H)
        cosine = ops.einsum("btnh,btnkh->btnk", unit_query, ops.cast(keys, "float32"))
        scale = ops.exp(self.log_retrieval_scale)[:, None]  # (N, 1)
        if document_starts is not None:
            # At or after a start in this segment the store holds only earlier documents.
            first_document = ops.cumsum(ops.cast(document_starts, "int32"), axis=1) == 0
            valid = ops.logical_and(valid, first_document[:, :, None, None])  # (B, T, N, k)
        probs = self.attention_probabilities(cosine * scale, valid, training)  # (B, T, N, k)
        values = ops.cast(values, self.compute_dtype)
        retrieved = ops.einsum("btnk,btnkh->btnh", probs, values)  # (B, T, N, H)
        return retrieved, ops.any(valid, axis=-1)

    def _check_store(self, knn_state, batch_size):
        if isinstance(knn_state, KNNMemory):
            if not knn_state.normalize:
                raise ValueError(
                    "knn_state must normalize its keys (normalize=True): the layer scores the "
                    "retrieved keys as unit vectors."
                )
            sizes = (knn_state.batch_size, knn_state.num_heads, knn_state.capacity)
            sizes += (knn_state.key_size,)
        elif isinstance(knn_state, KNNState):
            sizes = tuple(knn_state.keys.shape)
        else:
            raise ValueError(
                f"knn_state must be a KNNState or a KNNMemory, received {type(knn_state).__name__}."
            )
        batch, heads, capacity, size = sizes
        if (heads, size) != (self.num_heads, self.head_size) or batch != (batch_size or batch):
            raise ValueError(
                f"knn_state must hold keys (B={batch_size}, N={self.num_heads}, C, "
                f"H={self.head_size}), received (B, N, C, H) = {sizes}."
            )
        if capacity < self.num_neighbors:
            raise ValueError(
                f"knn_state's capacity must be at least num_neighbors={self.num_neighbors}, "
                f"received capacity={capacity}."
            )

    def compute_output_shape(
        self,
        inputs_shape,
        memory_shape,
        position_encoding_shape,
        mask_shape,
        knn_state_shape,
        *args,
        **kwargs,
    ):
        return inputs_shape, knn_state_shape

    def compute_output_spec(self, inputs, memory, position_encoding, mask, knn_state, **kwargs):
        output = keras.KerasTensor(inputs.shape, dtype=self.compute_dtype)
        if isinstance(knn_state, KNNMemory):
            return output, knn_state
        return output, KNNState(*(keras.KerasTensor(x.shape, dtype=x.dtype) for x in knn_state))

    def get_config(self):
        config = super().get_config()
        config.update(num_neighbors=self.num_neighbors)
        return config
