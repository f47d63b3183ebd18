"""The kNN memory inside the model (issue 11): the "M" choice (memorizing attention), its
stores in the model state, causality, documents, fit with and without XLA, checkpoints and
resume, save/load, the search over M, derive, configuration errors, evaluation, generation,
and the JAX backend."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_jax
from scripts import run_script
from test_generation import reference_generate
from tiny_models import TinyModels, assert_resume_is_exact, assert_saved_and_loaded, numpy

from par_xl.configs import ConfigError, ModelConfig
from par_xl.memory import ScannKNNMemory
from par_xl.memory.exact_state import KNNState
from par_xl.models import PARTransformerXL
from par_xl.models.compiled import compiled_function
from par_xl.models.generation import generate, read_prompt, sample
from par_xl.training import evaluation
from par_xl.training.evaluation import evaluate_batches

VOCAB, B, T, C, K = 40, 2, 4, 6, 2  # C slots per stream and head, K neighbours
TINY = TinyModels(B, T, fit_config=dict(knn_layers=[1]), vocab_size=VOCAB, d_model=16,
                  num_heads=2, d_ffn=24, num_layers=3, mem_len=3, cutoffs=[10], dropout_rate=0.0,
                  knn_memory_size=C, knn_neighbors=K)  # fmt: skip


def store_arrays(model):
    """The model's kNN store variables, `{block name: KNNState of numpy arrays}`."""
    return {name: KNNState(*map(numpy, store)) for name, store in model.knn_store.items()}


