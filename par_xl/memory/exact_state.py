"""The exact kNN store as pure functions of its state: state in, results or a new state out.

A stateless forward pass (the model's `call` with its state in variables, `jax.jit`, the while
loop of cached generation) cannot write a memory in place; it threads a `KNNState` through
instead. The functions here use `keras.ops` only, on fixed shapes, with no side effects, so they
run eagerly, in `tf.function` with or without XLA, and under `jax.jit`; a `KNNState` is a
NamedTuple, hence a JAX pytree and a `tf.nest` structure (a `tf.while_loop` variable).
`ExactKNNMemory` (`exact.py`) keeps one in variables and implements the `KNNMemory` interface over
these functions; `par_xl.memory.knn_memory` states the contract (search, then add).

Shape letters: B streams, T tokens per call, N heads, H key and value size, C capacity, k
neighbours.

    state = empty_state(batch_size=B, num_heads=N, capacity=C, key_size=H)
    keys, values, mask = search(state, queries, k)  # (B, T, N, H) -> (B, T, N, k, H) x2, mask
    state = add(state, keys, values, document_starts)  # (B, T, N, H) each, (B, T) 0/1 or None
    state = clear(state, rows)  # (B,) bool, or None for all rows
"""

from typing import Any, NamedTuple

from keras import ops

from par_xl.memory.knn_memory import check_entries, check_neighbors, check_sizes

EPSILON = 1e-12  # floor of the squared norm in `l2_normalize`: zero vectors stay zero


class KNNState(NamedTuple):
    """The exact store of B streams: per stream and head a ring buffer of C (key, value) pairs.

    All heads of a stream advance together. Slot `position[b]` is written next; the valid
    entries of row b are its `length[b]` most recent ones, the slots just before `position[b]`
    (modulo C). Keys are stored L2-normalized when `add` normalizes (the default).

    Fields:
        keys: `(B, N, C, H)` float.
        values: `(B, N, C, H)` float, the keys' dtype.
        position: `(B,)` int32, the next write slot.
        length: `(B,)` int32, the number of valid entries.
    """

    keys: Any
    values: Any
    position: Any
    length: Any


def l2_normalize(x):
    """`x / |x|` along the last axis (`keras.ops`)."""
    squared = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, EPSILON))


def empty_state(batch_size, num_heads, capacity, key_size, dtype="float32"):
    """A `KNNState` with no valid entries: zero keys and values of `dtype`, positions and
    lengths 0."""
    check_sizes(batch_size=batch_size, num_heads=num_heads, capacity=capacity, key_size=key_size)
    store = (batch_size, num_heads, capacity, key_size)
    rows = ops.zeros((batch_size,), "int32")
    return KNNState(ops.zeros(store, dtype), ops.zeros(store, dtype), rows, rows)


def valid_slots(state):
    """`(B, C)` bool: slot s of row b holds one of its `length[b]` most recent entries."""
    capacity = state.keys.shape[2]
    slots = ops.arange(capacity, dtype="int32")[None]  # (1, C)
    position = ops.cast(state.position, "int32")[:, None]  # (B, 1)
    age = (position - 1 - slots + capacity) % capacity  # (B, C), 0 = newest
    return age < ops.cast(state.length, "int32")[:, None]


def nearest(state, queries, k, normalize=True):
    """The slots of the k most similar valid entries, most similar first.

    Args:
        state: a `KNNState`.
        queries: `(B, T, N, H)`; no gradient flows back to them (the choice is discrete).
        k: neighbours per query, in `[1, C]`.
        normalize: L2-normalize the queries (as `add` normalizes the keys).

    Returns:
        `(slots (B, T, N, k) int32, scores (B, T, N, k), mask (B, T, N, k))`, scores in the
        store's dtype; invalid neighbours (a row with fewer than k valid entries) have slot -1
        and score -inf.
    """
    k = check_neighbors(k, state.keys.shape[2])
    _check_entries(state, queries.shape, "queries")
    store = ops.stop_gradient(state.keys)
    queries = ops.cast(_normalized(queries, normalize), store.dtype)
    queries = ops.transpose(queries, (0, 2, 1, 3))  # (B, N, T, H)
    scores = ops.einsum("bnth,bnch->bntc", queries, store)  # (B, N, T, C)
    valid = valid_slots(state)[:, None, None, :]  # (B, 1, 1, C)
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


