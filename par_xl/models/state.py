"""The recurrent state a PARTransformerXL carries from one segment to the next."""

from typing import NamedTuple


class ModelState(NamedTuple):
    """What `PARTransformerXL.forward` takes and returns besides the segment.

    A NamedTuple of a dict and a tensor: a `tf.nest` structure and a JAX pytree, so it goes
    through `tf.function`, `jax.jit` and `keras.ops.fori_loop` (generation's loop) as it is.

    Attributes:
        xl_memory: `{block name: (B, M, D)}`, one entry per block that keeps XL memory (one
            that may attend, `PARTransformerXL.memory_blocks`): its inputs at the last M
            positions, right-aligned, without gradients; `{}` without memory. Every block has
            the same M.
        valid_length: `(B,)` int32: how many trailing memory slots of each row (stream) hold
            real states; the rest are masked.
    """

    xl_memory: dict
    valid_length: object