def test_a_closed_gate_on_the_store_equals_plain_attention():
    memorizing, plain = TINY.model(architecture="FMA"), TINY.model(seed=1, architecture="FAA")
    pairs = [(memorizing.embedding, plain.embedding), (memorizing.output_layer, plain.output_layer)]
    for source, target in zip(memorizing.blocks, plain.blocks):
        pairs += [(getattr(source, name), getattr(target, name))
                  for name in ("feed_forward", "feed_forward_norm", "attention", "attention_norm")
                  if hasattr(source, name)]  # fmt: skip
    block = memorizing.blocks[1]
    pairs.append((block.memorizing_attention_norm, plain.blocks[1].attention_norm))
    for source, target in pairs:
        target.set_weights(source.get_weights())
    weights = {w.name: w for w in block.memorizing_attention.weights}  # A's, gate, scale
    for weight in plain.blocks[1].attention.weights:
        weight.assign(weights[weight.name])
    segments = [TINY.tokens((B, T), seed) for seed in range(3)]
    block.memorizing_attention.gate_bias.assign([-1e4, -1e4])  # sigmoid: 0, the local only
    for x in segments:
        np.testing.assert_allclose(numpy(memorizing(x)), numpy(plain(x)), rtol=1e-6, atol=1e-6)
    assert store_arrays(memorizing)["block_1"].length.tolist() == [C, C]  # it was searched
    # Open, the gate mixes in what the store returns: the same while it is empty, then not.
    block.memorizing_attention.gate_bias.assign([0.0, 0.0])
    memorizing.reset_state(), plain.reset_state()
    np.testing.assert_allclose(numpy(memorizing(segments[0])), numpy(plain(segments[0])),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    assert np.abs(numpy(memorizing(segments[1])) - numpy(plain(segments[1]))).max() > 1e-3


def forward_segments(model, ids, count=3):
    """`forward` over `count` segments of `ids` from an empty state: `(B, count * T, D)`."""
    state, hidden = model.initial_state(ids.shape[0]), []
    for segment in np.split(ids, count, axis=1):
        output, state = model.forward(segment, state)
        hidden.append(numpy(output))
    return np.concatenate(hidden, axis=1), state


@pytest.mark.parametrize("architecture", [None, "FMA"], ids=["supernet", "fixed"])
def test_future_tokens_never_change_past_outputs_through_the_store(architecture):
    """A query searches the store before its segment is added: a token changes nothing before
    it, in its own segment or earlier ones, and the later segments that retrieve it."""
    model = TINY.model(architecture=architecture, knn_layers=[] if architecture else [1])
    assert model.knn_blocks == [1] and model.blocks[1].offered in ("M", "MFI")
    x = TINY.tokens((B, 3 * T), seed=4)
    changed = x.copy()
    changed[:, 6] = (x[:, 6] + 1) % VOCAB  # the third position of the second segment
    before, _ = forward_segments(model, x)
    after, _ = forward_segments(model, changed)
    np.testing.assert_allclose(before[:, :6], after[:, :6], rtol=1e-5, atol=1e-6)
    assert np.abs(before[:, 6:] - after[:, 6:]).max() > 1e-3


def projected(layer, inputs, kernel):
    """`inputs (B, T, D)` projected by `layer`'s `kernel` `(D, N, H)` -> `(B, N, T, H)`."""
    return np.einsum("btd,dnh->bnth", inputs, numpy(getattr(layer, kernel)))


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_the_store_holds_exactly_the_segments_keys_and_values_newest_last():
    model = TINY.model(architecture="MF", num_layers=2)  # block 0's input is the scaled embedding
    layer = model.blocks[0].memorizing_attention
    first, second = TINY.tokens((B, T), seed=5), TINY.tokens((B, T), seed=6)
    _, state = model.forward(first, model.initial_state(B))
    store = state.knn["block_0"]
    embedded = numpy(model.embed(first))
    np.testing.assert_allclose(numpy(store.keys)[:, :, :T],
                               unit(projected(layer, embedded, "key_kernel")), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(numpy(store.values)[:, :, :T],
                               projected(layer, embedded, "value_kernel"), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    assert numpy(store.length).tolist() == [T, T] and numpy(store.position).tolist() == [T, T]
    # The next segment fills the ring: slots 4, 5, 0, 1; the C newest entries stay valid.
    _, state = model.forward(second, state)
    store = state.knn["block_0"]
    keys = unit(projected(layer, numpy(model.embed(second)), "key_kernel"))
    np.testing.assert_allclose(numpy(store.keys)[:, :, [4, 5, 0, 1]], keys, rtol=1e-5, atol=1e-6)
    assert numpy(store.length).tolist() == [C, C] and numpy(store.position).tolist() == [2, 2]
    # The state variables `call` carries hold what `forward` returns.
    model(first), model(second)
    for expected, variable in zip(state.knn["block_0"], model.knn_store["block_0"]):
        np.testing.assert_allclose(numpy(variable), numpy(expected), rtol=1e-6, atol=1e-7)


def test_a_document_start_clears_the_streams_store():
    """With document boundaries, what a row saw before a start changes nothing after it,
    through the XL memory and the store alike; the other row keeps its store."""
    model = TINY.model(architecture="AMF", document_boundaries=True)
    starts = np.zeros((3, B, T), "int32")
    starts[1, 0, 2] = 1  # row 0: a document starts at the second segment's third position
    x = TINY.tokens((3, B, T), seed=7)
    other = x.copy()
    other[0, 0], other[1, 0, :2] = TINY.tokens((T,), 8), TINY.tokens((2,), 9)  # row 0 before
    outputs = []
    for ids in (x, other):
        model.reset_state()
        batches = [{"token_ids": i, "document_starts": s} for i, s in zip(ids, starts)]
        outputs.append([numpy(model(batch)) for batch in batches[:2]])
        assert store_arrays(model)["block_1"].length.tolist() == [2, C]  # row 0: since start
        outputs[-1].append(numpy(model(batches[2])))
    first, second = outputs
    np.testing.assert_allclose(second[1][0, 2:], first[1][0, 2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second[2][0], first[2][0], rtol=1e-5, atol=1e-6)
    assert np.abs(second[1][0, :2] - first[1][0, :2]).max() > 1e-3  # the change shows before


@pytest.mark.slow  # XLA compiles the step in ~10 s on 2 cores
def test_fit_with_and_without_xla_gives_the_same_losses_and_stores():
    results = []
    for jit_compile in (False, True):  # no noise: XLA draws other random numbers
        model = TINY.compiled(jit_compile, knn_layers=[], architecture="AMF", dropout_rate=0.0)
        history = model.fit(TINY.batches(4), epochs=2, shuffle=False, verbose=0)
        results.append((history.history["loss"], store_arrays(model)["block_1"]))
        assert model.get_state().knn["block_1"].length.tolist() == [C, C]
    (losses, store), (xla_losses, xla_store) = results
    np.testing.assert_allclose(xla_losses, losses, rtol=1e-5)
    for name, a, b in zip(KNNState._fields, store, xla_store):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)


def test_resume_from_a_checkpoint_continues_with_the_same_store(tmp_path):
    resumed = assert_resume_is_exact(TINY, tmp_path, steps=6)
    assert store_arrays(resumed)["block_1"].length.tolist() == [C, C]


def test_saved_and_loaded_with_its_stores(tmp_path):
    cleared = assert_saved_and_loaded(TINY, tmp_path, architecture="AMF")
    assert store_arrays(cleared)["block_1"].length.tolist() == [0, 0]


def test_mixed_precision_keeps_the_stores_in_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = TINY.compiled(False)
        history = model.fit(TINY.batches(3), shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(history.history["loss"][-1])
    store = model.knn_store["block_1"]
    assert [v.dtype for v in store] == ["float16", "float16", "int32", "int32"]
    assert numpy(store.length).tolist() == [C, C] and np.isfinite(numpy(store.keys)).all()


@pytest.mark.parametrize("search", ["all_branches", "single_path"])
def test_a_search_over_amfi_trains_and_derive_keeps_m(search):
    model = TINY.compiled(False, knn_layers=[], choices="AMFI", search=search)
    assert model.choice_letters == "AFIM" and model.knn_blocks == [0, 1, 2]
    logits = [numpy(block.gumbel.logits) for block in model.blocks]
    history = model.fit(TINY.batches(4), shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.abs(numpy(b.gumbel.logits) - a).max() > 0 for b, a in zip(model.blocks, logits))
    if search == "all_branches":  # M computed at every step: every store holds the last C
        assert all(s.length.tolist() == [C, C] for s in store_arrays(model).values())
    for block, letter in zip(model.blocks, "MFM"):  # the order of the choice logits: AMFI
        block.gumbel.logits.assign(np.where(np.array(list("AMFI")) == letter, 5.0, -5.0))
    derived = model.derive()
    assert derived.architecture == "MFM" and derived.knn_layers == [0, 2]
    assert derived.knn_blocks == [0, 2] and derived.choice_letters == "AFIM"
    for source, target in zip(model.blocks[::2], derived.blocks[::2]):
        for a, b in zip(source.memorizing_attention.weights, target.memorizing_attention.weights):
            np.testing.assert_array_equal(numpy(b), numpy(a))
    assert all(s.length.tolist() == [0, 0] for s in store_arrays(derived).values())  # empty


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(knn_layers=(6,)), "--knn_layers must be distinct block indices in [0, 6), "
                                "received [6]"),
        (dict(knn_layers=(1, 1)), "--knn_layers must be distinct block indices"),
        (dict(knn_layers=(1,), choices="AMFI"), "cannot be given with choices='AMFI'"),
        (dict(knn_layers=(1,), choices="FI"), "--knn_layers=[1] needs an A in choices='FI'"),
        (dict(knn_layers=(1,), architecture="AAFAFF"),
         "--knn_layers=[1] must be the M blocks of architecture='AAFAFF', []"),
        (dict(knn_layers=(2,), architecture="AMFAFF"),
         "the M blocks of architecture='AMFAFF', [1]"),
        (dict(knn_memory_size=16), "--knn_memory_size must be at least knn_neighbors=32"),
        (dict(knn_neighbors=0), "--knn_neighbors must be a positive integer, received 0"),
        (dict(knn_backend="faiss"), "--knn_backend must be one of ('exact', 'scann')"),
    ],
)  # fmt: skip
def test_knn_flags_are_validated(changes, message):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**changes).validate()
    assert message in str(error.value)
    with pytest.raises(ValueError, match="^knn_"):  # the model says the same, unprefixed
        PARTransformerXL(**dataclasses.replace(ModelConfig(), **changes).model_kwargs())


