"""Single-path supernet (`search="single_path"`): the sampled branch, its gate's gradient, the
model around it (fit, derive, configuration) and the JAX backend."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_jax
from keras import ops
from test_gumbel_choice import LOGITS, make_choice, softmax  # seed 7, these logits

from par_xl.configs import ConfigError, ModelConfig
from par_xl.cost.flops import training_flops_per_token
from par_xl.layers.choices import CHOICES
from par_xl.layers.relative_attention import causal_memory_mask, sinusoid_positions
from par_xl.layers.stochastic_block import StochasticBlock
from par_xl.models import PARTransformerXL

TINY = dict(vocab_size=50, d_model=16, num_heads=2, d_ffn=24, num_layers=3, mem_len=4,
            cutoffs=[10, 30], proj_factor=2, dropout_rate=0.0)  # fmt: skip


def test_one_choice_per_call_follows_softmax_of_logits_with_a_unit_gate():
    layer, n = make_choice(), 2000
    sample = tf.function(lambda: layer.single_choice(training=True))
    samples = [sample() for _ in range(n)]
    indices = np.array([int(index) for index, _ in samples])
    np.testing.assert_allclose([float(gate) for _, gate in samples], 1.0, atol=1e-6)
    frequencies = np.bincount(indices, minlength=3) / n
    p = softmax(LOGITS)
    assert np.all(np.abs(frequencies - p) < 5 * np.sqrt(p * (1 - p) / n)), (frequencies, p)
    index, gate = layer.single_choice(training=False)  # inference: the argmax, no noise
    assert int(index) == 0 and float(gate) == 1.0


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_gate_gradient_is_the_relaxed_sample_jacobian(tau):
    layer = make_choice(tau=tau)
    with tf.GradientTape() as tape:
        index, gate = layer.single_choice(training=True)
        loss = 3.0 * gate
    grad = tape.gradient(loss, layer.logits).numpy()
    # The same uniform draw, from a fresh generator with the layer's seed.
    u = ops.convert_to_numpy(
        keras.random.uniform((3,), 1e-10, 1.0, seed=keras.random.SeedGenerator(7))
    ).astype("float64")
    noisy = LOGITS - np.log(-np.log(u))
    k = int(np.argmax(noisy))
    p = softmax(noisy / tau)
    assert int(index) == k
    np.testing.assert_allclose(grad, 3.0 * p[k] * (np.eye(3)[k] - p) / tau, rtol=1e-4, atol=1e-7)


def block_inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 5, 16)).astype("float32")
    memory = rng.normal(size=(2, 3, 16)).astype("float32")
    positions = sinusoid_positions(8, 16)
    mask = causal_memory_mask(5, 3, 3)
    return x, memory, positions, mask


def test_block_computes_exactly_the_sampled_branch_and_trains_only_it():
    keras.utils.set_random_seed(0)
    block = StochasticBlock(2, 8, 24, search="single_path", seed=3)
    x, memory, positions, mask = block_inputs()
    block(x, memory, positions, mask)
    branches = [  # the registry's branches, in the block's order: A, F, I
        ops.convert_to_numpy(CHOICES[letter].apply(block, x, memory, positions, mask, False)[0])
        for letter in block.choices
    ]
    np.testing.assert_array_equal(branches[2], x)  # I
    attention_weights = block.attention.trainable_weights
    feed_forward_weights = block.feed_forward.trainable_weights
    seen = set()
    for _ in range(12):
        with tf.GradientTape() as tape:
            output = block(x, memory, positions, mask, training=True)
            loss = tf.reduce_sum(output * np.linspace(-1, 1, 16, dtype="float32"))
        output = output.numpy()
        matches = [k for k, b in enumerate(branches) if np.allclose(output, b, atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
        grads = tape.gradient(loss, [block.gumbel.logits, *attention_weights,
                                     *feed_forward_weights])  # fmt: skip
        logits_grad, grads = grads[0], grads[1:]
        attention_grads = grads[: len(attention_weights)]
        feed_forward_grads = grads[len(attention_weights) :]
        assert np.abs(logits_grad.numpy()).sum() > 0
        for k, branch_grads in ((0, attention_grads), (1, feed_forward_grads)):
            total = sum(0.0 if g is None else float(np.abs(g.numpy()).sum()) for g in branch_grads)
            assert (total > 0) == (matches[0] == k), (matches[0], k, total)
    assert seen == {0, 1, 2}


def make_model(**overrides):
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(**{**TINY, "search": "single_path", "seed": 1, **overrides})
    model.build((2, 5))
    return model


def tokens(shape, seed):
    return np.random.default_rng(seed).integers(0, 50, size=shape).astype("int32")


def test_inference_uses_the_argmax_branch_like_the_derived_model():
    model = make_model()
    assert model.choice_at_inference == "argmax"  # the single-path search's own default
    for block, letter in zip(model.blocks, "AFI"):
        block.gumbel.logits.assign(np.where(np.arange(3) == "AFI".index(letter), 1.0, 0.0))
    derived = model.derive()
    assert derived.architecture == "AFI"
    step = tf.function(lambda x: model(x), jit_compile=True)
    for seed in (2, 3):  # memory carried in both
        x = tokens((2, 5), seed)
        expected = ops.convert_to_numpy(derived(x))
        np.testing.assert_allclose(ops.convert_to_numpy(step(x)), expected, rtol=1e-5, atol=1e-6)


def test_fit_trains_the_choice_logits_and_round_trips(tmp_path):
    model = make_model(dropout_rate=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.choice_probabilities()[0]
    x, y = tokens((4, 2, 5), 4), tokens((4, 2, 5), 5)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.abs(model.choice_probabilities()[0] - before).max() > 1e-4
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.search == "single_path" and loaded.choice_at_inference == "argmax"
    model.reset_state()
    loaded.reset_state()
    x = tokens((2, 5), 6)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_flops_count_the_expected_branch():
    def flops(**overrides):
        return training_flops_per_token(make_model(**overrides), 5, 2)

    uniform = flops()  # logits start at zero: each branch with probability 1/3
    fixed = [flops(architecture=letter * 3) for letter in "AFI"]
    np.testing.assert_allclose(uniform, sum(fixed) / 3, rtol=1e-6)
    assert flops(search="all_branches") > uniform
    certain = make_model()
    for block in certain.blocks:
        block.gumbel.logits.assign([30.0, -30.0, -30.0])
    np.testing.assert_allclose(training_flops_per_token(certain, 5, 2), fixed[0], rtol=1e-6)


def test_configuration_names_the_search():
    with pytest.raises(ValueError, match="search must be one of"):
        PARTransformerXL(**TINY, search="greedy")
    with pytest.raises(ConfigError, match="--search must be one of"):
        ModelConfig(search="greedy").validate()
    assert PARTransformerXL(**TINY).choice_at_inference == "expected"
    assert make_model(choice_at_inference="expected").choice_at_inference == "expected"


JAX_SCRIPT = """
import json
import numpy as np, keras
from par_xl.models import PARTransformerXL
model = PARTransformerXL(vocab_size=50, d_model=16, num_heads=2, d_ffn=24, num_layers=3,
                         mem_len=4, cutoffs=[10, 30], proj_factor=2, dropout_rate=0.1,
                         search="single_path", seed=1)
rng = np.random.default_rng(0)
x, y = rng.integers(0, 50, (2, 8, 5)).astype("int32")
model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
history = model.fit(x, y, batch_size=2, shuffle=False, epochs=2, verbose=0)
print(json.dumps({"loss": history.history["loss"],
                  "probabilities": model.choice_probabilities()[0].tolist()}))
"""


@pytest.mark.slow
def test_jax_backend_trains_a_single_path_supernet(tmp_path):
    pytest.importorskip("jax")
    report = run_on_jax(JAX_SCRIPT, tmp_path)
    assert np.all(np.isfinite(report["loss"]))
    assert np.abs(np.array(report["probabilities"]) - 1 / 3).max() > 1e-4
