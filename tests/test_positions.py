"""Rotary and T5 positions for attention (A) and memorizing attention (M): T5's buckets against
a reference, rotary's relative property, both attentions against a naive numpy loop, memory
equals a long segment, M on top of them, and the shared layer checks."""

import math

import numpy as np
import pytest
from keras import ops
from layer_test_case import run_layer_test
from test_layers import attention_inputs

from par_xl.layers import MemorizingAttention, RelativeAttention
from par_xl.layers.positions import (
    T5_BUCKETS,
    relative_position_buckets,
    rotate,
    t5_bias,
    validate_position,
)
from par_xl.layers.relative_attention import causal_memory_mask
from par_xl.memory import exact_state

B, T, N, H = 2, 4, 2, 4
D = N * H


def numpy(x):
    return ops.convert_to_numpy(x)


def reference_bucket(distance, num_buckets=32, max_distance=128):
    """T5's `_relative_position_bucket(memory_position - query_position, bidirectional=False)`,
    one Python integer at a time (the formula of T5 / Hugging Face's T5Attention)."""
    n = max(distance, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return min(large, num_buckets - 1)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20)])
def test_t5_buckets_match_the_reference(num_buckets, max_distance):
    distances = np.arange(-3, 3 * max_distance)
    got = numpy(relative_position_buckets(distances, num_buckets, max_distance))
    expected = [reference_bucket(int(d), num_buckets, max_distance) for d in distances]
    np.testing.assert_array_equal(got, expected)
    if num_buckets == 32:  # T5's defaults: 16 exact distances, then 16 log-spaced buckets
        assert got[3 : 3 + 16].tolist() == list(range(16))
        assert got[3 + 16] == 16 and got[3 + 112] == 30 and got[3 + 113] == 31
        assert np.all(np.diff(got) >= 0) and got[-1] == 31


def test_t5_bias_looks_up_each_pairs_distance():
    table = np.random.default_rng(0).normal(size=(T5_BUCKETS, N)).astype("float32")
    bias = numpy(t5_bias(table, 3, 4, 7))  # queries at 3..6, keys at 0..6
    for i in range(4):
        for j in range(7):
            np.testing.assert_array_equal(bias[:, i, j], table[reference_bucket(3 + i - j)])


def test_rotary_scores_depend_only_on_the_offset():
    rng = np.random.default_rng(1)
    query = rng.normal(size=(1, 1, N, H)).astype("float32")
    key = rng.normal(size=(1, 1, N, H)).astype("float32")

    def score(p, p_key):
        rotated = rotate(query, np.array([p])), rotate(key, np.array([p_key]))
        return numpy(ops.sum(rotated[0] * rotated[1], axis=-1))[0, 0]  # (N,)

    for offset in (0, 1, 5, 37):
        base = score(offset, 0)
        for shift in (1, 10, 250):
            np.testing.assert_allclose(score(shift + offset, shift), base, rtol=1e-4, atol=1e-4)
    assert np.abs(score(1, 0) - score(2, 0)).max() > 1e-3  # the offset does matter
    np.testing.assert_allclose(  # a rotation keeps lengths
        np.linalg.norm(numpy(rotate(query, np.array([7]))), axis=-1),
        np.linalg.norm(query, axis=-1),
        rtol=1e-5,
    )


@pytest.mark.parametrize("position", ["rotary", "t5"])
def test_attention_scores_are_constant_along_each_offset(position):
    """The same query vector at every position and the same key vector at every position:
    each score depends only on the query's offset from the key, M + i - j."""
    layer = make_layer(position, mem_len=3)
    rng = np.random.default_rng(2)
    query = np.broadcast_to(rng.normal(size=(1, 1, N, H)), (1, T, N, H)).astype("float32")
    key = np.broadcast_to(rng.normal(size=(1, 1, N, H)), (1, 3 + T, N, H)).astype("float32")
    scores = numpy(layer.scores(query, key, None))[0]  # (N, T, K)
    for offset in range(-T, 3 + T):  # diagonal j - i = 3 - offset
        diagonal = np.diagonal(scores, offset=3 - offset, axis1=1, axis2=2)  # (N, count)
        np.testing.assert_allclose(diagonal, diagonal[:, :1] + 0 * diagonal, rtol=1e-5, atol=1e-5)
    assert np.abs(scores[:, 0, 0] - scores[:, 0, 1]).max() > 1e-4


def rotate_reference(x, position):
    """Rotary embedding of one `(N, H)` vector per head, the pairs `(x_k, x_{k + H/2})` as
    complex numbers turned by `e^{i position theta_k}`."""
    half = x.shape[-1] // 2
    theta = 10000.0 ** (-np.arange(half) / half)
    turned = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * position * theta)
    return np.concatenate([turned.real, turned.imag], axis=-1)


def reference_attention(layer, segment, memory, mask):
    """Rotary or T5 attention written per query and key: `(B, T, D)`."""
    weights = {w.name: numpy(w) for w in layer.weights}
    keys_in = np.concatenate([memory, segment], axis=1)
    m = memory.shape[1]
    out = np.zeros((segment.shape[0], segment.shape[1], N, H))
    for b in range(segment.shape[0]):
        for i in range(segment.shape[1]):
            q = np.einsum("d,dnh->nh", segment[b, i], weights["query_kernel"])
            visible = [j for j in range(m + segment.shape[1]) if mask[min(b, len(mask) - 1), i, j]]
            scores, values = [], []
            for j in visible:
                k = np.einsum("d,dnh->nh", keys_in[b, j], weights["key_kernel"])
                if layer.position == "rotary":
                    rotated = rotate_reference(q, m + i) * rotate_reference(k, j)
                    scores.append(rotated.sum(-1) / np.sqrt(H))
                else:
                    bias = weights["relative_attention_bias"][reference_bucket(m + i - j)]
                    scores.append((q * k).sum(-1) / np.sqrt(H) + bias)
                values.append(np.einsum("d,dnh->nh", keys_in[b, j], weights["value_kernel"]))
            scores = np.stack(scores, -1)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[b, i] = np.einsum("nj,jnh->nh", probs, np.stack(values))
    return np.einsum("btnh,nhd->btd", out, weights["output_kernel"])