def test_train_py_names_the_knn_flag_that_cannot_work(tiny_data, tmp_path):
    flags = [f"--train_directory={tiny_data}/tf/train", f"--valid_directory={tiny_data}/tf/valid",
             f"--sp_model_prefix={tiny_data}/sp", "--preset=tiny", "--cutoffs=20",
             f"--log_dir={tmp_path}"]  # fmt: skip
    result = run_script("train.py", *flags, "--knn_layers=1", "--choices=AMFI")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--knn_layers=[1] cannot be given with choices='AMFI'" in result.stderr


def test_knn_flags_that_work():
    ModelConfig(knn_layers=(1, 4)).validate()  # M in place of A in blocks 1 and 4
    ModelConfig(architecture="AMFAFM", knn_layers=(5, 1)).validate()  # the same blocks
    ModelConfig(architecture="AMFAFM").validate()
    ModelConfig(choices="AMFI").validate()
    ModelConfig(knn_memory_size=32, knn_backend="scann").validate()
    model = PARTransformerXL(**ModelConfig(knn_layers=(4, 1)).model_kwargs())
    assert model.knn_layers == [1, 4] and [b.offered for b in model.blocks][:2] == ["AFI", "MFI"]


def test_evaluation_carries_the_stores_from_empty():
    model = TINY.model(knn_layers=[1])
    model.compile(optimizer="adam", jit_compile=False)
    data = list(TINY.batches(3))
    model(data[0][0])  # a training state that evaluation leaves alone
    before = store_arrays(model)
    result = evaluate_batches(model, data)
    for name, store in before.items():
        for a, b in zip(store, store_arrays(model)[name]):
            np.testing.assert_array_equal(b, a)
    model.reset_state()  # by hand: the stores empty, then carried from batch to batch
    losses = [float(np.mean(numpy(model.output_layer.loss(model(x), y)))) for x, y in data]
    np.testing.assert_allclose(result["loss"], np.mean(losses), rtol=1e-5)
    model.reset_state()
    assert np.abs(numpy(model(data[1][0])) - numpy(model(data[1][0]))).max() > 1e-4  # it reads


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["graph", "xla"])  # fmt: skip
def test_generation_carries_the_stores_through_its_loop(jit_compile):
    model = TINY.model(knn_layers=[1])
    prompt = np.random.default_rng(5).integers(0, VOCAB, 11).tolist()  # 10 read: 3 chunks
    settings = dict(temperature=0.9, top_k=0, top_p=1.0)
    ids, scores = generate(model, prompt, 12, seed=3, chunk_length=4, jit_compile=jit_compile,
                           **settings)  # fmt: skip
    expected_ids, expected_scores = reference_generate(model, prompt, 12, seed=3, chunk=4,
                                                       **settings)  # fmt: skip
    assert ids == expected_ids
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)