def search(state, queries, k, normalize=True):
    """The k most similar valid entries per query, most similar first (`nearest`'s entries).

    Returns:
        `(keys (B, T, N, k, H), values (B, T, N, k, H), mask (B, T, N, k))` in the store's
        dtype, without gradients; keys and values are zeros where `mask` is False.
    """
    slots, _, mask = nearest(state, queries, k, normalize)  # (B, T, N, k)
    _, segment, heads, k = slots.shape
    batch = ops.shape(slots)[0]  # a tensor for a symbolic batch
    _, _, capacity, size = state.keys.shape
    # Row (b, n, slot) of the store flattened to (B * N * C, H): one plain gather, in the
    # queries' (B, T, N, k) order. (`take_along_axis` over the (B, N, C, H) store took
    # several times longer on TensorFlow, more than the top-k: benchmarks/results/knn_memory.md.)
    rows = ops.arange(batch, dtype="int32")[:, None] * heads + ops.arange(heads, dtype="int32")
    index = ops.maximum(slots, 0) + (rows * capacity)[:, None, :, None]  # (B, T, N, k)
    index = ops.reshape(index, (-1,))

    def gather(store):
        flat = ops.reshape(ops.stop_gradient(store), (-1, size))  # (B * N * C, H)
        found = ops.reshape(ops.take(flat, index, axis=0), (-1, segment, heads, k, size))
        return ops.where(mask[..., None], found, 0.0)

    return gather(state.keys), gather(state.values), mask


def add(state, keys, values, document_starts=None, normalize=True):
    """The state after appending one entry per token, the oldest entries of full rows evicted.

    Args:
        state: a `KNNState`.
        keys: `(B, T, N, H)`, stored L2-normalized when `normalize`; no gradients.
        values: `(B, T, N, H)`, stored as given; no gradients.
        document_starts: `None`, or `(B, T)` 0/1: a row with a start keeps only the entries
            from its last start on (everything older becomes invalid), as if it had been cleared
            just before that token.
        normalize: L2-normalize the keys.

    Returns:
        The new `KNNState` (same shapes and dtypes).
    """
    _check_entries(state, keys.shape, "keys")
    _check_entries(state, values.shape, "values")
    _, heads, capacity, size = state.keys.shape
    batch = ops.shape(state.keys)[0]  # a tensor for a symbolic batch
    segment = keys.shape[1]
    first = max(0, segment - capacity)  # earlier tokens would be overwritten by later ones
    written = segment - first
    keys = ops.cast(_normalized(keys[:, first:], normalize), state.keys.dtype)
    values = ops.cast(ops.stop_gradient(values[:, first:]), state.values.dtype)
    keys = ops.transpose(keys, (0, 2, 1, 3))  # (B, N, W, H), W = written
    values = ops.transpose(values, (0, 2, 1, 3))  # (B, N, W, H)

    position = ops.cast(state.position, "int32")  # (B,)
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
    flat = (-1, size)
    new_keys = ops.scatter_update(state.keys, indices, ops.reshape(keys, flat))
    new_values = ops.scatter_update(state.values, indices, ops.reshape(values, flat))

    length = ops.minimum(ops.cast(state.length, "int32") + segment, capacity)  # (B,)
    if document_starts is not None:
        document_index = ops.cumsum(ops.cast(document_starts, "int32"), axis=1)  # (B, T)
        last = document_index[:, -1:]  # (B, 1)
        since_start = ops.sum(ops.cast(document_index == last, "int32"), axis=1)  # (B,)
        length = ops.where(last[:, 0] > 0, ops.minimum(since_start, capacity), length)
    return KNNState(new_keys, new_values, (position + segment) % capacity, length)


def clear(state, rows=None):
    """The state with every entry of the rows where `rows` `(B,)` bool is True forgotten (all
    rows when `None`). Only `position` and `length` change; the data stays, unreachable."""
    position = ops.cast(state.position, "int32")
    length = ops.cast(state.length, "int32")
    if rows is None:
        zeros = ops.zeros_like(position)
        return state._replace(position=zeros, length=zeros)
    rows = ops.cast(rows, "bool")  # (B,)
    return state._replace(position=ops.where(rows, 0, position), length=ops.where(rows, 0, length))


def _normalized(x, normalize):
    """`x` without gradients, L2-normalized when `normalize`, in float32 then: a float16 sum of
    squares overflows from |x| ~ 256 on, and its 1e-12 floor would be 0."""
    x = ops.stop_gradient(x)
    return l2_normalize(ops.cast(x, "float32")) if normalize else x


def _check_entries(state, shape, what):
    batch, heads, _, size = state.keys.shape
    check_entries(shape, (batch, heads, size), what)
