"""Exact kNN memory as model state: a `KNNState` in variables, updated by `exact_state`."""

import keras
from keras import ops

from par_xl.memory import exact_state
from par_xl.memory.exact_state import KNNState
from par_xl.memory.knn_memory import KNNMemory


@keras.saving.register_keras_serializable(package="par_xl")
class ExactKNNMemory(KNNMemory, keras.layers.Layer):
    """kNN memory with exact top-k search, as fixed-shape model state (Wu et al. 2022).

    The store is a `KNNState` (`exact_state.py`) in four non-trainable variables, created at
    construction and written in place with `variable.assign`, like `PARTransformerXL`'s XL
    memory: keys and values `(B, N, C, H)`, and per row the next write slot `position` `(B,)`
    and the number of valid entries `length` `(B,)` (the row's most recent ones). Every method
    is `exact_state`'s function of the same name applied to `state`. So `add` and `search` work
    eagerly, inside `fit` and `tf.function(jit_compile=True)`, and on the JAX backend (through
    `stateless_call`), and the store is saved with the model's weights; `state` and
    `assign_state` hand it to stateless code (a memorizing-attention layer) and take it back.
    Search scores every slot of every row and head,
    `(B, N, T, C)` floats at once: memory grows with T * C, so keep the segment short or the
    capacity moderate (8k slots, T = 32, N = 8, B = 32 is 268 MB of scores).

    See `par_xl.memory.knn_memory` for the contract (search, then add) and the similarity
    (dot product of L2-normalized keys and queries by default).

    Args:
        batch_size: B, the number of streams.
        num_heads: N.
        capacity: C, entries kept per stream and head (`knn_memory_size`).
        key_size: H, the size of queries, keys and values.
        num_neighbors: k returned by `search` (and `call`) when none is given; at most C.
        normalize: L2-normalize keys on `add` and queries on `search`.

    Call arguments (one step of a memorizing-attention layer: `search`, then `add`):
        queries: `(B, T, N, H)`.
        keys: `(B, T, N, H)`, added after the search.
        values: `(B, T, N, H)`, added after the search.
        document_starts: `None`, or `(B, T)` 0/1, passed to `add`.

    Returns:
        `search`'s `(keys (B, T, N, k, H), values (B, T, N, k, H), mask (B, T, N, k))`, the
        entries of earlier calls only; keys and values in the compute dtype.

    Example (`KNNMemory` shows `search` and `add`):
        >>> memory = ExactKNNMemory(batch_size=2, num_heads=4, capacity=1024, key_size=16)
        >>> keys, values, mask = memory(queries, new_keys, new_values)  # doctest: +SKIP
        >>> memory.assign_state(exact_state.clear(memory.state, rows))  # doctest: +SKIP
    """

    def __init__(
        self,
        batch_size,
        num_heads,
        capacity,
        key_size,
        num_neighbors=32,
        normalize=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._set_memory_arguments(
            batch_size, num_heads, capacity, key_size, num_neighbors, normalize
        )
        self.build()

    def build(self, input_shape=None):
        store = (self.batch_size, self.num_heads, self.capacity, self.key_size)

        def state(name, shape, dtype=None):
            # autocast=False: read in float32 under mixed precision, so the store stays exact.
            return self.add_weight(
                name=name,
                shape=shape,
                dtype=dtype,
                initializer="zeros",
                trainable=False,
                autocast=False,
            )

        self.key_store = state("keys", store)  # (B, N, C, H)
        self.value_store = state("values", store)  # (B, N, C, H)
        self.position = state("position", (self.batch_size,), "int32")  # next write slot
        self.length = state("length", (self.batch_size,), "int32")  # valid entries
        self.built = True

    @property
    def state(self):
        """The store as a `KNNState` of the variables' values (for `exact_state`'s functions,
        or a memorizing-attention layer)."""
        variables = (self.key_store, self.value_store, self.position, self.length)
        return KNNState(*(variable.value for variable in variables))

    def assign_state(self, state):
        """Writes a `KNNState` (of this store's shapes, e.g. one returned by `exact_state.add`)
        into the variables."""
        self.key_store.assign(state.keys)
        self.value_store.assign(state.values)
        self.position.assign(state.position)
        self.length.assign(state.length)

    def valid_slots(self):
        """`(B, C)` bool: slot s of row b holds one of its `length[b]` most recent entries."""
        return exact_state.valid_slots(self.state)

    def add(self, keys, values, document_starts=None):
        self.assign_state(
            exact_state.add(self.state, keys, values, document_starts, self.normalize)
        )

    def nearest(self, queries, k=None):
        """The slots of the k most similar valid entries, most similar first.

        Args:
            queries: `(B, T, N, H)`.
            k: neighbours per query; `num_neighbors` when `None`.

        Returns:
            `(slots (B, T, N, k) int32, scores (B, T, N, k) float32, mask (B, T, N, k))`;
            invalid neighbours have slot -1 and score -inf.
        """
        return exact_state.nearest(self.state, queries, self._neighbors(k), self.normalize)

    def search(self, queries, k=None):
        found = exact_state.search(self.state, queries, self._neighbors(k), self.normalize)
        keys, values, mask = found
        return ops.cast(keys, self.compute_dtype), ops.cast(values, self.compute_dtype), mask

    def clear(self, rows=None):
        cleared = exact_state.clear(self.state, rows)
        # Only these change: assigning the unchanged keys and values would copy the whole store.
        self.position.assign(cleared.position)
        self.length.assign(cleared.length)

    def call(self, queries, keys, values, document_starts=None):
        retrieved = self.search(queries)
        self.add(keys, values, document_starts)
        return retrieved

    def compute_output_spec(self, queries, keys, values, document_starts=None):
        batch, segment, heads, size = queries.shape
        shape = (batch, segment, heads, self.num_neighbors)
        return (
            keras.KerasTensor((*shape, size), dtype=self.compute_dtype),
            keras.KerasTensor((*shape, size), dtype=self.compute_dtype),
            keras.KerasTensor(shape, dtype="bool"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(self.memory_config())
        return config
