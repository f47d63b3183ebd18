"""The kNN memory of a Memorizing Transformer (Wu et al. 2022, arXiv 2203.08913): the interface.

Shape letters (as in `par_xl.layers.relative_attention`, plus the memory's own):
    B streams (batch rows), T tokens per call, N heads, H key and value size,
    C capacity (`knn_memory_size`, entries per stream and head), k neighbours per query.

What a memory holds
-------------------
For every stream b and head n, a ring buffer of the last C (key, value) pairs added, oldest
evicted first. All heads of a stream advance together: a row has one write position and one
count of valid entries, and its valid entries are always its most recent ones (right-aligned,
like the XL memory's `valid_memory_length`). `clear(rows)` and a document start inside `add`
make a row's older entries invalid without touching the data.

Similarity
----------
The dot product. With `normalize=True` (the default, as in the paper) keys are L2-normalized
when they are added and queries when they search, so the ranking is by cosine similarity and the
returned keys are unit vectors; values are kept as given. With `normalize=False` the caller
normalizes (or not) and the ranking is the raw inner product.

The contract: search, then add
------------------------------
`search` sees exactly the entries of earlier `add` calls, never those of the call's own segment:
a memorizing-attention layer searches with the segment's queries, attends locally to the segment
(and the XL memory) as usual, then adds the segment's keys and values. Within a compiled step
the order holds because both methods read and write the same state: TensorFlow orders the
variable reads and writes in program order, JAX threads the state through.

Backends: `ExactKNNMemory` (top-k by matrix product in `keras.ops`; the store is model state, so
it runs under `fit`, `jit_compile=True` and JAX) and `ScannKNNMemory` (ScaNN on the host; eager,
or inside a non-XLA `tf.function` through `tf.numpy_function`). `backends.create_knn_memory`
picks one by name; this interface imports neither. The exact store also exists as pure
functions of a `KNNState` (`exact_state.py`), which `ExactKNNMemory` wraps, for stateless
code: `jax.jit`, a model's `call`, generation loops.
"""

import numpy as np


class KNNMemory:
    """What every kNN memory provides: `add`, `search`, `clear` (after meliad's `MemoryLayer`).

    Attributes (set by `_set_memory_arguments`):
        batch_size: B, the number of streams.
        num_heads: N.
        capacity: C, entries kept per stream and head.
        key_size: H, the size of keys, queries and values.
        num_neighbors: k used when `search` is given none.
        normalize: L2-normalize keys on `add` and queries on `search`.

    Example (one step of a memorizing layer, any backend):
        >>> memory = create_knn_memory("exact", batch_size=2, num_heads=4, capacity=1024,
        ...                            key_size=16)  # doctest: +SKIP
        >>> keys, values, mask = memory.search(queries, k=8)  # (2, T, 4, 16)  # doctest: +SKIP
        >>> memory.add(new_keys, new_values)  # (2, T, 4, 16) each  # doctest: +SKIP
    """

    def add(self, keys, values, document_starts=None):
        """Appends one entry per token, evicting the oldest ones of full rows. No gradients.

        Args:
            keys: `(B, T, N, H)`.
            values: `(B, T, N, H)`.
            document_starts: `None`, or `(B, T)` 0/1: a row with a start keeps only the entries
                from its last start on (everything older becomes invalid), as if it had been
                cleared just before that token.
        """
        raise NotImplementedError

    def search(self, queries, k=None):
        """The k most similar valid entries per query, most similar first.

        Args:
            queries: `(B, T, N, H)`.
            k: neighbours per query, at most C; `num_neighbors` when `None`.

        Returns:
            `(keys (B, T, N, k, H), values (B, T, N, k, H), mask (B, T, N, k))`: `mask` is
            False where a row holds fewer than k valid entries; such keys and values are zeros.
        """
        raise NotImplementedError

    def clear(self, rows=None):
        """Forgets every entry of the rows where `rows` `(B,)` bool is True; of all rows when
        `rows` is `None` (a new epoch, a new evaluation)."""
        raise NotImplementedError

    def _set_memory_arguments(
        self, batch_size, num_heads, capacity, key_size, num_neighbors, normalize
    ):
        check_sizes(
            batch_size=batch_size,
            num_heads=num_heads,
            capacity=capacity,
            key_size=key_size,
            num_neighbors=num_neighbors,
        )
        if num_neighbors > capacity:
            raise ValueError(
                f"num_neighbors must be at most capacity, received num_neighbors={num_neighbors}, "
                f"capacity={capacity}."
            )
        self.batch_size = int(batch_size)
        self.num_heads = int(num_heads)
        self.capacity = int(capacity)
        self.key_size = int(key_size)
        self.num_neighbors = int(num_neighbors)
        self.normalize = bool(normalize)

    def memory_config(self):
        """The constructor arguments shared by every backend."""
        return dict(
            batch_size=self.batch_size,
            num_heads=self.num_heads,
            capacity=self.capacity,
            key_size=self.key_size,
            num_neighbors=self.num_neighbors,
            normalize=self.normalize,
        )

    def _neighbors(self, k):
        return check_neighbors(self.num_neighbors if k is None else k, self.capacity)

    def _check_entries(self, shape, what):
        check_entries(shape, (self.batch_size, self.num_heads, self.key_size), what)


def check_sizes(**sizes):
    """Raises a ValueError naming the first of `sizes` that is not a positive integer."""
    for name, value in sizes.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, received {value!r}.")


def check_neighbors(k, capacity):
    """`k` as an int, if it is in `[1, capacity]`; a ValueError otherwise."""
    k = int(k)
    if not 1 <= k <= capacity:
        raise ValueError(f"k must be in [1, capacity={capacity}], received {k}.")
    return k


def check_entries(shape, store, what):
    """Raises a ValueError unless `shape` is `(B, T, N, H)` for the `store` sizes `(B, N, H)`
    (any T; unknown sizes pass)."""
    batch, heads, size = store
    expected = (batch, None, heads, size)
    if len(shape) != 4 or any(None not in (s, e) and s != e for s, e in zip(shape, expected)):
        raise ValueError(
            f"{what} must have shape (B={batch}, T, N={heads}, H={size}), received {tuple(shape)}."
        )
