"""WindowAttention (W) against a numpy loop over each query's window, in both of its ways
(one pass when W >= T, chunks of W queries when W < T); the window mask (exactly W
predecessors, across the segment boundary); memory equals a long segment; causality; the
shared layer checks."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from layer_test_case import run_layer_test
from test_positions import reference_bucket

from par_xl.layers import WindowAttention
from par_xl.layers.relative_attention import causal_memory_mask

B, N, H = 2, 2, 4
D = N * H


def numpy(x):
    return ops.convert_to_numpy(x)


def make_layer(window, segment):
    """A built layer with weights large enough that a wrong sign, index or bucket shows."""
    rng = np.random.default_rng(window * 10 + segment)
    layer = WindowAttention(N, H, window=window)
    layer.build((B, segment, D))
    for weight in layer.weights:
        scale = 1.0 / np.sqrt(D) if len(weight.shape) == 3 else 1.0
        weight.assign(scale * rng.normal(size=weight.shape))
    return layer


def reference_window_attention(layer, segment, memory, mask):
    """Each query i over the keys j of `[memory; segment]` with `0 <= M + i - j <= W` that
    `mask` lets it see, scored `q . k / sqrt(H) + bias[bucket(M + i - j)]`: `(B, T, D)`."""
    weights = {w.name: numpy(w) for w in layer.weights}
    keys_in = np.concatenate([memory, segment], axis=1)
    m, t = memory.shape[1], segment.shape[1]
    out = np.zeros((segment.shape[0], t, N, H))
    for b in range(segment.shape[0]):
        for i in range(t):
            q = np.einsum("d,dnh->nh", segment[b, i], weights["query_kernel"])
            visible = [j for j in range(m + t) if mask[min(b, len(mask) - 1), i, j]
                       and m + i - j <= layer.window]  # fmt: skip
            scores, values = [], []
            for j in visible:
                k = np.einsum("d,dnh->nh", keys_in[b, j], weights["key_kernel"])
                bias = weights["relative_attention_bias"][reference_bucket(m + i - j)]
                scores.append((q * k).sum(-1) / np.sqrt(H) + bias)
                values.append(np.einsum("d,dnh->nh", keys_in[b, j], weights["value_kernel"]))
            scores = np.stack(scores, -1)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[b, i] = np.einsum("nj,jnh->nh", probs, np.stack(values))
    return np.einsum("btnh,nhd->btd", out, weights["output_kernel"])


CASES = {  # (T, M, W, valid memory)
    "one-pass": (4, 6, 5, 6),  # W >= T: one pass over min(W, M) + T keys
    "one-pass-short-memory": (4, 2, 5, 2),  # M < W: the first W - M positions see M + i
    "chunks": (7, 5, 3, 5),  # W < T, T not a multiple of W
    "chunks-short-memory": (6, 2, 3, 1),  # M < W, one memory slot valid
    "chunks-no-memory": (6, 0, 2, 0),
    "chunks-window-1": (5, 3, 1, 3),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("documents", [False, True], ids=["", "documents"])
def test_matches_numpy_reference(case, documents):
    segment_length, mem_len, window, valid = CASES[case]
    rng = np.random.default_rng(segment_length * mem_len + window)
    layer = make_layer(window, segment_length)
    segment = rng.normal(size=(B, segment_length, D)).astype("float32")
    memory = rng.normal(size=(B, mem_len, D)).astype("float32")
    starts = np.zeros((B, segment_length), "int32")
    if documents:
        starts[0, 2], starts[1, 0] = 1, 1  # row 1's segment sees none of its memory
    index = np.cumsum(starts, axis=1)
    mask = numpy(causal_memory_mask(segment_length, mem_len, [valid, valid], index))
    got = numpy(layer(segment, memory if mem_len else None, None, mask))
    expected = reference_window_attention(layer, segment, memory, mask)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("segment_length,window", [(4, 4), (7, 3)], ids=["one-pass", "chunks"])
def test_each_position_sees_exactly_w_predecessors_across_the_segment_boundary(segment_length,
                                                                               window):  # fmt: skip
    """The output at query i depends on the inputs at distances 0 ... W before it, memory
    included (M = W + 2 slots, all valid), and on no other: the gradient of each output row is
    non-zero exactly there."""
    mem_len = window + 2
    layer = make_layer(window, segment_length)
    rng = np.random.default_rng(6)
    segment = tf.constant(rng.normal(size=(1, segment_length, D)).astype("float32"))
    memory = tf.constant(rng.normal(size=(1, mem_len, D)).astype("float32"))
    mask = causal_memory_mask(segment_length, mem_len, mem_len)
    for i in range(segment_length):
        with tf.GradientTape() as tape:
            tape.watch([segment, memory])
            output = layer(segment, memory, None, mask)[0, i]
        grads = tape.gradient(output, [memory, segment])
        reach = np.abs(np.concatenate([numpy(g)[0] for g in grads])).sum(-1)  # (M + T,)
        seen = np.flatnonzero(reach > 0)
        assert seen.tolist() == list(range(mem_len + i - window, mem_len + i + 1)), i


@pytest.mark.parametrize("segment_length,window", [(4, 3), (6, 2)], ids=["one-pass", "chunks"])
def test_memory_of_w_equals_one_long_segment(segment_length, window):
    """The second segment with the first's last W positions as memory equals the same
    positions of one pass over both: the cache of W positions is all the window needs."""
    layer = make_layer(window, segment_length)
    rng = np.random.default_rng(7)
    first, second = rng.normal(size=(2, B, segment_length, D)).astype("float32")
    long = numpy(layer(np.concatenate([first, second], 1), None, None,
                       causal_memory_mask(2 * segment_length, 0, 0)))  # fmt: skip
    memory = first[:, -window:]
    carried = numpy(layer(second, memory, None, causal_memory_mask(segment_length, window,
                                                                   window)))  # fmt: skip
    np.testing.assert_allclose(carried, long[:, segment_length:], rtol=1e-5, atol=1e-5)
    longer = numpy(layer(second, first, None, causal_memory_mask(segment_length, segment_length,
                                                                 segment_length)))  # fmt: skip
    np.testing.assert_allclose(longer, carried, rtol=1e-5, atol=1e-5)  # more memory: the same


def test_future_positions_never_change_past_outputs():
    layer = make_layer(3, 7)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(B, 7, D)).astype("float32")
    mask = causal_memory_mask(7, 0, 0)
    before = numpy(layer(x, None, None, mask))
    x[:, 4:] += 1.0
    after = numpy(layer(x, None, None, mask))
    np.testing.assert_allclose(after[:, :4], before[:, :4], rtol=1e-6, atol=1e-6)
    assert np.abs(after[:, 4:] - before[:, 4:]).max() > 1e-3


@pytest.mark.parametrize("window", [5, 2], ids=["one-pass", "chunks"])
def test_window_attention_layer_checks(window):
    rng = np.random.default_rng(9)
    inputs = (rng.normal(size=(B, 5, D)).astype("float32"),
              rng.normal(size=(B, 3, D)).astype("float32"), None,
              numpy(causal_memory_mask(5, 3, 2)))  # fmt: skip
    run_layer_test(
        WindowAttention,
        dict(num_heads=N, head_size=H, window=window, attention_dropout_rate=0.1),
        inputs,
        expected_output_shape=(B, 5, D),
        expected_num_trainable_weights=5,  # q, k, v, output kernels; the T5 table
        expected_num_non_trainable_weights=0,
    )


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="window must be a positive integer, received 0"):
        WindowAttention(2, 4, window=0)
    with pytest.raises(ValueError, match="WindowAttention's position is 't5'"):
        WindowAttention(2, 4, window=3, position="rotary")
