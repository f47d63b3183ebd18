"""Exact kNN memory: the store is model state, searched by one matrix product and a top-k."""

import keras
from keras import ops

from par_xl.memory.knn_memory import KNNMemory

EPSILON = 1e-12  # floor of the squared norm in `l2_normalize`: zero vectors stay zero


def l2_normalize(x):
    """`x / |x|` along the last axis (`keras.ops`)."""
    squared = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, EPSILON))


@keras.saving.register_keras_serializable(package="par_xl")
class ExactKNNMemory(KNNMemory, keras.layers.Layer):
    """kNN memory with exact top-k search, as fixed-shape model state (Wu et al. 2022).

    The store is four non-trainable variables, created at construction and written in place
    with `variable.assign` of `keras.ops` results, like `PARTransformerXL`'s XL memory: keys and
    values `(B, N, C, H)`, and per row the next write slot `position` `(B,)` and the number of
    valid entries `length` `(B,)` (the row's most recent ones). So `add` and `search` work
    eagerly, inside `fit` and `tf.function(jit_compile=True)`, and on the JAX backend, and the
    store is saved with the model's weights. Search scores every slot of every row and head,
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

    Example:
        >>> memory = ExactKNNMemory(batch_size=2, num_heads=4, capacity=1024, key_size=16)
        >>> memory.add(keys, values)  # (2, T, 4, 16) each  # doctest: +SKIP
        >>> keys, values, mask = memory.search(queries, k=8)  # doctest: +SKIP
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
            return self.add_weight(
                name=name, shape=shape, dtype=dtype, initializer="zeros", trainable=False
            )

        self.key_store = state("keys", store)  # (B, N, C, H)
        self.value_store = state("values", store)  # (B, N, C, H)
        self.position = state("position", (self.batch_size,), "int32")  # next write slot
        self.length = state("length", (self.batch_size,), "int32")  # valid entries
        self.built = True

    def valid_slots(self):
        """`(B, C)` bool: slot s of row b holds one of its `length[b]` most recent entries."""
        slots = ops.arange(self.capacity, dtype="int32")[None]  # (1, C)
        position = ops.convert_to_tensor(self.position)[:, None]  # (B, 1)
        age = (position - 1 - slots + self.capacity) % self.capacity  # (B, C), 0 = newest
        return age < ops.convert_to_tensor(self.length)[:, None]

    def add(self, keys, values, document_starts=None):
        self._check_entries(keys.shape, "keys")
        self._check_entries(values.shape, "values")
        batch, heads, capacity = self.batch_size, self.num_heads, self.capacity
        segment = keys.shape[1]
        first = max(0, segment - capacity)  # earlier tokens would be overwritten by later ones
        written = segment - first
        keys = ops.stop_gradient(ops.cast(keys[:, first:], self.key_store.dtype))
        values = ops.stop_gradient(ops.cast(values[:, first:], self.value_store.dtype))
        if self.normalize:
            keys = l2_normalize(keys)
        keys = ops.transpose(keys, (0, 2, 1, 3))  # (B, N, W, H), W = written
        values = ops.transpose(values, (0, 2, 1, 3))  # (B, N, W, H)

        position = ops.convert_to_tensor(self.position)  # (B,)
        offsets = ops.arange(first, segment, dtype="int32")  # (W,)
        slots = (position[:, None] + offsets[None]) % capacity  # (B, W)
        shape = (batch, heads, written)
        indices = ops.stack(
            [
                ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None, None], shape),
                ops.broadcast_to(ops.arange(heads, dtype="int32")[None, :, None], shape),
                ops.broadcast_to(slots[:, None, :], shape),
            ],
            axis=-1,
        )  # (B, N, W, 3): row, head, slot
        indices = ops.reshape(indices, (-1, 3))  # (B * N * W, 3)
        flat = (-1, self.key_size)
        self.key_store.assign(ops.scatter_update(self.key_store, indices, ops.reshape(keys, flat)))
        self.value_store.assign(
            ops.scatter_update(self.value_store, indices, ops.reshape(values, flat))
        )

        length = ops.minimum(ops.convert_to_tensor(self.length) + segment, capacity)  # (B,)
        if document_starts is not None:
            document_index = ops.cumsum(ops.cast(document_starts, "int32"), axis=1)  # (B, T)
            last = document_index[:, -1:]  # (B, 1)
            since_start = ops.sum(ops.cast(document_index == last, "int32"), axis=1)  # (B,)
            length = ops.where(last[:, 0] > 0, ops.minimum(since_start, capacity), length)
        self.position.assign((position + segment) % capacity)
        self.length.assign(ops.cast(length, "int32"))

    def nearest(self, queries, k=None):
        """The slots of the k most similar valid entries, most similar first.

        Args:
            queries: `(B, T, N, H)`.
            k: neighbours per query; `num_neighbors` when `None`.

        Returns:
            `(slots (B, T, N, k) int32, scores (B, T, N, k) float32, mask (B, T, N, k))`;
            invalid neighbours have slot -1 and score -inf.
        """
        k = self._neighbors(k)
        self._check_entries(queries.shape, "queries")
        queries = ops.cast(ops.stop_gradient(queries), self.key_store.dtype)
        if self.normalize:
            queries = l2_normalize(queries)
        queries = ops.transpose(queries, (0, 2, 1, 3))  # (B, N, T, H)
        scores = ops.einsum("bnth,bnch->bntc", queries, self.key_store)  # (B, N, T, C)
        valid = self.valid_slots()[:, None, None, :]  # (B, 1, 1, C)
        scores = ops.where(valid, scores, float("-inf"))
        top_scores, slots = ops.top_k(scores, k)  # (B, N, T, k)
        mask = top_scores > float("-inf")
        slots = ops.where(mask, ops.cast(slots, "int32"), -1)
        order = (0, 2, 1, 3)
        return (
            ops.transpose(slots, order),
            ops.transpose(top_scores, order),
            ops.transpose(mask, order),
        )  # (B, T, N, k) each

    def search(self, queries, k=None):
        slots, _, mask = self.nearest(queries, k)  # (B, T, N, k)
        batch, segment, heads, k = slots.shape
        index = ops.transpose(ops.maximum(slots, 0), (0, 2, 1, 3))  # (B, N, T, k)
        index = ops.reshape(index, (batch, heads, segment * k, 1))  # (B, N, T * k, 1)

        def gather(store):
            found = ops.take_along_axis(store, index, axis=2)  # (B, N, T * k, H)
            found = ops.reshape(found, (batch, heads, segment, k, self.key_size))
            found = ops.transpose(found, (0, 2, 1, 3, 4))  # (B, T, N, k, H)
            found = ops.where(mask[..., None], found, 0.0)
            return ops.cast(found, self.compute_dtype)

        return gather(self.key_store), gather(self.value_store), mask

    def clear(self, rows=None):
        if rows is None:
            zeros = ops.zeros((self.batch_size,), "int32")
            self.position.assign(zeros)
            self.length.assign(zeros)
            return
        rows = ops.cast(rows, "bool")  # (B,)
        self.position.assign(ops.where(rows, 0, ops.convert_to_tensor(self.position)))
        self.length.assign(ops.where(rows, 0, ops.convert_to_tensor(self.length)))

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
