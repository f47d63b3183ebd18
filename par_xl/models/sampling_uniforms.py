"""The uniforms that decide a sample: a hash of (seed, step, row), not a generator's stream.

Each new token's draw (`generation.draw`) takes one uniform in [0, 1) per row. It is a pure
function of the sample's seed, the token's step and the row: MurmurHash3 (x86, 32-bit, hash
seed 0; Appleby 2011) of the four 32-bit words (seed low, seed high, step, row), its top 24 bits
divided by 2^24, so a float32 that integer arithmetic gives exactly on every backend. With no
generator state to carry, the sampling loop computes each step's uniforms where it needs them,
with or without XLA, on TensorFlow and JAX, and in an exported SavedModel (the same ops, traced
into it, run without par_xl); row b of a batch draws what row b of any other batch size draws
with that seed, so a prompt sampled alone and as row 0 of a batch gives the same tokens.
"""

import numpy as np
from keras import ops

_C1, _C2 = 0xCC9E2D51, 0x1B873593  # MurmurHash3_x86_32's block multipliers
_F1, _F2 = 0x85EBCA6B, 0xC2B2AE35  # and its finalizer's


def seed_words(seed):
    """A seed (any Python or NumPy integer; taken modulo 2^64) as `(2,)` uint32: low, high."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, received {seed!r}.")
    seed = int(seed) % 2**64
    return np.array([seed & 0xFFFFFFFF, seed >> 32], "uint32")


def uniforms(seed, step, batch_size):
    """The uniforms of new token `step` for rows 0..B-1.

    Args:
        seed: `(2,)` uint32, `seed_words(seed)` (or the same split in-graph).
        step: int scalar, the new token's index in the sample (0 for the first).
        batch_size: B (a tensor for a symbolic batch).

    Returns:
        `(B,)` float32 in [0, 1), multiples of 2^-24.
    """
    seed = ops.cast(seed, "uint32")
    rows = ops.cast(ops.arange(batch_size, dtype="int32"), "uint32")  # (B,)
    words = [seed[0], seed[1], ops.cast(step, "uint32"), rows]
    hash_ = ops.zeros_like(rows)
    for word in words:
        hash_ = _mix(hash_, word)
    hash_ = _finalize(ops.bitwise_xor(hash_, _u32(4 * len(words))))  # the length in bytes
    top = ops.cast(ops.right_shift(hash_, _u32(8)), "float32")  # 24 bits: exact in float32
    return top * (1.0 / 2**24)


def _u32(value):
    return ops.convert_to_tensor(np.uint32(value))


def _rotate_left(x, bits):
    return ops.bitwise_or(ops.left_shift(x, _u32(bits)), ops.right_shift(x, _u32(32 - bits)))


def _mix(hash_, word):
    """One 4-byte block into the hash (uint32 arithmetic, wrapping)."""
    word = ops.multiply(_rotate_left(ops.multiply(word, _u32(_C1)), 15), _u32(_C2))
    hash_ = _rotate_left(ops.bitwise_xor(hash_, word), 13)
    return ops.add(ops.multiply(hash_, _u32(5)), _u32(0xE6546B64))


def _finalize(hash_):
    """MurmurHash3's `fmix32`: every input bit reaches every output bit."""
    hash_ = ops.bitwise_xor(hash_, ops.right_shift(hash_, _u32(16)))
    hash_ = ops.multiply(hash_, _u32(_F1))
    hash_ = ops.bitwise_xor(hash_, ops.right_shift(hash_, _u32(13)))
    hash_ = ops.multiply(hash_, _u32(_F2))
    return ops.bitwise_xor(hash_, ops.right_shift(hash_, _u32(16)))