JAX_SCRIPT = """
import json, sys
import numpy as np, keras
import par_xl.models  # registers the classes
model = keras.saving.load_model(sys.argv[1])
x, y = np.load(sys.argv[2])
outputs = [keras.ops.convert_to_numpy(model(segment)) for segment in x]
model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
model.reset_state()
history = model.fit(x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]),
                    batch_size=x.shape[1], shuffle=False, verbose=0)
store = model.get_state().knn["block_1"]
np.savez(sys.argv[3], outputs=np.stack(outputs), keys=store.keys)
try:
    type(model).from_config({**model.get_config(), "knn_backend": "scann"})  # refused
    refused = "no error"
except ValueError as error:
    refused = str(error)
print(json.dumps({"backend": keras.backend.backend(), "loss": history.history["loss"][-1],
                  "length": store.length.tolist(), "scann": refused}))
"""


@pytest.mark.slow
def test_jax_backend_carries_the_exact_store_like_tensorflow(tmp_path):
    pytest.importorskip("jax")
    model = TINY.model(architecture="AMF")
    path = tmp_path / "model.keras"
    model.save(path)
    x, y = TINY.tokens((3, B, T), seed=20), TINY.tokens((3, B, T), seed=21)
    outputs = np.stack([numpy(model(segment)) for segment in x])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    model.reset_state()
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), shuffle=False, verbose=0)
    np.save(tmp_path / "xy.npy", np.stack([x, y]))
    report = run_on_jax(JAX_SCRIPT, tmp_path, str(path), str(tmp_path / "xy.npy"),
                        str(tmp_path / "o.npz"))  # fmt: skip
    assert report["backend"] == "jax" and report["length"] == [C, C]
    assert report["scann"].startswith("knn_backend='scann' needs the TensorFlow backend")
    np.testing.assert_allclose(report["loss"], history.history["loss"][-1], rtol=1e-4)
    saved = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(saved["outputs"], outputs, rtol=1e-4, atol=1e-5)
    keys = numpy(model.knn_store["block_1"].keys)
    np.testing.assert_allclose(saved["keys"], keys, rtol=1e-4, atol=1e-5)


