"""GumbelChoice: sampling statistics, temperature, straight-through, inference modes."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from par_xl.layers.gumbel_choice import GumbelChoice

LOGITS = np.array([1.0, -0.5, 0.3], "float32")


def make_choice(**kwargs):
    layer = GumbelChoice(3, seed=7, **kwargs)
    layer.build()
    layer.logits.assign(LOGITS)
    return layer


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_argmax_frequencies_follow_softmax_of_logits():
    n = 20000
    weights = ops.convert_to_numpy(make_choice()(np.zeros((n, 1)), training=True))
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    frequencies = np.bincount(weights.argmax(-1), minlength=3) / n
    p = softmax(LOGITS)
    # Gumbel-max: argmax(logits + g) ~ Categorical(softmax(logits)); 5 standard errors.
    assert np.all(np.abs(frequencies - p) < 5 * np.sqrt(p * (1 - p) / n)), (frequencies, p)


def test_samples_approach_one_hot_as_tau_goes_to_zero():
    batch = np.zeros((2000, 1))
    warm = ops.convert_to_numpy(make_choice(tau=5.0)(batch, training=True)).max(-1)
    cold = ops.convert_to_numpy(make_choice(tau=0.01)(batch, training=True)).max(-1)
    assert np.median(warm) < 0.6
    assert np.mean(cold > 0.99) > 0.97


def test_tau_is_read_from_its_variable_each_call():
    layer = make_choice(tau=5.0)
    layer.tau.assign(0.01)
    assert (
        np.mean(ops.convert_to_numpy(layer(np.zeros((500, 1)), training=True)).max(-1) > 0.99) > 0.9
    )
    assert [w.name for w in layer.trainable_weights] == ["logits"]
    trainable = make_choice(tau_is_trainable=True)
    assert [w.name for w in trainable.trainable_weights] == ["logits", "tau"]


def test_each_example_gets_its_own_sample():
    weights = ops.convert_to_numpy(make_choice()(np.zeros((64, 1)), training=True))
    assert len(np.unique(weights.argmax(-1))) == 3


def test_straight_through_is_one_hot_forward_and_passes_gradients():
    layer = make_choice(straight_through=True)
    target = tf.constant([[0.0, 1.0, 2.0]])
    with tf.GradientTape() as tape:
        weights = layer(np.zeros((16, 1)), training=True)
        loss = tf.reduce_sum(weights * target)
    values = weights.numpy()
    np.testing.assert_allclose(np.sort(values, -1), np.tile([0.0, 0.0, 1.0], (16, 1)), atol=1e-6)
    grad = tape.gradient(loss, layer.logits).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 1e-3


def test_soft_samples_pass_gradients_to_logits_and_tau():
    layer = make_choice(tau_is_trainable=True)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(np.zeros((8, 1)), training=True) * [[0.0, 1.0, 2.0]])
    grad_logits, grad_tau = tape.gradient(loss, [layer.logits, layer.tau])
    assert np.abs(grad_logits.numpy()).sum() > 0 and grad_tau.numpy() != 0


@pytest.mark.parametrize("mode", ["expected", "argmax"])
def test_inference_is_deterministic(mode):
    layer = make_choice(choice_at_inference=mode)
    first = ops.convert_to_numpy(layer(np.zeros((4, 1)), training=False))
    second = ops.convert_to_numpy(layer(np.zeros((4, 1)), training=False))
    np.testing.assert_array_equal(first, second)
    expected = softmax(LOGITS) if mode == "expected" else np.eye(3)[LOGITS.argmax()]
    np.testing.assert_allclose(first, np.tile(expected, (4, 1)), rtol=1e-6)


def test_validation_and_config():
    with pytest.raises(ValueError, match="choice_at_inference"):
        GumbelChoice(choice_at_inference="sample")
    with pytest.raises(ValueError, match="tau"):
        GumbelChoice(tau=0.0)
    layer = GumbelChoice(3, tau=2.0, straight_through=True, choice_at_inference="argmax", seed=3)
    assert GumbelChoice.from_config(layer.get_config()).get_config() == layer.get_config()
