"""kNN memory searched by ScaNN (Guo et al. 2020, arXiv 1908.10396) on the host.

The store is numpy, per row (stream) and head, with the same ring-buffer layout and validity
rule as `ExactKNNMemory`; each row with enough valid entries has one ScaNN searcher per head
(tree partitioning + asymmetric hashing + exact re-ordering, dot-product distance).

Update policy (measured in `benchmarks/knn_memory.py`, see benchmarks/results/knn_memory.md)
-------------------------------------------------------------------------------
- Every `add` writes the store and upserts the written slots into the row's searchers: a slot
  already indexed (the evicted entry it held) is updated in place, a new one is inserted. A
  searcher therefore always holds exactly the row's valid entries, and a search sees every
  entry added before it. An upsert costs ~20 us per entry (16-28 ms per 1,024), a rebuild
  seconds (4 s at 65k entries).
- Upserts keep the partition (k-means centroids) and the hashing codebooks of the build, which
  go stale as keys drift during training (at 65k, one turnover of drifted keys took recall@32
  from 0.94 to 0.70; a rebuild restored it); so a row's searchers are rebuilt from its valid
  entries once `rebuild_ratio` times as many entries were written since the build as the build
  held. While a row fills this doubles the indexed size at each rebuild; once it is full it
  rebuilds once per turnover of the store. Either way a rebuild costs at most the building of
  `1 / rebuild_ratio` entries per written entry.
- Rows with fewer than `min_index_size` valid entries are searched exactly (numpy): a tree over
  a few thousand entries is no faster (at 8k, ScaNN searched 1.0-1.4x faster than exact), and
  ScaNN needs enough points to train its partition.
- `clear(rows)`, or a document start in `add`, drops the row's searchers; the row is searched
  exactly until it has `min_index_size` entries again.

Where it runs
-------------
ScaNN is host code. `add`, `search` and `clear` work eagerly on any backend, and inside a
`tf.function` without XLA through `tf.numpy_function` (stateful, so TensorFlow keeps them in
program order). They cannot run inside an XLA program (`jit_compile=True`, or a `jax.jit`
trace): a training step that uses this backend must be run without XLA, or split around the
search (compile what comes before and after it). `ExactKNNMemory` has no such limit.
"""

import math

import numpy as np

from par_xl.memory.knn_memory import KNNMemory
from par_xl.runtime.native_logs import quiet_native_logs

EPSILON = 1e-12  # as `par_xl.memory.exact_state.EPSILON`


def l2_normalize(x):
    """`x / |x|` along the last axis (numpy)."""
    squared = np.sum(np.square(x), axis=-1, keepdims=True)
    return x / np.sqrt(np.maximum(squared, EPSILON))


