"""PARTransformerXL: causality, memory equivalence, derive, serialization, XLA and JAX parity."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_jax
from keras import ops
from tiny_models import TinyModels, numpy

from par_xl.models import ModelState, PARTransformerXL

VOCAB = 50
TINY = TinyModels(2, 5, vocab_size=VOCAB, d_model=16, num_heads=2, d_ffn=24, num_layers=4,
                  cutoffs=[10, 30], proj_factor=2, dropout_rate=0.0, mem_len=8)  # fmt: skip


def random_state(model, batch, valid_length, seed=None):
    """A `ModelState` with random memory of the model's M, `valid_length` slots valid."""
    memory = model.initial_state(batch).xl_memory
    return ModelState({k: tf.random.normal(m.shape, seed=seed) for k, m in memory.items()},
                      valid_length)  # fmt: skip


@pytest.mark.parametrize("architecture", [None, "AFIA"])
def test_future_tokens_never_change_past_outputs(architecture):
    model = TINY.model(architecture=architecture)
    state = random_state(model, 2, 8)
    x = TINY.tokens((2, 7))
    changed = x.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % VOCAB
    before = numpy(model.forward(x, state)[0])
    after = numpy(model.forward(changed, state)[0])
    np.testing.assert_allclose(before[:, :4], after[:, :4], rtol=1e-5, atol=1e-6)
    assert np.abs(before[:, 4:] - after[:, 4:]).max() > 1e-3


