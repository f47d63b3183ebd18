"""LEAP's recurrent state as pure functions of a small state tuple: state in, focus and a new
state out.

LEAP (`par_xl.layers.leap_attention`) attends through "focused" keys and values: per stream
and head, the averages of all keys and values so far weighted by positive focus weights f,

    focused_k_i = sum_{j <= i} f_j k_j / sum_{j <= i} f_j       (the same for values)

Both sums run over the whole stream (since its last reset or document start), so a stream
carries three sums from segment to segment: `LeapState`, O(1) in the context's length. Two
forms compute the same focus:

- `focus` (training, evaluation, prompt reading): the segment's prefix sums at once, by a
  cumulative sum over T, added to the carried sums; at a document start the sums restart (a
  cumulative sum that restarts, in log2(T) doubling steps).
- `focus_step` (generation): one position, the recurrence `s <- s + f k`.

They agree to float rounding. The functions use `keras.ops` only, on fixed shapes, without side
effects: eager, `tf.function` with or without XLA, `jax.jit`, generation's loop. A `LeapState`
is a NamedTuple, hence a `tf.nest` structure and a JAX pytree. All of it is float32 whatever the
compute dtype: the weights span `e^-2c ... 1` (`c` the rescale, 10), below float16's range.

Shape letters: B streams, T positions, N heads, H head size.

    state = empty_state(batch_size=B, num_heads=N, head_size=H)
    keys, values, state = focus(state, weights, keys, values, document_starts)
        # weights (B, T, N) > 0, keys and values (B, T, N, H); starts (B, T) 0/1 or None
    key, value, state = focus_step(state, weight, key, value, start)
        # weight (B, N), key and value (B, N, H); start (B,) 0/1 or None
"""

from typing import Any, NamedTuple

from keras import ops


class LeapState(NamedTuple):
    """Per stream and head, the focus-weighted sums of a stream's positions since its last
    reset or document start (all zero in an empty stream).

    Fields:
        key_sum: `(B, N, H)` float32, `sum_j f_j k_j`.
        value_sum: `(B, N, H)` float32, `sum_j f_j v_j`.
        weight_sum: `(B, N)` float32, `sum_j f_j`.
    """

    key_sum: Any
    value_sum: Any
    weight_sum: Any


def empty_state(batch_size, num_heads, head_size):
    """A `LeapState` of zeros: a stream with nothing before it."""
    sums = ops.zeros((batch_size, num_heads, head_size), "float32")
    return LeapState(sums, sums, ops.zeros((batch_size, num_heads), "float32"))


def _packed(key_sum, value_sum, weight_sum):
    """`(..., N, 2H + 1)`: the three sums side by side, summed in one pass."""
    return ops.concatenate([key_sum, value_sum, weight_sum[..., None]], axis=-1)


def _unpacked(sums, head_size):
    """`_packed`'s inverse: `(focused keys, focused values, (key, value, weight) sums)`."""
    key_sum, value_sum = sums[..., :head_size], sums[..., head_size : 2 * head_size]
    weight_sum = sums[..., 2 * head_size]
    return key_sum, value_sum, weight_sum


def _restarting_cumsum(values, restarts):
    """Inclusive prefix sums of `values` `(B, L, ...)` along axis 1 that restart at each
    position where `restarts` `(B, L, 1, ...)` is 1 (that position's value included).

    Hillis and Steele's doubling scan (1986): after the step of shift s, each position holds the
    sum since the later of its last restart and s - 1 positions back, with the operator
    `(restart, sum) . (restart', sum') = (restart or restart', sum' + (1 - restart') sum)`. Its
    log2(L) steps only add: no difference of two large sums, whose rounding would swamp a
    document's small ones (LEAP's weights span e^-2c ... 1).
    """
    length = values.shape[1]
    shift = 1
    while shift < length:
        padding = [[0, 0], [shift, 0]] + [[0, 0]] * (len(values.shape) - 2)
        earlier = ops.pad(values[:, :-shift], padding)  # position - shift, 0 before the start
        values = values + (1.0 - restarts) * earlier
        restarts = ops.maximum(restarts, ops.pad(restarts[:, :-shift], padding))
        shift *= 2
    return values


def focus(state, weights, keys, values, document_starts=None):
    """The parallel form: the focused keys and values of a segment's T positions.

    Args:
        state: the `LeapState` before the segment.
        weights: `(B, T, N)` positive focus weights.
        keys, values: `(B, T, N, H)`.
        document_starts: `None`, or `(B, T)` 0/1: the sums restart at a start (the position
            itself included), forgetting the state and the segment before it.

    Returns:
        `(focused keys (B, T, N, H), focused values (B, T, N, H), state after the segment)`,
        float32.
    """
    weights = ops.cast(weights, "float32")[..., None]  # (B, T, N, 1)
    keys, values = ops.cast(keys, "float32"), ops.cast(values, "float32")
    added = _packed(weights * keys, weights * values, weights[..., 0])  # (B, T, N, 2H + 1)
    carried = _packed(*state)[:, None]  # (B, 1, N, 2H + 1)
    if document_starts is None:
        sums = carried + ops.cumsum(added, axis=1)
    else:  # the carried sums as position -1, never a start
        starts = ops.cast(document_starts, "float32")[:, :, None, None]  # (B, T, 1, 1)
        restarts = ops.concatenate([ops.zeros_like(starts[:, :1]), starts], axis=1)
        sums = _restarting_cumsum(ops.concatenate([carried, added], axis=1), restarts)[:, 1:]
    key_sum, value_sum, weight_sum = _unpacked(sums, keys.shape[-1])
    last = LeapState(key_sum[:, -1], value_sum[:, -1], weight_sum[:, -1])
    return key_sum / weight_sum[..., None], value_sum / weight_sum[..., None], last


def focus_step(state, weight, key, value, start=None):
    """The recurrent form: one position's focused key and value, O(1) in the stream's length.

    Args:
        state: the `LeapState` before the position.
        weight: `(B, N)` positive focus weight.
        key, value: `(B, N, H)`.
        start: `None`, or `(B,)` 0/1: a document starts here (the state is forgotten).

    Returns:
        `(focused key (B, N, H), focused value (B, N, H), state after the position)`, float32.
    """
    weight = ops.cast(weight, "float32")  # (B, N)
    if start is not None:  # a restart keeps nothing of the state
        keep = 1.0 - ops.cast(start, "float32")[:, None]  # (B, 1)
        state = LeapState(keep[..., None] * state.key_sum, keep[..., None] * state.value_sum,
                          keep * state.weight_sum)  # fmt: skip
    key_sum = state.key_sum + weight[..., None] * ops.cast(key, "float32")
    value_sum = state.value_sum + weight[..., None] * ops.cast(value, "float32")
    weight_sum = state.weight_sum + weight
    new = LeapState(key_sum, value_sum, weight_sum)
    return key_sum / weight_sum[..., None], value_sum / weight_sum[..., None], new
