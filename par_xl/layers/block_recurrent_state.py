"""The block-recurrent cell's state as pure functions of a small state tuple.

The block-recurrent cell (`par_xl.layers.block_recurrent`, letter R) carries S state vectors
per stream from block to block and from segment to segment. A stream that has read nothing
since its start, a reset or a document start holds no state of its own: it starts from the
layer's learned initial state, a weight, not a tensor of the stream. So the carried state is
the vectors plus how many positions they have read (`length`); `length == 0` means "empty: use
the initial state", whatever the vectors hold. All zeros, what `empty_state` gives and what
`reset_state` and a branch that passes the state over a document start write, is the empty
state.

The functions use `keras.ops` only, on fixed shapes, without side effects: eager,
`tf.function` with or without XLA, `jax.jit`. A `BlockRecurrentState` is a NamedTuple, hence a
`tf.nest` structure and a JAX pytree. The vectors are float32 whatever the compute dtype (the
layer casts them on the way in), like the XL memory's variables.

Shape letters: B streams, S state vectors, D width.

    state = empty_state(batch_size=B, num_states=S, width=D)
    vectors = current(state, initial)  # (B, S, D): the stream's, or initial (S, D) if empty
    state = forget(state, rows)        # (B,) bool: those rows empty
"""

from typing import Any, NamedTuple

from keras import ops

# `length` saturates here: a stream that reads for ever keeps a positive count.
MAX_LENGTH = 2**30


class BlockRecurrentState(NamedTuple):
    """The state vectors of B streams and how much each has read.

    Fields:
        vectors: `(B, S, D)` float32, the state after the stream's last block.
        length: `(B,)` int32, the positions read since the stream's start, reset or last
            document start (at most `MAX_LENGTH`); 0: empty, the layer's initial state applies.
    """

    vectors: Any
    length: Any


def empty_state(batch_size, num_states, width):
    """A `BlockRecurrentState` of zeros: B streams with nothing before them."""
    for name, value in (("batch_size", batch_size), ("num_states", num_states), ("width", width)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, received {value!r}.")
    return BlockRecurrentState(
        ops.zeros((batch_size, num_states, width), "float32"), ops.zeros((batch_size,), "int32")
    )


def current(state, initial):
    """`(B, S, D)`: each row's vectors, or `initial` `(S, D)` in a row that is empty; in the
    dtype of `initial`."""
    vectors = ops.cast(state.vectors, initial.dtype)
    started = ops.reshape(ops.cast(state.length, "int32") > 0, (-1, 1, 1))  # (B, 1, 1)
    return ops.where(started, vectors, initial[None])


def forget(state, rows):
    """The state with the rows where `rows` `(B,)` bool is True emptied (all zeros)."""
    rows = ops.cast(rows, "bool")
    return BlockRecurrentState(
        ops.where(rows[:, None, None], ops.zeros_like(state.vectors), state.vectors),
        ops.where(rows, ops.zeros_like(state.length), state.length),
    )


def advanced(length, read, restarted):
    """`(B,)` int32 `length` after a call: `read` `(B,)` positions more, or only those when the
    row `restarted` `(B,)` bool at a document start; at most `MAX_LENGTH`."""
    length = ops.where(restarted, 0, ops.cast(length, "int32")) + ops.cast(read, "int32")
    return ops.minimum(length, MAX_LENGTH)