@pytest.mark.parametrize("architecture", [None, "AFIA", "FFFF"])
@pytest.mark.parametrize("mem_len", [3, 8])
def test_segment_with_memory_equals_full_context(architecture, mem_len):
    model = TINY.model(architecture=architecture, mem_len=mem_len, segment=3)
    a, b = TINY.tokens((2, 3), seed=2), TINY.tokens((2, 3), seed=3)
    full = numpy(model.forward(np.concatenate([a, b], axis=1))[0])
    model.reset_state()
    np.testing.assert_allclose(numpy(model(a)), full[:, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numpy(model(b)), full[:, 3:], rtol=1e-5, atol=1e-5)
    if model.memory_blocks:
        assert numpy(model.valid_length).tolist() == [min(mem_len, 6)] * 2
    # The same through `forward`, the state carried by hand.
    hidden_a, state = model.forward(a, model.initial_state(2))
    hidden_b, state = model.forward(b, state)
    np.testing.assert_allclose(numpy(hidden_a), full[:, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numpy(hidden_b), full[:, 3:], rtol=1e-5, atol=1e-5)
    assert sorted(state.xl_memory) == [f"block_{i}" for i in model.memory_blocks]
    assert numpy(state.valid_length).tolist() == [min(mem_len, 6) if state.xl_memory else 0] * 2


def test_memory_keeps_the_last_mem_len_block_inputs():
    """With M < len(A), block l remembers exactly its last M inputs from segment A."""
    model = TINY.model(mem_len=2, segment=4)
    a, b = TINY.tokens((2, 4), seed=4), TINY.tokens((2, 4), seed=5)
    _, state = model.forward(a, model.initial_state(2))
    assert numpy(state.valid_length).tolist() == [2, 2]
    # Block 0's input is the scaled embedding (dropout is off).
    memory = numpy(state.xl_memory["block_0"])
    np.testing.assert_allclose(memory, numpy(model.embed(a))[:, -2:], rtol=1e-6)
    model(a)
    assert list(model.xl_memory) == list(state.xl_memory)  # the state variables, by block
    for name, variable in model.xl_memory.items():
        np.testing.assert_allclose(numpy(variable), numpy(state.xl_memory[name]), rtol=1e-6)
    np.testing.assert_allclose(
        numpy(model(b)), numpy(model.forward(b, state)[0]), rtol=1e-5, atol=1e-6
    )


def test_model_state_is_a_tf_nest_structure_and_a_jax_pytree():
    model = TINY.model(architecture="AFIA")
    state = model.initial_state(2)
    assert list(state.xl_memory) == ["block_0", "block_3"]  # the blocks that may attend
    assert numpy(state.valid_length).tolist() == [0, 0]
    assert model.initial_state(2, mem_len=0).xl_memory == {}
    leaves = tf.nest.flatten(state)
    assert len(leaves) == 3
    rebuilt = tf.nest.pack_sequence_as(state, leaves)
    assert isinstance(rebuilt, ModelState) and list(rebuilt.xl_memory) == list(state.xl_memory)
    jax = pytest.importorskip("jax")
    jax_leaves, tree = jax.tree_util.tree_flatten(state)
    assert len(jax_leaves) == 3
    assert isinstance(jax.tree_util.tree_unflatten(tree, jax_leaves), ModelState)


def test_reset_state_restarts_the_stream_and_memory_has_no_gradient():
    model = TINY.model()
    a, b = TINY.tokens((2, 5), seed=6), TINY.tokens((2, 5), seed=7)
    first = numpy(model(a))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(b))
    assert all(g is None for g in tape.gradient(loss, list(model.xl_memory.values())))
    model.reset_state()
    assert numpy(model.valid_length).tolist() == [0, 0]
    np.testing.assert_allclose(numpy(model(a)), first, rtol=1e-6)


def test_wrong_batch_size_names_the_fix():
    model = TINY.model(batch=2)
    with pytest.raises(ValueError, match="initial_state"):
        model(TINY.tokens((3, 5)))


@pytest.mark.parametrize("architecture", ["AFIA", "IIFA"])
def test_derive_reproduces_supernet_with_one_hot_choices(architecture):
    model = TINY.model(choice_at_inference="argmax")
    for block, letter in zip(model.blocks, architecture):
        block.gumbel.logits.assign(np.where(np.arange(3) == "AFI".index(letter), 5.0, -5.0))
    assert model.choice_probabilities()[1] == architecture
    derived = model.derive()
    assert derived.architecture == architecture
    assert derived.count_params() < model.count_params()
    for x in (TINY.tokens((2, 5), seed=8), TINY.tokens((2, 5), seed=9)):  # memory carried in both
        np.testing.assert_allclose(numpy(derived(x)), numpy(model(x)), rtol=1e-5, atol=1e-6)


def test_choice_probabilities_report_every_block():
    model = TINY.model()
    model.blocks[0].gumbel.logits.assign([0.0, 2.0, 0.0])
    logits = np.stack([numpy(block.gumbel.logits) for block in model.blocks])  # (4, 3)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probabilities, string = model.choice_probabilities()
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
    assert string == "".join("AFI"[i] for i in expected.argmax(1)) == "FIAI"
    # Fixed blocks report their choice with certainty.
    fixed_probabilities, fixed = TINY.model(architecture="AFIA").choice_probabilities()
    np.testing.assert_array_equal(fixed_probabilities, np.eye(3)[[0, 1, 2, 0]])
    assert fixed == "AFIA"


def test_fit_carries_memory_and_reports_corpus_perplexity():
    model = TINY.model(batch=2, segment=5, dropout_rate=0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = TINY.tokens((6, 2, 5), seed=10), TINY.tokens((6, 2, 5), seed=11)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), epochs=2, verbose=0)
    logs = history.history
    assert numpy(model.valid_length).tolist() == [8, 8]
    np.testing.assert_allclose(logs["perplexity"][-1], np.exp(logs["loss"][-1]), rtol=1e-4)
    np.testing.assert_allclose(logs["bits_per_token"][-1], logs["loss"][-1] / np.log(2), rtol=1e-4)
    model.reset_state()
    result = model.evaluate(tf.data.Dataset.from_tensor_slices((x, y)), verbose=0, return_dict=True)
    # Evaluation in order with memory equals the same computation done by hand.
    model.reset_state()
    nll = [numpy(model.output_layer.loss(model(xi), yi)) for xi, yi in zip(x, y)]
    np.testing.assert_allclose(result["loss"], np.mean(nll), rtol=1e-5)


def test_choice_logits_and_all_sublayers_train():
    model = TINY.model(dropout_rate=0.0, num_layers=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [numpy(w).copy() for w in model.trainable_weights]
    x, y = TINY.tokens((2, 2, 5), seed=12), TINY.tokens((2, 2, 5), seed=13)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)), epochs=1, verbose=0)
    names = [w.path for w in model.trainable_weights]
    assert any("gumbel/logits" in n for n in names)
    for name, old, new in zip(names, before, model.trainable_weights):
        assert np.abs(numpy(new) - old).max() > 0, f"{name} did not train"


def test_tied_embeddings_share_the_adaptive_tables():
    model = TINY.model(tie_embeddings=True)
    untied = TINY.model()
    assert model.embedding is None
    assert model.count_params() < untied.count_params()
    ids = TINY.tokens((2, 5))
    np.testing.assert_allclose(
        numpy(model.embed(ids)), numpy(model.output_layer.embed(ids)) * 4.0, rtol=1e-6
    )


