"""AdaptiveSoftmax: normalization, loss = -log p, plain-softmax limit, gradients, embedding."""

import keras
import numpy as np
import pytest
from keras import ops

from par_xl.layers.adaptive_softmax import AdaptiveSoftmax


def make_layer(vocab=30, cutoffs=(5, 12), width=8, proj_factor=2, seed=0):
    keras.utils.set_random_seed(seed)
    layer = AdaptiveSoftmax(
        vocab, cutoffs=cutoffs, proj_factor=proj_factor, kernel_initializer="glorot_uniform"
    )
    layer.build((None, width))
    rng = np.random.default_rng(seed)
    for weight in layer.weights:  # non-zero biases so that every term matters
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    return layer


def test_reduced_widths():
    layer = make_layer(vocab=30, cutoffs=(5, 12, 20), width=16, proj_factor=2)
    assert [tail[0].shape for tail in layer.tails] == [(7, 8), (8, 4), (10, 2)]


@pytest.mark.parametrize("cutoffs", [(), (5,), (5, 12), (1, 2, 29)])
def test_log_probs_normalized_and_loss_matches(cutoffs):
    layer = make_layer(cutoffs=cutoffs)
    hidden = np.random.default_rng(1).normal(size=(3, 4, 8)).astype("float32")
    log_probs = ops.convert_to_numpy(layer.log_probs(hidden))
    assert log_probs.shape == (3, 4, 30)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0, rtol=1e-5)
    labels = np.random.default_rng(2).integers(0, 30, size=(3, 4))
    labels[0, :] = [0, 29, cutoffs[0] if cutoffs else 1, 4]  # cluster edges
    loss = ops.convert_to_numpy(layer.loss(hidden, labels))
    expected = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)


def test_head_and_tail_factorization():
    layer = make_layer(cutoffs=(5, 12))
    hidden = np.random.default_rng(3).normal(size=(8,)).astype("float32")
    w = {v.name: ops.convert_to_numpy(v) for v in layer.weights}

    def log_softmax(x):
        return x - np.log(np.exp(x - x.max()).sum()) - x.max()

    head = log_softmax(
        np.concatenate([w["head_embedding"] @ hidden, hidden @ w["cluster_kernel"]])
        + w["head_bias"]
    )
    tail2 = log_softmax(
        w["tail_embedding_2"] @ (w["tail_projection_2"] @ hidden) + w["tail_bias_2"]
    )
    got = ops.convert_to_numpy(layer.log_probs(hidden[None]))[0]
    np.testing.assert_allclose(got[3], head[3], rtol=1e-5)
    np.testing.assert_allclose(got[12 + 4], head[5 + 1] + tail2[4], rtol=1e-5)


def test_no_cutoffs_is_full_softmax_cross_entropy():
    layer = make_layer(cutoffs=())
    hidden = np.random.default_rng(4).normal(size=(6, 8)).astype("float32")
    labels = np.arange(6) * 5
    logits = hidden @ ops.convert_to_numpy(layer.head_embedding).T + ops.convert_to_numpy(
        layer.head_bias
    )
    expected = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer.loss(hidden, labels)), ops.convert_to_numpy(expected), rtol=1e-5
    )


def test_gradients_match_finite_differences():
    import tensorflow as tf

    layer = make_layer(vocab=9, cutoffs=(3, 6), width=4, proj_factor=2)
    hidden = tf.constant(np.random.default_rng(5).normal(size=(5, 4)), tf.float64)
    labels = np.array([0, 4, 8, 2, 6])

    def total_loss(h):
        return tf.reduce_sum(tf.cast(layer.loss(tf.cast(h, tf.float32), labels), tf.float64))

    with tf.GradientTape() as tape:
        tape.watch(hidden)
        loss = total_loss(hidden)
    analytic = tape.gradient(loss, hidden).numpy()
    numeric = np.zeros_like(analytic)
    eps = 1e-2
    for index in np.ndindex(*analytic.shape):
        step = np.zeros(analytic.shape)
        step[index] = eps
        numeric[index] = (total_loss(hidden + step) - total_loss(hidden - step)).numpy() / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-3)
    # The embedding tables get gradients too: every cluster is used by some label.
    with tf.GradientTape() as tape:
        loss = total_loss(hidden)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None and np.abs(g.numpy()).sum() > 0 for g in grads)


def test_embed_uses_the_cluster_tables():
    layer = make_layer(cutoffs=(5, 12))
    ids = np.array([[0, 4, 5, 11, 12, 29]])
    got = ops.convert_to_numpy(layer.embed(ids))[0]
    w = {v.name: ops.convert_to_numpy(v) for v in layer.weights}
    np.testing.assert_allclose(got[1], w["head_embedding"][4], rtol=1e-6)
    np.testing.assert_allclose(got[3], w["tail_embedding_1"][6] @ w["tail_projection_1"], rtol=1e-5)
    np.testing.assert_allclose(
        got[5], w["tail_embedding_2"][17] @ w["tail_projection_2"], rtol=1e-5
    )


