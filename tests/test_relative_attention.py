"""RelativeAttention against a naive numpy Transformer-XL attention, one query at a time."""

import keras
import numpy as np
import pytest
from keras import ops

from par_xl.layers.relative_attention import (
    RelativeAttention,
    causal_memory_mask,
    relative_shift,
    sinusoid_positions,
)


def numpy_sinusoid(distance, width):
    frequencies = 1.0 / (10000.0 ** (np.arange(0, width, 2) / width))
    angles = distance * frequencies
    return np.concatenate([np.sin(angles), np.cos(angles)])


def reference_attended(layer, segment, memory, valid_memory_length):
    """Transformer-XL attention written per query and key, distances computed directly: the
    attended values per head `(B, T, N, H)`, before the output projection."""
    weights = {w.name: ops.convert_to_numpy(w) for w in layer.weights}
    wq, wk, wv = weights["query_kernel"], weights["key_kernel"], weights["value_kernel"]
    wr = weights["position_kernel"]
    u, v = weights["content_bias"], weights["position_bias"]
    batch, t, d = segment.shape
    m = memory.shape[1]
    keys_in = np.concatenate([memory, segment], axis=1)
    out = np.zeros((batch, t, layer.num_heads, layer.head_size), "float32")
    for b in range(batch):
        for i in range(t):
            q = np.einsum("d,dnh->nh", segment[b, i], wq)
            visible = [j for j in range(m + t) if j <= m + i and j >= m - valid_memory_length]
            scores = []
            for j in visible:
                k = np.einsum("d,dnh->nh", keys_in[b, j], wk)
                r = np.einsum("d,dnh->nh", numpy_sinusoid(m + i - j, d), wr)
                scores.append(((q + u) * k).sum(-1) + ((q + v) * r).sum(-1))  # (N,)
            scores = np.stack(scores, axis=-1) / np.sqrt(layer.head_size)  # (N, visible)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            values = np.stack([np.einsum("d,dnh->nh", keys_in[b, j], wv) for j in visible])
            out[b, i] = np.einsum("nj,jnh->nh", probs, values)
    return out


def reference_attention(layer, segment, memory, valid_memory_length):
    """`reference_attended` projected back to width D: `(B, T, D)`."""
    attended = reference_attended(layer, segment, memory, valid_memory_length)
    return np.einsum("btnh,nhd->btd", attended, ops.convert_to_numpy(layer.output_kernel))


@pytest.mark.parametrize("mem_len,valid", [(0, 0), (3, 3), (5, 2), (5, 0)])
def test_matches_numpy_reference(mem_len, valid):
    rng = np.random.default_rng(mem_len * 10 + valid)
    batch, t, heads, size = 2, 4, 2, 3
    d = heads * size
    layer = RelativeAttention(heads, size, kernel_initializer="glorot_uniform")
    segment = rng.normal(size=(batch, t, d)).astype("float32")
    memory = rng.normal(size=(batch, mem_len, d)).astype("float32")
    positions = sinusoid_positions(mem_len + t, d)
    mask = causal_memory_mask(t, mem_len, valid)
    layer.build(segment.shape)
    # The biases start at N(0, .02); make them large so that a wrong sign or index shows.
    layer.content_bias.assign(rng.normal(size=(heads, size)))
    layer.position_bias.assign(rng.normal(size=(heads, size)))
    got = layer(segment, memory if mem_len else None, positions, mask)
    expected = reference_attention(layer, segment, memory, valid)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-4, atol=1e-5)


def test_relative_shift_indexes_distances():
    t, m = 3, 4
    k = m + t
    # scores[i, c] = distance encoded by column c = K - 1 - c, tagged with the query.
    scores = np.array([[100 * i + (k - 1 - c) for c in range(k)] for i in range(t)], "float32")
    shifted = ops.convert_to_numpy(relative_shift(scores))
    for i in range(t):
        for j in range(m + i + 1):
            assert shifted[i, j] == 100 * i + (m + i - j)


def test_mask_is_causal_and_hides_empty_memory():
    mask = ops.convert_to_numpy(causal_memory_mask(3, 4, 1))
    expected = np.array(
        [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=bool
    )
    np.testing.assert_array_equal(mask, expected[None])


def test_mask_per_row_and_per_document():
    """Row 0: 2 valid memory slots, a document starting at position 1; row 1: no valid memory."""
    starts = np.array([[0, 1, 0], [0, 0, 0]])
    mask = ops.convert_to_numpy(causal_memory_mask(3, 2, [2, 0], np.cumsum(starts, axis=1)))
    expected = np.array(
        [
            [[1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]],  # memory, then only its document
            [[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(mask, expected)


def test_config_round_trip():
    layer = RelativeAttention(4, 8, attention_dropout_rate=0.1, name="att")
    clone = RelativeAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, RelativeAttention) and restored.head_size == 8


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="attention_dropout_rate"):
        RelativeAttention(2, 4, attention_dropout_rate=1.5)
    with pytest.raises(ValueError, match="num_heads"):
        RelativeAttention(0, 4)


def test_weights_keep_their_names_and_order():
    """Checkpoints address the weights by these paths: refactors must keep them."""
    layer = RelativeAttention(2, 4, name="attention")
    layer.build((1, 3, 8))
    assert [w.path for w in layer.weights] == [
        f"attention/{name}"
        for name in (
            "query_kernel",
            "key_kernel",
            "value_kernel",
            "position_kernel",
            "content_bias",
            "position_bias",
            "output_kernel",
        )
    ]
