"""The recurrent state a PARTransformerXL carries from one segment to the next."""

from typing import NamedTuple


class ModelState(NamedTuple):
    """What `PARTransformerXL.forward` takes and returns besides the segment.

    A NamedTuple of dicts and a tensor: a `tf.nest` structure and a JAX pytree, so it goes
    through `tf.function`, `jax.jit` and `keras.ops.fori_loop` (generation's loop) as it is.

    Attributes:
        xl_memory: `{block name: (B, M, D)}`, one entry per block that keeps XL memory (one
            that may attend, `PARTransformerXL.memory_blocks`): its inputs at the last M
            positions, right-aligned, without gradients; `{}` without memory. Every block has
            the same M.
        valid_length: `(B,)` int32: how many trailing memory slots of each row (stream) hold
            real states; the rest are masked.
        knn: `{block name: KNNState}`, one entry per block that keeps a kNN store (one that
            may use memorizing attention, `PARTransformerXL.knn_blocks`): per row and head the
            keys and values `(B, N, C, H)` of its last C positions, with their ring-buffer
            `position` and valid `length` `(B,)` (`par_xl.memory.exact_state`); `{}` without
            (the default: a state made by hand for a model without kNN memory).
    """

    xl_memory: dict
    valid_length: object
    knn: dict = {}  # never mutated: every new state gets a new dict