def test_scann_evaluation_and_generation_search_like_the_exact_store():
    """Below ScaNN's index size (4,096 entries a row) its memory searches exactly: the same
    losses and samples as the exact store, from memories kept beside the state, filled in
    place on the host (no XLA: refused when asked for), traced once."""
    exact = TINY.model(knn_layers=[1])
    scann = PARTransformerXL.from_config({**exact.get_config(), "knn_backend": "scann"})
    scann.build((B, T))
    scann.set_weights(exact.get_weights())
    exact.compile(jit_compile=False)
    scann.compile(jit_compile=True)  # training's setting: evaluation leaves XLA out
    data = list(TINY.batches(3))
    expected = evaluate_batches(exact, data)["loss"]
    for _ in range(2):  # the memories start empty each time, and are traced once
        np.testing.assert_allclose(evaluate_batches(scann, data)["loss"], expected, rtol=1e-5)
    step = compiled_function(scann, evaluation._evaluation_step, False)
    assert step.experimental_get_tracing_count() == 1
    state, memories = scann.inference_state(B)
    assert state.knn == {} and list(memories) == ["block_1"]
    assert isinstance(memories["block_1"], ScannKNNMemory)
    prompt = read_prompt(scann, list(range(1, 12)), chunk_length=4)
    assert prompt.knn_memories["block_1"]["length"].tolist() == [C]  # of 10 read
    ids = [sample(scann, prompt, 8, seed=seed)[0] for seed in (1, 1, 2)]
    assert ids[0] == ids[1] != ids[2]  # a read prompt is not changed by sampling from it
    assert ids[0] == generate(exact, list(range(1, 12)), 8, seed=1, chunk_length=4,
                              jit_compile=False)[0]  # fmt: skip
    with pytest.raises(ValueError, match="jit_compile must be False with knn_backend='scann'"):
        generate(scann, [1, 2, 3], 2, jit_compile=True)


@pytest.mark.slow
def test_replicas_keep_their_rows_of_the_store_and_checkpoint_all_of_them(tmp_path):
    from test_distribution import fit_on_two_replicas

    keys, length = "knn/block_1/keys", "knn/block_1/length"
    report = fit_on_two_replicas(tmp_path, (4, 5), [keys, length], architecture="AMF",
                                 knn_memory_size=8, knn_neighbors=2)  # fmt: skip
    one, two = report["one"], report["two"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    assert one[length] == two[length] == [8] * 4
    np.testing.assert_allclose(two[keys], one[keys], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(report["restored"][keys], two[keys], rtol=0, atol=0)
