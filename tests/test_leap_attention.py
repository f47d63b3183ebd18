"""LeapAttention (L) against a numpy loop of its equations; its parallel (cumulative-sum) and
recurrent (one position) forms agree to 1e-5; the state carried across segments equals one long
segment; document starts restart the sums; causality; XLA; the shared layer checks."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from layer_test_case import run_layer_test

from par_xl.layers import LeapAttention
from par_xl.layers import leap_state as leap
from par_xl.layers.leap_state import LeapState

B, N, H = 2, 2, 4
D = N * H


def numpy(x):
    return ops.convert_to_numpy(x)


def make_layer(seed=0, rescale=10.0):
    """A built layer with weights of about unit projections, so the focus weights spread."""
    rng = np.random.default_rng(seed)
    layer = LeapAttention(N, H, rescale=rescale)
    layer.build((B, 5, D))
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape) / np.sqrt(D))
    return layer


def norm(x):
    centered = x - x.mean(-1, keepdims=True)
    return centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5)


def reference_leap(layer, x, starts=None, sums=None):
    """LEAP's equations position by position, in float64: `(output (B, T, D), the sums after
    (key_sum, value_sum, weight_sum))`."""
    w = {v.name: numpy(v).astype("float64") for v in layer.weights}
    c = layer.rescale
    q, f, k = (norm(np.einsum("btd,dnh->btnh", x, w[f"{name}_kernel"]))
               for name in ("query", "focus", "key"))  # fmt: skip
    v = np.einsum("btd,dnh->btnh", x, w["value_kernel"])
    batch, t = x.shape[:2]
    if sums is None:
        sums = (np.zeros((batch, N, H)), np.zeros((batch, N, H)), np.zeros((batch, N)))
    key_sum, value_sum, weight_sum = (np.array(s, "float64") for s in sums)
    out = np.zeros((batch, t, N, H))
    for b in range(batch):
        for i in range(t):
            if starts is not None and starts[b, i]:
                key_sum[b], value_sum[b], weight_sum[b] = 0, 0, 0
            for n in range(N):
                weight = np.exp(c * f[b, i, n] @ k[b, i, n] / H - c)
                key_sum[b, n] += weight * k[b, i, n]
                value_sum[b, n] += weight * v[b, i, n]
                weight_sum[b, n] += weight
                focused_key = key_sum[b, n] / weight_sum[b, n]
                alignment = 1 / (1 + np.exp(-c * q[b, i, n] @ focused_key / H))
                out[b, i, n] = alignment * value_sum[b, n] / weight_sum[b, n]
    return np.einsum("btnh,nhd->btd", out, w["output_kernel"]), (key_sum, value_sum, weight_sum)


def inputs(seed, length=6, batch=B):
    return np.random.default_rng(seed).normal(size=(batch, length, D)).astype("float32")


@pytest.mark.parametrize("documents", [False, True], ids=["", "documents"])
@pytest.mark.parametrize("rescale", [10.0, 2.0])
def test_matches_numpy_reference(documents, rescale):
    layer = make_layer(1, rescale)
    x = inputs(2)
    starts = np.array([[0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1]]) if documents else None
    state = leap.empty_state(B, N, H)
    expected, expected_sums = reference_leap(layer, x, starts)
    output, state = layer(x, state, document_starts=starts)
    np.testing.assert_allclose(numpy(output), expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(state, expected_sums):
        np.testing.assert_allclose(numpy(got), want, rtol=1e-4, atol=1e-6)
    # The rescaled dot products keep the focus weights in [e^-2c, 1].
    weights = numpy(layer.project(x)[1])
    assert weights.min() >= np.exp(-2 * rescale) * 0.999 and weights.max() <= 1.0


@pytest.mark.parametrize("documents", [False, True], ids=["", "documents"])
def test_parallel_and_recurrent_forms_agree(documents):
    """The cumulative-sum form over 12 positions and 12 one-position steps (the form generation
    runs) give the same outputs and sums, to 1e-5, from a state with history."""
    layer = make_layer(3)
    x = inputs(4, 12)
    starts = np.zeros((B, 12), "int32")
    if documents:
        starts[0, 5], starts[1, 0], starts[1, 9] = 1, 1, 1
    state = layer(inputs(5, 7), leap.empty_state(B, N, H))[1]  # some history
    parallel, parallel_state = layer(x, state, document_starts=starts if documents else None)
    steps = []
    for i in range(12):
        step_starts = starts[:, i : i + 1] if documents else None
        output, state = layer(x[:, i : i + 1], state, document_starts=step_starts)
        steps.append(numpy(output))
    np.testing.assert_allclose(np.concatenate(steps, 1), numpy(parallel), rtol=1e-5, atol=1e-5)
    for a, b in zip(state, parallel_state):
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=1e-5, atol=1e-5)


def test_pure_functions_agree_on_random_weights():
    """`focus` over T positions equals T `focus_step`s, weights spanning e^-20 ... 1."""
    rng = np.random.default_rng(6)
    weights = np.exp(rng.uniform(-20, 0, size=(B, 9, N))).astype("float32")
    keys, values = rng.normal(size=(2, B, 9, N, H)).astype("float32")
    starts = (rng.random((B, 9)) < 0.2).astype("int32")
    state = LeapState(*(rng.uniform(0, 3, size=s).astype("float32")
                        for s in ((B, N, H), (B, N, H), (B, N))))  # fmt: skip
    focused_keys, focused_values, after = leap.focus(state, weights, keys, values, starts)
    for i in range(9):
        key, value, state = leap.focus_step(state, weights[:, i], keys[:, i], values[:, i],
                                            starts[:, i])  # fmt: skip
        np.testing.assert_allclose(numpy(key), numpy(focused_keys[:, i]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(numpy(value), numpy(focused_values[:, i]), rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
    for a, b in zip(state, after):
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=1e-5, atol=1e-6)


def test_state_across_segments_equals_one_long_segment():
    layer = make_layer(7)
    first, second, third = inputs(8, 4), inputs(9, 3), inputs(10, 5)
    long = numpy(layer(np.concatenate([first, second, third], 1)))
    state = leap.empty_state(B, N, H)
    outputs = []
    for segment in (first, second, third):
        output, state = layer(segment, state)
        outputs.append(numpy(output))
    np.testing.assert_allclose(np.concatenate(outputs, 1), long, rtol=1e-5, atol=1e-5)


def test_a_document_start_forgets_everything_before_it():
    """From a start on, the outputs equal those of a fresh stream reading from the start."""
    layer = make_layer(11)
    x = inputs(12, 8)
    history = layer(inputs(13, 5), leap.empty_state(B, N, H))[1]
    starts = np.zeros((B, 8), "int32")
    starts[:, 3] = 1
    output = numpy(layer(x, history, document_starts=starts)[0])
    fresh = numpy(layer(x[:, 3:]))
    np.testing.assert_allclose(output[:, 3:], fresh, rtol=1e-5, atol=1e-5)
    without = numpy(layer(x, history)[0])
    assert np.abs(without[:, 3:] - fresh).max() > 1e-3  # the history did matter


def test_future_positions_never_change_past_outputs():
    layer = make_layer(14)
    x = inputs(15, 7)
    before = numpy(layer(x))
    x[:, 4:] += 1.0
    after = numpy(layer(x))
    np.testing.assert_allclose(after[:, :4], before[:, :4], rtol=1e-6, atol=1e-6)
    assert np.abs(after[:, 4:] - before[:, 4:]).max() > 1e-3


def test_xla_equals_eager_with_document_starts():
    layer = make_layer(16)
    x = inputs(17, 6)
    starts = np.array([[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]], "int32")
    state = layer(inputs(18, 3), leap.empty_state(B, N, H))[1]

    def run(x, state, starts):
        return layer(x, state, document_starts=starts)

    eager = run(x, state, starts)
    compiled = tf.function(run, jit_compile=True)(x, state, tf.constant(starts))
    assert isinstance(compiled[1], LeapState)
    for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(compiled)):
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=1e-5, atol=1e-5)


def test_leap_attention_layer_checks():
    run_layer_test(
        LeapAttention,
        dict(num_heads=N, head_size=H),
        inputs(19, 5),
        expected_output_shape=(B, 5, D),
        expected_num_trainable_weights=5,  # query, focus, key, value, output kernels
        expected_num_non_trainable_weights=0,
    )


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="rescale must be positive"):
        LeapAttention(2, 4, rescale=0.0)
    with pytest.raises(ValueError, match="num_heads and head_size must be positive"):
        LeapAttention(0, 4)