def test_config_round_trip_and_keras_file(tmp_path):
    model = TINY.model(tie_embeddings=True, cutoffs=[10])
    x = TINY.tokens((2, 5))
    model(x)  # some memory state, saved with the model
    clone = PARTransformerXL.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, PARTransformerXL)
    assert numpy(loaded.valid_length).tolist() == [5, 5]
    assert numpy(model.valid_length).tolist() == [5, 5]
    np.testing.assert_allclose(numpy(loaded(x)), numpy(model(x)), rtol=1e-6, atol=1e-6)


def test_xla_and_eager_agree():
    model = TINY.model()
    x = TINY.tokens((2, 5))
    state = random_state(model, 2, tf.constant([6, 3]), seed=1)

    def run(ids, state):
        hidden, new_state = model.forward(ids, state)
        return model.log_probs(hidden), new_state

    eager = run(x, state)
    compiled = tf.function(run, jit_compile=True)(x, state)
    assert isinstance(compiled[1], ModelState)  # a tf.nest structure in and out
    for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(compiled)):
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # two compilations of the supernet's training step: ~40 s on 2 cores
def test_fit_with_and_without_xla_agree():
    x, y = TINY.tokens((3, 2, 5), seed=14), TINY.tokens((3, 2, 5), seed=15)
    losses = []
    for jit in (False, True):
        model = TINY.model(seed=3, num_layers=2)  # two blocks: memory passed on; XLA time halved
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit)
        history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), epochs=2, verbose=0)
        losses.append(history.history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


JAX_SCRIPT = """
import json, sys
import numpy as np, keras
import par_xl.models  # registers the classes
model = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])
first = keras.ops.convert_to_numpy(model(x[0]))
second = keras.ops.convert_to_numpy(model.log_probs(model(x[1])))
model.compile(optimizer="adam", jit_compile=True)
model.reset_state()  # one fitted batch of 5 tokens must leave 5 valid memory slots
history = model.fit(x[0], x[1], batch_size=x.shape[1], shuffle=False, epochs=1, verbose=0)
np.savez(sys.argv[3], first=first, second=second)
print(json.dumps({"backend": keras.backend.backend(), "loss": history.history["loss"][-1],
                  "valid_memory_length":
                      keras.ops.convert_to_numpy(model.valid_length).tolist()}))
"""


@pytest.mark.slow
def test_jax_backend_matches_tensorflow(tmp_path):
    pytest.importorskip("jax")
    model = TINY.model(seed=4, num_layers=2)  # JAX's compile time grows with the blocks
    x = TINY.tokens((2, 2, 5), seed=16)
    path = tmp_path / "model.keras"
    model.save(path)
    first = numpy(model(x[0]))
    second = numpy(model.log_probs(model(x[1])))
    np.save(tmp_path / "x.npy", x)
    report = run_on_jax(
        JAX_SCRIPT, tmp_path, str(path), str(tmp_path / "x.npy"), str(tmp_path / "o.npz")
    )
    assert report["backend"] == "jax" and np.isfinite(report["loss"])
    assert report["valid_memory_length"] == [5, 5]
    outputs = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(outputs["first"], first, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["second"], second, rtol=1e-4, atol=1e-4)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="num_heads=3 must divide d_model=10"):
        PARTransformerXL(vocab_size=10, d_model=10, num_heads=3)
    with pytest.raises(ValueError, match="architecture"):
        PARTransformerXL(vocab_size=10, d_model=8, num_heads=2, num_layers=2, architecture="AX")
    with pytest.raises(ValueError, match="cutoffs"):
        PARTransformerXL(vocab_size=10, d_model=8, num_heads=2, cutoffs=[5, 3])


def test_mixed_precision_trains_with_a_float32_output_layer():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = PARTransformerXL(**{**TINY.config, "num_layers": 2}, tie_embeddings=True,
                                 tail_capacities=[8, 8])  # fmt: skip
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        x, y = TINY.tokens((2, 2, 5), seed=17), TINY.tokens((2, 2, 5), seed=18)
        history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        hidden = model(x[0])
        assert hidden.dtype == "float16"
        log_probs = model.log_probs(hidden)
        assert log_probs.dtype == "float32"
        np.testing.assert_allclose(numpy(ops.exp(log_probs)).sum(-1), 1.0, rtol=1e-4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
