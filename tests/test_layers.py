"""Every layer through `run_layer_test`: config round trip, symbolic and eager calls, a compiled
fit step, a .keras round trip and mixed precision (see `layer_test_case.py`)."""

import numpy as np
import pytest
from keras import ops
from layer_test_case import run_layer_test

from par_xl.layers import (
    AdaptiveSoftmax,
    FeedForward,
    GumbelChoice,
    RelativeAttention,
    StochasticBlock,
)
from par_xl.layers.relative_attention import causal_memory_mask, sinusoid_positions

B, T, D = 2, 3, 8  # batch, segment, width (2 heads of 4)


def hidden(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def attention_inputs(mem_len, valid_memory_length):
    """`(inputs, memory, position_encoding, mask)` as a block receives them; memory is None
    without memory slots."""
    memory = hidden((B, mem_len, D), seed=1) if mem_len else None
    positions = ops.convert_to_numpy(sinusoid_positions(mem_len + T, D))  # (K, D)
    mask = ops.convert_to_numpy(causal_memory_mask(T, mem_len, valid_memory_length))  # (1, T, K)
    return hidden((B, T, D)), memory, positions, mask


@pytest.mark.parametrize("mem_len,valid", [(0, 0), (4, 2)], ids=["no-memory", "memory"])
def test_relative_attention(mem_len, valid):
    run_layer_test(
        RelativeAttention,
        dict(num_heads=2, head_size=4, attention_dropout_rate=0.1),
        attention_inputs(mem_len, valid),
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=7,  # q, k, v, position, output kernels; u, v biases
        expected_num_non_trainable_weights=0,
    )


def test_feed_forward():
    run_layer_test(
        FeedForward,
        dict(inner_size=12, dropout_rate=0.1),
        hidden((B, T, D)),
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=4,  # two kernels, two biases
        expected_num_non_trainable_weights=0,
    )


@pytest.mark.parametrize("straight_through", [False, True])
def test_gumbel_choice(straight_through):
    run_layer_test(
        GumbelChoice,
        dict(num_choices=3, straight_through=straight_through, seed=3),
        hidden((B, T, D)),
        expected_output_shape=(B, 3),
        expected_num_trainable_weights=1,  # the logits
        expected_num_non_trainable_weights=1,  # tau, assigned by the annealing callback
    )


@pytest.mark.parametrize(
    "choices,choice,trainable,non_trainable",
    [
        ("AFI", "A", 9, 0),  # attention 7, its norm 2
        ("AFI", "F", 6, 0),  # feed-forward 4, its norm 2
        ("AFI", "I", 0, 0),
        ("AFI", None, 16, 1),  # both branches and the choice logits; tau
        ("FI", None, 7, 1),  # feed-forward and the choice logits; tau
    ],
    ids=["attention", "feed-forward", "identity", "supernet", "supernet-FI"],
)
@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")  # identity
def test_stochastic_block(choices, choice, trainable, non_trainable):
    run_layer_test(
        StochasticBlock,
        dict(
            num_heads=2,
            head_size=4,
            inner_size=12,
            dropout_rate=0.1,
            attention_dropout_rate=0.1,
            choices=choices,
            choice=choice,
            seed=5,
        ),
        attention_inputs(4, 2),
        expected_output_shape=(B, T, D),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
    )


def test_adaptive_softmax():
    run_layer_test(
        AdaptiveSoftmax,
        dict(vocab_size=30, cutoffs=(5, 12), proj_factor=2, tail_capacities=(8, 8)),
        hidden((B, T, D)),
        expected_output_shape=(B, T, 30),
        expected_num_trainable_weights=9,  # head: 3; each tail: embedding, projection, bias
        expected_num_non_trainable_weights=0,
        mixed_precision_output_dtype="float32",  # log-probabilities stay float32
    )
