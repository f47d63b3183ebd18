"""`FusedAdam` against Keras's Adam and a NumPy reference; `make_optimizer`. Training under
tf.distribute with it (mirrored, multi-worker) is tested in tests/test_distribution.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from par_xl.training.optimizers import OPTIMIZERS, FusedAdam, make_optimizer


def numpy_adam(weights, gradients, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam as Keras documents it (epsilon outside the bias-corrected square root)."""
    weights = weights.astype("float64")
    m = np.zeros_like(weights)
    v = np.zeros_like(weights)
    for t, g in enumerate(gradients, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        alpha = learning_rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        weights = weights - alpha * m / (np.sqrt(v) + epsilon)
    return weights


def train(optimizer, weights, gradients, compiled):
    variable = keras.Variable(weights)

    def step(gradient):
        optimizer.apply_gradients([(gradient, variable)])

    if compiled:
        step = tf.function(step)
    for gradient in gradients:
        step(gradient)
    return variable.numpy(), optimizer


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_adam_equals_keras_adam_and_numpy(compiled):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(40, 24)).astype("float32")
    gradients = [rng.normal(size=weights.shape).astype("float32") for _ in range(6)]
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 2, 0.5)
    fused, optimizer = train(FusedAdam(schedule), weights, gradients, compiled)
    plain, _ = train(keras.optimizers.Adam(schedule), weights, gradients, compiled)
    rates = [1e-2 * 0.5 ** (step / 2) for step in range(6)]
    reference = weights.astype("float64")
    m = np.zeros_like(reference)
    v = np.zeros_like(reference)
    for t, (g, rate) in enumerate(zip(gradients, rates), start=1):  # the decaying rate
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        reference -= rate * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    assert np.abs(fused - weights).max() > 1e-3  # it trained
    np.testing.assert_allclose(fused, plain, rtol=0, atol=2e-6)
    np.testing.assert_allclose(fused, reference, rtol=0, atol=2e-6)
    assert int(optimizer.iterations.numpy()) == 6
    np.testing.assert_allclose(  # the slots Keras's Adam keeps, so checkpoints carry over
        optimizer._momentums[0].numpy(), m, rtol=1e-5, atol=1e-7
    )


def test_fused_adam_sparse_gradient_is_dense_adam():
    """An embedding's `IndexedSlices` gradient: rows not looked up still decay their moments
    and move, as in Keras's Adam."""
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(10, 4)).astype("float32")
    rows = tf.constant([1, 1, 7])
    values = rng.normal(size=(3, 4)).astype("float32")
    sparse = [tf.IndexedSlices(tf.constant(values), rows, tf.constant([10, 4]))] * 3
    dense = tf.math.unsorted_segment_sum(values, rows, 10).numpy()
    fused, _ = train(FusedAdam(1e-2), weights, sparse, compiled=True)
    np.testing.assert_allclose(fused, numpy_adam(weights, [dense] * 3, 1e-2), atol=2e-6)
    assert np.abs(fused[3] - weights[3]).max() == 0  # never a gradient: m = v = 0, no move
    assert np.abs(fused[7] - weights[7]).max() > 1e-3


def test_fused_adam_round_trips_its_config():
    optimizer = FusedAdam(3e-4, beta_2=0.98, epsilon=1e-6)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is FusedAdam
    assert restored.get_config() == optimizer.get_config()


def test_make_optimizer_names():
    assert type(make_optimizer("adam", 1e-3)) is FusedAdam
    sgd = make_optimizer("sgd", 1e-3)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    assert set(OPTIMIZERS) == {"adam", "adamw", "lamb", "sgd"}


def test_every_configurable_optimizer_is_built():
    """`--opt_name` takes exactly the names the training side can build."""
    from par_xl import configs

    assert tuple(OPTIMIZERS) == configs.OPTIMIZERS