@pytest.mark.parametrize("cutoffs", [(5, 5), (0, 3), (3, 30), (7, 3)])
def test_rejects_bad_cutoffs(cutoffs):
    with pytest.raises(ValueError, match="strictly increasing"):
        AdaptiveSoftmax(30, cutoffs=cutoffs)


def test_config_round_trip():
    layer = AdaptiveSoftmax(30, cutoffs=(5, 12), proj_factor=2)
    assert AdaptiveSoftmax.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("members", [1, 3, 6])
def test_tail_capacities_are_exact_below_and_above_capacity(jit, members):
    """3 slots per tail: 1 or 3 members take the gathered branch, 6 the dense fallback."""
    import tensorflow as tf

    dense = make_layer(cutoffs=(5, 12))
    sparse = AdaptiveSoftmax(30, cutoffs=(5, 12), proj_factor=2, tail_capacities=[3, 3])
    sparse.build((None, 8))
    sparse.set_weights(dense.get_weights())
    rng = np.random.default_rng(members)
    hidden = tf.constant(rng.normal(size=(2, 6, 8)).astype("float32"))
    labels = rng.integers(0, 5, size=12)  # head tokens
    labels[rng.choice(12, members, replace=False)] = rng.integers(12, 30, size=members)
    labels[rng.choice(np.flatnonzero(labels < 5), 1)] = 7  # one member of tail 1
    labels = labels.reshape(2, 6)

    def loss_and_grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            loss = tf.reduce_sum(layer.loss(hidden, labels) * np.arange(12).reshape(2, 6))
        return [loss, *tape.gradient(loss, [hidden, *layer.trainable_weights])]

    expected = loss_and_grads(dense)
    got = tf.function(loss_and_grads, jit_compile=jit)(sparse)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(
            ops.convert_to_numpy(b), ops.convert_to_numpy(a), rtol=1e-5, atol=1e-6
        )


def test_tail_capacities_validation():
    with pytest.raises(ValueError, match="tail_capacities"):
        AdaptiveSoftmax(30, cutoffs=(5, 12), tail_capacities=[3])


def test_tail_capacities_are_the_most_labels_any_batch_has():
    import tensorflow as tf

    from par_xl.data.label_statistics import max_tail_labels_per_batch

    batches = [np.array([0, 6, 6, 13, 29]), np.array([[5, 6], [7, 8]]), np.array([1, 2, 3, 4])]
    # Tail 1 = [5, 12): at most 4 (second batch); tail 2 = [12, 30): at most 2 (first batch).
    assert max_tail_labels_per_batch(batches, (5, 12), 30, multiple=1) == [4, 2]
    assert max_tail_labels_per_batch(batches, (5, 12), 30, multiple=8) == [8, 8]
    # A dataset of (inputs, labels) batches, as load_dataset gives: only the labels count.
    labels = np.array([[[5, 6], [7, 8]], [[0, 13], [29, 1]]])
    dataset = tf.data.Dataset.from_tensor_slices((np.full_like(labels, 6), labels))
    assert max_tail_labels_per_batch(dataset, (5, 12), 30, multiple=1) == [4, 2]


def test_calling_the_layer_under_mixed_precision_gives_float32_log_probs():
    layer = make_layer()
    mixed = AdaptiveSoftmax(30, cutoffs=(5, 12), proj_factor=2, dtype="mixed_float16")
    mixed.build((None, 8))
    mixed.set_weights(layer.get_weights())
    hidden = np.random.default_rng(6).normal(size=(2, 3, 8)).astype("float32")
    log_probs = mixed(hidden)  # Keras's __call__: inputs cast to float16, an autocast scope
    assert log_probs.dtype == "float32"
    expected = ops.convert_to_numpy(layer.log_probs(hidden.astype("float16").astype("float32")))
    np.testing.assert_allclose(ops.convert_to_numpy(log_probs), expected, rtol=1e-5, atol=1e-5)
    embedded = mixed.embed(np.array([[0, 7, 29]]))
    assert embedded.dtype == "float16"


@pytest.mark.parametrize("cutoffs", [(), (5, 12)])
def test_unigram_bias_init_predicts_the_unigram_distribution(cutoffs):
    layer = make_layer(cutoffs=cutoffs)
    counts = np.random.default_rng(0).integers(1, 100, size=30).astype("float64")
    layer.initialize_biases(counts)
    for weight in layer.weights:
        if "bias" not in weight.name:
            weight.assign(np.zeros(weight.shape))
    log_probs = ops.convert_to_numpy(layer.log_probs(np.ones((2, 8), "float32")))
    np.testing.assert_allclose(np.exp(log_probs[0]), counts / counts.sum(), rtol=1e-4)
    with pytest.raises(ValueError, match="frequencies"):
        layer.initialize_biases(np.ones(29))