def make_layer(position, mem_len, layer_class=RelativeAttention, **kwargs):
    """A built layer with weights large enough that a wrong sign, index or bucket shows."""
    rng = np.random.default_rng(3)
    layer = layer_class(N, H, position=position, **kwargs)
    layer.build((B, T, D))
    for weight in layer.weights:
        scale = 1.0 / np.sqrt(D) if len(weight.shape) == 3 else 1.0
        weight.assign(scale * rng.normal(size=weight.shape))
    return layer


@pytest.mark.parametrize("position", ["rotary", "t5"])
@pytest.mark.parametrize("mem_len,valid", [(0, 0), (3, 3), (5, 2)])
def test_matches_numpy_reference(position, mem_len, valid):
    rng = np.random.default_rng(mem_len + valid)
    layer = make_layer(position, mem_len)
    segment = rng.normal(size=(B, T, D)).astype("float32")
    memory = rng.normal(size=(B, mem_len, D)).astype("float32")
    starts = np.array([[0, 0, 1, 0], [0, 0, 0, 0]])
    mask = numpy(causal_memory_mask(T, mem_len, [valid, valid], np.cumsum(starts, axis=1)))
    got = layer(segment, memory if mem_len else None, None, mask)
    expected = reference_attention(layer, segment, memory, mask)
    np.testing.assert_allclose(numpy(got), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("position", ["rotary", "t5"])
def test_memory_equals_one_long_segment_and_futures_do_not_leak(position):
    """Two segments, the second with the first as memory (M = T), equal one pass over both:
    the scores depend on offsets only. Changing the second segment's last token changes only
    its last output."""
    rng = np.random.default_rng(4)
    layer = make_layer(position, T)
    first, second = rng.normal(size=(2, B, T, D)).astype("float32")
    long = numpy(layer(np.concatenate([first, second], 1), None, None,
                       causal_memory_mask(2 * T, 0, 0)))  # fmt: skip
    carried = numpy(layer(second, first, None, causal_memory_mask(T, T, T)))
    np.testing.assert_allclose(carried, long[:, T:], rtol=1e-5, atol=1e-5)
    changed = second.copy()
    changed[:, -1] += 1.0
    after = numpy(layer(changed, first, None, causal_memory_mask(T, T, T)))
    np.testing.assert_allclose(after[:, :-1], carried[:, :-1], rtol=1e-6, atol=1e-6)
    assert np.abs(after[:, -1] - carried[:, -1]).max() > 1e-3


@pytest.mark.parametrize("position", ["rotary", "t5"])
def test_memorizing_attention_with_an_empty_store_is_its_attention(position):
    """M takes the position option through `RelativeAttention.attend`: with nothing stored it
    equals A with the same weights."""
    layer = make_layer(position, 3, MemorizingAttention, num_neighbors=2)
    twin = make_layer(position, 3)
    weights = {w.name: w for w in layer.weights}
    for weight in twin.weights:
        weight.assign(weights[weight.name])
    rng = np.random.default_rng(5)
    x, memory = rng.normal(size=(B, T, D)), rng.normal(size=(B, 3, D))
    x, memory = x.astype("float32"), memory.astype("float32")
    mask = causal_memory_mask(T, 3, 2)
    store = exact_state.empty_state(B, N, 8, H)
    output, store = layer(x, memory, None, mask, store)
    np.testing.assert_allclose(numpy(output), numpy(twin(x, memory, None, mask)), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    assert numpy(store.length).tolist() == [T, T]


@pytest.mark.parametrize("position,weights", [("rotary", 4), ("t5", 5)])
def test_relative_attention_layer_checks(position, weights):
    run_layer_test(
        RelativeAttention,
        dict(num_heads=2, head_size=4, attention_dropout_rate=0.1, position=position),
        attention_inputs(4, 2),
        expected_output_shape=(2, 3, 8),
        expected_num_trainable_weights=weights,  # q, k, v, output (and the T5 table)
        expected_num_non_trainable_weights=0,
    )


def test_weights_keep_their_names_and_order():
    for position, names in (
        ("rotary", ["query_kernel", "key_kernel", "value_kernel", "output_kernel"]),
        ("t5", ["query_kernel", "key_kernel", "value_kernel", "output_kernel",
                "relative_attention_bias"]),
    ):  # fmt: skip
        layer = RelativeAttention(2, 4, position=position, name="attention")
        layer.build((1, 3, 8))
        assert [w.path for w in layer.weights] == [f"attention/{name}" for name in names]


def test_positions_are_validated():
    assert validate_position("t5", 3) == "t5"
    with pytest.raises(ValueError, match=r"position must be one of \('xl', 'rotary', 't5'\)"):
        RelativeAttention(2, 4, position="alibi")
    with pytest.raises(ValueError, match="position='rotary' needs an even head size"):
        RelativeAttention(2, 3, position="rotary")
