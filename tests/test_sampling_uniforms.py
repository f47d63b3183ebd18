"""par_xl.models.sampling_uniforms: the uniforms are MurmurHash3 of (seed, step, row), exactly,
on every backend and under XLA; uniform; and a row draws the same whatever the batch size."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from par_xl.models.sampling_uniforms import seed_words, uniforms

MASK = 0xFFFFFFFF


def murmur3_32(words):
    """MurmurHash3_x86_32 (hash seed 0) of little-endian 32-bit words, in Python integers."""

    def rotate(x, bits):
        return ((x << bits) | (x >> (32 - bits))) & MASK

    hash_ = 0
    for word in words:
        word = rotate(word * 0xCC9E2D51 & MASK, 15) * 0x1B873593 & MASK
        hash_ = (rotate(hash_ ^ word, 13) * 5 + 0xE6546B64) & MASK
    hash_ ^= 4 * len(words)
    hash_ ^= hash_ >> 16
    hash_ = hash_ * 0x85EBCA6B & MASK
    hash_ ^= hash_ >> 13
    hash_ = hash_ * 0xC2B2AE35 & MASK
    return hash_ ^ hash_ >> 16


def reference_uniforms(seed, num_tokens, row=0):
    """The documented uniforms of one row: the hash's top 24 bits / 2^24, step by step."""
    low, high = seed % 2**64 & MASK, seed % 2**64 >> 32
    return [(murmur3_32([low, high, step, row]) >> 8) / 2**24 for step in range(num_tokens)]


def test_the_reference_is_murmur3():
    # Published MurmurHash3_x86_32 values (seed 0): "", ff ff ff ff, 21 43 65 87.
    assert murmur3_32([]) == 0
    assert murmur3_32([0xFFFFFFFF]) == 0x76293B50
    assert murmur3_32([0x87654321]) == 0xF55B516B


@pytest.mark.parametrize("seed", [0, 1, 2**32 + 5, 2**63 - 1, -1])
def test_uniforms_are_the_hash_of_seed_step_and_row(seed):
    words = seed_words(seed)
    got = np.stack([ops.convert_to_numpy(uniforms(words, step, 5)) for step in range(4)])
    expected = np.array([reference_uniforms(seed, 4, row) for row in range(5)]).T
    np.testing.assert_array_equal(got, expected.astype("float32"))
    compiled = tf.function(uniforms, jit_compile=True)  # the same bits under XLA
    np.testing.assert_array_equal(compiled(words, tf.constant(3), tf.constant(5)), got[3])


def test_a_row_draws_the_same_in_any_batch_and_the_draws_are_uniform():
    words = seed_words(7)
    alone = ops.convert_to_numpy(uniforms(words, 11, 1))
    assert ops.convert_to_numpy(uniforms(words, 11, 8))[0] == alone[0]
    draws = np.concatenate([ops.convert_to_numpy(uniforms(words, s, 1000)) for s in range(50)])
    assert 0 <= draws.min() and draws.max() < 1
    counts = np.histogram(draws, bins=10, range=(0, 1))[0]
    assert abs(counts - 5000).max() < 300  # 10 bins of 50,000 draws: ~4 standard deviations
    assert len(np.unique(draws)) > 49_000


def test_seeds_must_be_integers():
    for seed in (1.5, "3", None, True):
        with pytest.raises(ValueError, match="^seed must be an integer"):
            seed_words(seed)