def _in_tf_graph(x):
    """Whether `x` is a symbolic TensorFlow tensor (inside a `tf.function` trace)."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, tf.Tensor) and not tf.executing_eagerly()


class ScannKNNMemory(KNNMemory):
    """kNN memory with one ScaNN searcher per stream and head (Wu et al. 2022).

    Same contract as `ExactKNNMemory` (see `par_xl.memory.knn_memory`), approximately: the
    returned entries are valid entries of the store, ranked by their exact score, but some of
    the true k nearest may be missing (recall below 1). Not a Keras layer: its state lives on
    the host; `get_state` / `set_state` save and restore it (numpy arrays), searchers are
    rebuilt on `set_state`.

    Args:
        batch_size: B, the number of streams.
        num_heads: N.
        capacity: C, entries kept per stream and head (`knn_memory_size`).
        key_size: H, the size of queries, keys and values.
        num_neighbors: k returned by `search` when none is given; at most C.
        normalize: L2-normalize keys on `add` and queries on `search`.
        min_index_size: rows with fewer valid entries are searched exactly; at least 16 (the
            asymmetric hashing trains 16 centres per block).
        rebuild_ratio: rebuild a row's searchers when this many times their built size has
            been written since (see the module docstring).
        num_leaves: partitions of the tree, or `None` for `round(sqrt(n))` of the n entries at
            each build.
        leaves_to_search: partitions searched per query (at most all of them). A fixed count
            with `round(sqrt(n))` partitions makes the search cost grow as `sqrt(n)`: 64 gave
            recall@32 0.94 at n = 65,536 and 0.90 at 262,144 on text-like keys.
        reorder: candidates re-scored exactly after the hashed scoring (at least k are).
        dimensions_per_block: dimensions per asymmetric-hashing block (2 is ScaNN's usual).
        anisotropic_threshold: ScaNN's anisotropic quantization threshold (for unit vectors,
            0.2 is its documented choice).
        training_sample_size: entries sampled to train the partition at a build.
        training_iterations: k-means iterations of the partition.
        parallel: split each searcher's queries in batches of 256 over ScaNN's threads (one
            per core); segments of at most 256 tokens are searched in one thread either way.

    Example (`KNNMemory` shows `search` and `add`):
        >>> memory = ScannKNNMemory(batch_size=2, num_heads=4, capacity=65536, key_size=64)
        >>> np.savez(path, **memory.get_state())  # beside a checkpoint  # doctest: +SKIP
        >>> memory.set_state(np.load(path))  # rebuilds the searchers  # doctest: +SKIP
    """

    def __init__(
        self,
        batch_size,
        num_heads,
        capacity,
        key_size,
        num_neighbors=32,
        normalize=True,
        min_index_size=4096,
        rebuild_ratio=1.0,
        num_leaves=None,
        leaves_to_search=64,
        reorder=256,
        dimensions_per_block=2,
        anisotropic_threshold=0.2,
        training_sample_size=65536,
        training_iterations=8,
        parallel=True,
    ):
        self._set_memory_arguments(
            batch_size, num_heads, capacity, key_size, num_neighbors, normalize
        )
        if min_index_size < 16:  # ScaNN's hashing trains 16 centres per block
            raise ValueError(f"min_index_size must be at least 16, received {min_index_size}.")
        if rebuild_ratio <= 0:
            raise ValueError(f"rebuild_ratio must be positive, received {rebuild_ratio}.")
        if leaves_to_search < 1:
            raise ValueError(f"leaves_to_search must be positive, received {leaves_to_search}.")
        if num_leaves is not None and num_leaves < 1:
            raise ValueError(f"num_leaves must be positive or None, received {num_leaves}.")
        self.min_index_size = int(min_index_size)
        self.rebuild_ratio = float(rebuild_ratio)
        self.num_leaves = num_leaves
        self.leaves_to_search = int(leaves_to_search)
        self.reorder = int(reorder)
        self.dimensions_per_block = int(dimensions_per_block)
        self.anisotropic_threshold = float(anisotropic_threshold)
        self.training_sample_size = int(training_sample_size)
        self.training_iterations = int(training_iterations)
        self.parallel = bool(parallel)

        store = (self.batch_size, self.num_heads, self.capacity, self.key_size)
        self._keys = np.zeros(store, "float32")  # (B, N, C, H)
        self._values = np.zeros(store, "float32")  # (B, N, C, H)
        self._position = np.zeros(self.batch_size, "int64")  # next write slot
        self._length = np.zeros(self.batch_size, "int64")  # valid entries (the newest)
        # Per row: its searchers (ScaNN's pybind `ScannNumpy`, one per head) or None, and the
        # datapoint index <-> slot maps they share (a build numbers the valid slots in order; an
        # upsert returns the datapoints it wrote: a slot keeps its own, a new slot gets one).
        self._searchers = [None] * self.batch_size
        self._index_of_slot = np.full((self.batch_size, self.capacity), -1, "int64")
        self._slot_of_index = np.zeros((self.batch_size, self.capacity), "int64")
        self._built_size = np.zeros(self.batch_size, "int64")
        self._written_since_build = np.zeros(self.batch_size, "int64")
        self.build_count = 0  # searcher (re)builds, for tests and benchmarks

    # The interface.

    def add(self, keys, values, document_starts=None):
        self._check_entries(keys.shape, "keys")
        self._check_entries(values.shape, "values")
        if _in_tf_graph(keys):
            return self._host_call(self._add_numpy, [keys, values, document_starts])
        self._add_numpy(*self._numpy_arguments(keys, values, document_starts))

    def search(self, queries, k=None):
        k = self._neighbors(k)
        self._check_entries(queries.shape, "queries")
        if _in_tf_graph(queries):
            import tensorflow as tf

            keys, values, mask = tf.numpy_function(
                lambda q: self._search_numpy(q, k),
                [queries],
                [tf.float32, tf.float32, tf.bool],
                stateful=True,
                name="scann_knn_search",
            )
            shape = (*queries.shape, k)  # (B, T, N, H, k)
            keys.set_shape(shape[:3] + (k, shape[3]))
            values.set_shape(shape[:3] + (k, shape[3]))
            mask.set_shape(shape[:3] + (k,))
            return keys, values, mask
        from keras import ops

        found = self._search_numpy(self._numpy_arguments(queries)[0], k)
        return tuple(ops.convert_to_tensor(x) for x in found)

    def clear(self, rows=None):
        if rows is not None and _in_tf_graph(rows):
            return self._host_call(self._clear_numpy, [rows])
        self._clear_numpy(None if rows is None else self._numpy_arguments(rows)[0])

    def nearest(self, queries, k=None):
        """As `ExactKNNMemory.nearest`, with numpy arrays in and out (eager only)."""
        k = self._neighbors(k)
        self._check_entries(queries.shape, "queries")
        return self._nearest_numpy(self._numpy_arguments(queries)[0], k)

    # State.

    def valid_slots(self):
        """`(B, C)` bool: slot s of row b holds one of its `length[b]` most recent entries."""
        slots = np.arange(self.capacity)[None]
        age = (self._position[:, None] - 1 - slots) % self.capacity
        return age < self._length[:, None]

    def get_state(self):
        """The store as numpy arrays: keys, values `(B, N, C, H)`, position, length `(B,)`."""
        return dict(
            keys=self._keys.copy(),
            values=self._values.copy(),
            position=self._position.copy(),
            length=self._length.copy(),
        )

    def set_state(self, state):
        """Restores `get_state()`'s arrays and rebuilds the searchers from them."""
        for name, array in (("keys", self._keys), ("values", self._values)):
            if np.shape(state[name]) != array.shape:
                raise ValueError(
                    f"state[{name!r}] must have shape {array.shape}, received "
                    f"{np.shape(state[name])}."
                )
        self._keys[...] = state["keys"]
        self._values[...] = state["values"]
        self._position[...] = state["position"]
        self._length[...] = state["length"]
        for row in range(self.batch_size):
            self._drop(row)
            self._maintain(row)

    def get_config(self):
        return dict(
            **self.memory_config(),
            min_index_size=self.min_index_size,
            rebuild_ratio=self.rebuild_ratio,
            num_leaves=self.num_leaves,
            leaves_to_search=self.leaves_to_search,
            reorder=self.reorder,
            dimensions_per_block=self.dimensions_per_block,
            anisotropic_threshold=self.anisotropic_threshold,
            training_sample_size=self.training_sample_size,
            training_iterations=self.training_iterations,
            parallel=self.parallel,
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def indexed_rows(self):
        """`(B,)` bool: which rows are searched by ScaNN (the others exactly)."""
        return np.array([searchers is not None for searchers in self._searchers])

    # Host side.

    def _numpy_arguments(self, *arguments):
        from keras import ops

        return [None if x is None else np.asarray(ops.convert_to_numpy(x)) for x in arguments]

    def _host_call(self, function, arguments):
        """Runs `function` on numpy copies of `arguments` inside a TensorFlow graph."""
        import tensorflow as tf

        present = [x for x in arguments if x is not None]

        def run(*values):
            values = iter(values)
            function(*[None if x is None else next(values) for x in arguments])
            return np.int32(0)

        return tf.numpy_function(run, present, tf.int32, stateful=True, name="scann_knn_update")

    def _add_numpy(self, keys, values, document_starts=None):
        keys = np.asarray(keys, "float32")
        values = np.asarray(values, "float32")
        segment = keys.shape[1]
        first = max(0, segment - self.capacity)  # earlier tokens would be overwritten
        keys, values = keys[:, first:], values[:, first:]
        if self.normalize:
            keys = l2_normalize(keys)
        offsets = np.arange(first, segment)
        starts_row = np.zeros(self.batch_size, bool)
        length = np.minimum(self._length + segment, self.capacity)
        if document_starts is not None:
            document_index = np.cumsum(np.asarray(document_starts, "int64"), axis=1)  # (B, T)
            last = document_index[:, -1]
            since_start = np.sum(document_index == last[:, None], axis=1)
            starts_row = last > 0
            length = np.where(starts_row, np.minimum(since_start, self.capacity), length)
        slots = (self._position[:, None] + offsets) % self.capacity  # (B, W)
        rows = np.arange(self.batch_size)[:, None, None]
        heads = np.arange(self.num_heads)[None, :, None]
        self._keys[rows, heads, slots[:, None]] = keys.transpose(0, 2, 1, 3)  # (B, N, W, H)
        self._values[rows, heads, slots[:, None]] = values.transpose(0, 2, 1, 3)
        for row in range(self.batch_size):
            if starts_row[row]:
                self._drop(row)  # its searchers hold entries of the previous document
            elif self._searchers[row] is not None:
                self._upsert(row, slots[row])
        self._position = (self._position + segment) % self.capacity
        self._length = length.astype("int64")
        for row in range(self.batch_size):
            self._maintain(row)

    def _clear_numpy(self, rows=None):
        rows = np.ones(self.batch_size, bool) if rows is None else np.asarray(rows, bool)
        self._position[rows] = 0
        self._length[rows] = 0
        for row in np.flatnonzero(rows):
            self._drop(row)

    def _nearest_numpy(self, queries, k):
        queries = np.asarray(queries, "float32")
        if self.normalize:
            queries = l2_normalize(queries)
        batch, segment, heads, _ = queries.shape
        slots = np.full((batch, segment, heads, k), -1, "int32")
        scores = np.full((batch, segment, heads, k), -np.inf, "float32")
        exact_rows = ~self.indexed_rows()
        valid = self.valid_slots() if exact_rows.any() else None
        for row in range(batch):
            candidates = np.flatnonzero(valid[row]) if exact_rows[row] else None  # (n,)
            for head in range(heads):
                query = queries[row, :, head]  # (T, H)
                if candidates is None:
                    found, found_scores = self._search_index(row, head, query, k)
                else:
                    found, found_scores = self._search_exact(row, head, query, k, candidates)
                slots[row, :, head, : found.shape[1]] = found  # (T, k'), most similar first
                scores[row, :, head, : found.shape[1]] = found_scores
        return slots, scores, slots >= 0

    def _search_numpy(self, queries, k):
        slots, _, mask = self._nearest_numpy(queries, k)
        index = np.maximum(slots, 0)
        rows = np.arange(self.batch_size)[:, None, None, None]
        heads = np.arange(self.num_heads)[None, None, :, None]
        invalid = ~mask

        def gather(store):
            found = store[rows, heads, index]  # (B, T, N, k, H), a new array
            found[invalid] = 0.0
            return found

        return gather(self._keys), gather(self._values), mask

    def _search_exact(self, row, head, query, k, candidates):
        """Brute force over `candidates` `(n,)`, the valid slots of one row, for one head:
        slots and scores `(T, min(k, n))`, most similar first."""
        scores = query @ self._keys[row, head, candidates].T  # (T, n)
        if candidates.size > k:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (T, k), unordered
            scores = np.take_along_axis(scores, top, axis=1)
        else:
            top = np.broadcast_to(np.arange(candidates.size), scores.shape)
        order = np.argsort(-scores, axis=1, kind="stable")  # the top k only
        top = np.take_along_axis(top, order, axis=1)
        return candidates[top], np.take_along_axis(scores, order, axis=1)

    def _search_index(self, row, head, query, k):
        """ScaNN search of one row and head: slots and scores `(T, k)`, most similar first;
        slot -1 and score -inf where ScaNN found fewer than k (it pads with NaN distances).

        ScaNN's final distances are its exact re-ordering's: float32 dot products of the query
        with the stored float keys (upserts keep them current), sorted best first, so they are
        the memory's scores as they are (`test_scann_scores_are_exact_and_sorted` pins this).
        """
        indices, distances = self._searchers[row][head].search_batched(
            query, k, max(self.reorder, k), -1, self.parallel, 256
        )  # (T, k) datapoint indices and dot products
        found = ~np.isnan(distances)
        slots = np.where(found, self._slot_of_index[row][indices], -1)
        return slots, np.where(found, distances, -np.inf)

    def _drop(self, row):
        self._searchers[row] = None
        self._index_of_slot[row] = -1
        self._built_size[row] = 0
        self._written_since_build[row] = 0

    def _maintain(self, row):
        """Builds or rebuilds the row's searchers when the policy says so."""
        length = self._length[row]
        if self._searchers[row] is None:
            if length >= self.min_index_size:
                self._build(row)
        elif self._written_since_build[row] >= self.rebuild_ratio * self._built_size[row]:
            self._build(row)

    def _build(self, row):
        import scann

        quiet_native_logs()  # ScaNN's C++ INFO line at every build (par_xl.runtime.native_logs)
        slots = np.flatnonzero(self.valid_slots()[row])  # (n,)
        size = slots.size
        leaves = self.num_leaves or max(1, round(math.sqrt(size)))
        leaves = min(leaves, size)
        searchers = []
        for head in range(self.num_heads):
            database = self._keys[row, head, slots]  # (n, H), datapoint i is slots[i]
            builder = scann.scann_ops_pybind.builder(database, self.num_neighbors, "dot_product")
            builder = builder.tree(
                num_leaves=leaves,
                num_leaves_to_search=min(self.leaves_to_search, leaves),
                training_sample_size=min(size, self.training_sample_size),
                training_iterations=self.training_iterations,
            )
            builder = builder.score_ah(
                self.dimensions_per_block,
                anisotropic_quantization_threshold=self.anisotropic_threshold,
            )
            # Float32 re-ordering: the final distances are exact dot products (`_search_index`).
            builder = builder.reorder(
                max(self.reorder, self.num_neighbors), quantize=scann.ReorderType.FLOAT32
            )
            # The pybind searcher itself: the Python wrapper's docid list and dict (per head,
            # kept by Python loops at each upsert) would repeat the row's slot maps.
            searchers.append(builder.build().searcher)
        self._drop(row)
        self._searchers[row] = searchers
        self._index_of_slot[row, slots] = np.arange(size)
        self._slot_of_index[row, :size] = slots
        self._built_size[row] = size
        self.build_count += 1

    def _upsert(self, row, slots):
        """Writes the store's entries at `slots` into the row's searchers."""
        # A slot's datapoint is updated in place; a slot without one gets a new datapoint.
        indices = [None if i < 0 else i for i in self._index_of_slot[row, slots].tolist()]
        for head, searcher in enumerate(self._searchers[row]):
            database = self._keys[row, head, slots]  # (W, H)
            upserted = searcher.upsert(indices, database, slots.size)  # datapoints, (W,)
        self._index_of_slot[row, slots] = upserted  # the same for every head
        self._slot_of_index[row, upserted] = slots
        self._written_since_build[row] += slots.size
