"""GatedFeedForward (G) against numpy formulas of each activation, its parameter count against
F's, and the shared layer checks."""

import math

import keras
import numpy as np
import pytest
from keras import ops
from layer_test_case import run_layer_test

from par_xl.layers import FeedForward, GatedFeedForward
from par_xl.layers.gated_feed_forward import FFN_ACTIVATIONS, matching_inner_size

B, T, D = 2, 3, 8


def numpy(x):
    return ops.convert_to_numpy(x)


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def silu(x):
    return x / (1 + np.exp(-x))


def relu(x):
    return np.maximum(x, 0)


def reference(layer, x):
    """`down(act(x W_g + b_g) [* (x W_u + b_u)])` written out."""
    gate = x @ numpy(layer.gate.kernel) + numpy(layer.gate.bias)
    hidden = {"swiglu": silu, "geglu": gelu, "gelu": gelu, "relu": relu}[layer.activation](gate)
    if layer.activation in ("swiglu", "geglu"):
        hidden = hidden * (x @ numpy(layer.up.kernel) + numpy(layer.up.bias))
    return hidden @ numpy(layer.down.kernel) + numpy(layer.down.bias)


@pytest.mark.parametrize("activation", FFN_ACTIVATIONS)
def test_matches_numpy_reference(activation):
    rng = np.random.default_rng(0)
    layer = GatedFeedForward(7, activation=activation)
    layer.build((B, T, D))
    for weight in layer.weights:  # biases too, so that a missing one shows
        weight.assign(rng.normal(size=weight.shape))
    x = rng.normal(size=(B, T, D)).astype("float32")
    np.testing.assert_allclose(numpy(layer(x)), reference(layer, x), rtol=1e-4, atol=1e-4)


def parameters(layer_class, width, **kwargs):
    layer = layer_class(**kwargs)
    layer.build((1, 1, width))
    return sum(int(np.prod(w.shape)) for w in layer.weights)


@pytest.mark.parametrize("width,inner", [(128, 512), (16, 24), (512, 2048), (32, 64)])
@pytest.mark.parametrize("activation", FFN_ACTIVATIONS)
def test_a_g_block_has_fs_parameter_count(width, inner, activation):
    """As nearly as an integer inner width allows: within (3 D + 2) / 2 for the gated ones,
    exactly for the others."""
    f = parameters(FeedForward, width, inner_size=inner)
    h = matching_inner_size(width, inner, activation)
    g = parameters(GatedFeedForward, width, inner_size=h, activation=activation)
    if activation in ("gelu", "relu"):
        assert h == inner and g == f
    else:
        assert abs(g - f) <= (3 * width + 2) / 2
        assert abs(h - inner * 2 / 3) < 0.02 * inner  # about 2/3 of d_ffn
    if (width, inner, activation) == (128, 512, "swiglu"):  # the base model: 42 more
        assert (h, g - f) == (341, 42)


@pytest.mark.parametrize("activation", ["swiglu", "relu"])
def test_gated_feed_forward_layer_checks(activation):
    run_layer_test(
        GatedFeedForward,
        dict(inner_size=12, activation=activation, dropout_rate=0.1),
        np.random.default_rng(1).normal(size=(B, T, D)).astype("float32"),
        expected_output_shape=(B, T, D),
        # gate, up, down kernels and biases; no up without a gate
        expected_num_trainable_weights=6 if activation == "swiglu" else 4,
        expected_num_non_trainable_weights=0,
    )


def test_arguments_are_validated():
    with pytest.raises(ValueError, match=r"ffn_activation must be one of \('swiglu'"):
        GatedFeedForward(8, activation="tanh")
    with pytest.raises(ValueError, match="inner_size must be positive"):
        GatedFeedForward(0)
    assert keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(GatedFeedForward(8, activation="geglu"))
    ).activation == "geglu"
