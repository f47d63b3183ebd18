"""The block-recurrent cell (issue 31): the "R" choice against a numpy reference, the state
carried over segments against the same computation by hand and against one pass, causality,
document starts, the layer checks, fit with and without XLA, checkpoints and resume, save/load,
the search over R, derive, flags, and the JAX backend and 2 replicas (slow)."""

import dataclasses
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_jax
from layer_test_case import run_layer_test
from test_relative_attention import reference_attended
from tiny_models import TinyModels, assert_resume_is_exact, assert_saved_and_loaded, numpy

from par_xl.configs import ConfigError, ModelConfig
from par_xl.cost.flops import evaluation_flops_per_token
from par_xl.layers import block_recurrent_state
from par_xl.layers.block_recurrent import BlockRecurrentAttention
from par_xl.layers.block_recurrent_state import BlockRecurrentState
from par_xl.layers.relative_attention import causal_memory_mask, sinusoid_positions
from par_xl.models import PARTransformerXL
from par_xl.models.generation import generate
from par_xl.training.evaluation import evaluate_batches

N, H, S, W = 2, 4, 3, 3  # heads, head size, state vectors, block
D = N * H


# The layer against numpy.


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def layer_norm(x, norm):
    gamma, beta = numpy(norm.gamma), numpy(norm.beta)
    mean, variance = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta


def attend(queries, keys, values):
    """`queries (Q, N, H)` over `keys`, `values` `(K, N, H)` -> `(Q, N, H)`, per head."""
    scores = np.einsum("qnh,knh->nqk", queries, keys) / np.sqrt(queries.shape[-1])
    return np.einsum("nqk,knh->qnh", softmax(scores), values)


def reference_update(layer, vectors, token_keys, token_values):
    """One state update by hand: `vectors (S, D)` and the block's read tokens' keys and values
    `(w, N, H)` -> `(S, D)`."""
    w = {weight.path.split("/")[-1]: numpy(weight) for weight in layer.weights}
    normed = layer_norm(vectors, layer.state_norm) + w["state_position_embeddings"]
    q, k, v, cross = (np.einsum("sd,dnh->snh", normed, w[f"state_{name}_kernel"])
                      for name in ("query", "key", "value", "cross_query"))  # fmt: skip
    both = np.concatenate([attend(q, k, v), attend(cross, token_keys, token_values)], axis=1)
    if layer.gate == "fixed":
        update = np.einsum("smh,mhd->sd", both, w["update_kernel"]) + w["update_bias"]
        keep = sigmoid(w["gate_bias"])
        return keep * vectors + (1 - keep) * update
    hidden = np.maximum(np.einsum("smh,mhf->sf", both, w["hidden_kernel"]) + w["hidden_bias"], 0)
    candidate = np.tanh(hidden @ w["update_kernel"] + w["update_bias"])
    admit = sigmoid(hidden @ w["input_gate_kernel"] + w["input_gate_bias"] - 1)
    keep = sigmoid(hidden @ w["forget_gate_kernel"] + w["forget_gate_bias"] + 1)
    return keep * vectors + admit * candidate


def reference_call(layer, segment, memory, valid, vectors, length, starts=None):
    """The layer's call written per row, block and position: `(output (B, T, D), vectors
    (B, S, D), length (B,))`."""
    batch, t, _ = segment.shape
    starts = np.zeros((batch, t), "int32") if starts is None else starts
    memory = np.zeros((batch, 0, D), "float32") if memory is None else memory
    local = reference_attended(layer, segment, memory, valid)  # (B, T, N, H)
    initial = numpy(layer.initial_state)
    wk, wv = numpy(layer.key_kernel), numpy(layer.value_kernel)
    read = np.zeros_like(local)
    new_vectors, new_length = np.zeros((batch, S, D), "float32"), np.zeros(batch, "int64")
    for b in range(batch):
        c = vectors[b] if length[b] > 0 else initial
        keys = np.einsum("td,dnh->tnh", segment[b], wk)
        values = np.einsum("td,dnh->tnh", segment[b], wv)
        for begin in range(0, t, layer.block_size):
            end = min(begin + layer.block_size, t)
            for i in range(begin, end):  # at or after a start in the block: the initial state
                source = initial if starts[b, begin : i + 1].any() else c
                normed = layer_norm(source, layer.state_norm) + numpy(
                    layer.state_position_embeddings
                )
                state_keys = np.einsum("sd,dnh->snh", normed, numpy(layer.state_key_kernel))
                state_values = np.einsum("sd,dnh->snh", normed, numpy(layer.state_value_kernel))
                query = np.einsum("d,dnh->nh", segment[b, i], numpy(layer.cross_query_kernel))
                read[b, i] = attend(query[None], state_keys, state_values)[0]
            first = begin  # the block's last document starts here
            if starts[b, begin:end].any():
                first = begin + np.nonzero(starts[b, begin:end])[0][-1]
                c = initial
            c = reference_update(layer, c, keys[first:end], values[first:end])
        new_vectors[b] = c
        since = np.nonzero(starts[b])[0]
        new_length[b] = t - since[-1] if len(since) else length[b] + t
    output = np.einsum("btnh,nhd->btd", local, numpy(layer.output_kernel))
    output += np.einsum("btnh,nhd->btd", read, numpy(layer.cross_output_kernel))
    return output, new_vectors, new_length


def make_layer(gate="fixed", t=6, seed=0):
    keras.utils.set_random_seed(seed)
    layer = BlockRecurrentAttention(N, H, num_states=S, block_size=W, gate=gate, inner_size=10)
    layer.build((2, t, D))
    rng = np.random.default_rng(seed)
    for weight in layer.weights:  # away from their (small) initial values: errors show
        if weight.path.endswith(("bias", "state_position_embeddings", "initial_state")):
            weight.assign(rng.normal(size=weight.shape).astype("float32"))
    return layer


def segment_inputs(t=6, mem_len=3, seed=1):
    rng = np.random.default_rng(seed)
    segment = rng.normal(size=(2, t, D)).astype("float32")
    memory = rng.normal(size=(2, mem_len, D)).astype("float32") if mem_len else None
    positions = sinusoid_positions(mem_len + t, D)
    return segment, memory, positions, causal_memory_mask(t, mem_len, mem_len)


@pytest.mark.parametrize("gate", ["fixed", "lstm"])
@pytest.mark.parametrize("with_starts", [False, True], ids=["no-starts", "starts"])
def test_one_call_matches_a_numpy_reference(gate, with_starts):
    """Two blocks of W = 3; row 0 carries a state, row 1 is empty (the initial state); with
    starts, row 0 starts a document in its second block (position 4), row 1 at its first."""
    layer = make_layer(gate)
    segment, memory, positions, mask = segment_inputs()
    vectors = np.random.default_rng(2).normal(size=(2, S, D)).astype("float32")
    length = np.array([7, 0], "int32")
    starts = np.zeros((2, 6), "int32")
    if with_starts:
        starts[0, 4] = starts[1, 0] = 1
    state = BlockRecurrentState(vectors, length)
    output, new = layer(segment, memory, positions, mask, state,
                        document_starts=starts if with_starts else None)  # fmt: skip
    expected, expected_vectors, expected_length = reference_call(
        layer, segment, memory, 3, vectors, length, starts
    )
    np.testing.assert_allclose(numpy(output), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(numpy(new.vectors), expected_vectors, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(numpy(new.length), expected_length)
    assert new.vectors.dtype == "float32" and new.length.dtype == "int32"


def test_the_state_over_two_segments_equals_the_computation_by_hand():
    """Two calls carrying the state give what the reference gives chaining its own state: four
    blocks read in order, each updating the state the next reads."""
    layer = make_layer("lstm")
    first, _, positions, mask = segment_inputs(mem_len=0, seed=3)
    second = segment_inputs(mem_len=0, seed=4)[0]
    state = block_recurrent_state.empty_state(2, S, D)
    vectors, length = numpy(state.vectors), numpy(state.length)
    for segment in (first, second):
        output, state = layer(segment, None, positions, mask, state)
        expected, vectors, length = reference_call(layer, segment, None, 0, vectors, length)
        np.testing.assert_allclose(numpy(output), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(numpy(state.vectors), vectors, rtol=1e-4, atol=1e-5)
    assert numpy(state.length).tolist() == [12, 12]
    # The state changed the second segment's output: an empty state gives another one.
    fresh = numpy(layer(second, None, positions, mask))
    assert np.abs(fresh - numpy(output)).max() > 1e-3


def test_blocks_are_causal_and_a_block_reads_only_the_blocks_before_it():
    layer = make_layer()
    segment, memory, positions, mask = segment_inputs()
    state = BlockRecurrentState(np.ones((2, S, D), "float32"), np.array([1, 1], "int32"))
    changed = segment.copy()
    changed[:, 2] += 1.0  # the last position of block 0
    before, state_before = layer(segment, memory, positions, mask, state)
    after, state_after = layer(changed, memory, positions, mask, state)
    before, after = numpy(before), numpy(after)
    np.testing.assert_allclose(after[:, :2], before[:, :2], rtol=1e-6, atol=1e-6)
    assert np.abs(after[:, 3:] - before[:, 3:]).max() > 1e-4  # block 1 reads the new state
    assert np.abs(numpy(state_after.vectors) - numpy(state_before.vectors)).max() > 1e-4


@pytest.mark.parametrize(
    "gate,trainable", [("fixed", 20), pytest.param("lstm", 25, marks=pytest.mark.slow)]
)
def test_layer(gate, trainable):
    """The shared checks (`run_layer_test`) over a fresh stream: two blocks, so that a fit step
    reaches every weight (the update's through the second block's reading of the state)."""
    segment, memory, positions, mask = segment_inputs()
    run_layer_test(
        BlockRecurrentAttention,
        dict(
            num_heads=N,
            head_size=H,
            num_states=S,
            block_size=W,
            gate=gate,
            inner_size=10,
            attention_dropout_rate=0.1,
        ),  # fmt: skip
        (segment, memory, numpy(positions), numpy(mask)),
        expected_output_shape=(2, 6, D),
        # A's 7; cross query and output; state norm 2, positions, initial state, 4 kernels;
        # fixed: update kernel and bias, gate bias; lstm: hidden kernel and bias, 3 x 2.
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=0,
    )


def test_layer_arguments_are_validated():
    for kwargs, message in (
        (dict(num_states=0), "num_states must be a positive integer, received 0"),
        (dict(block_size=2.5), "block_size must be a positive integer, received 2.5"),
        (dict(gate="gru"), "gate must be one of ('fixed', 'lstm'), received 'gru'"),
        (dict(inner_size=0), "inner_size must be a positive integer, received 0"),
    ):
        with pytest.raises(ValueError) as error:
            BlockRecurrentAttention(N, H, **kwargs)
        assert message in str(error.value)


# The model.

VOCAB, B, T = 40, 2, 4
TINY = TinyModels(B, T, vocab_size=VOCAB, d_model=16, num_heads=2, d_ffn=24, num_layers=3,
                  mem_len=4, cutoffs=[10], dropout_rate=0.0, recurrent_states=3,
                  recurrent_block_size=2, architecture="ARF")  # fmt: skip


def recurrent_arrays(model):
    """The model's recurrent state variables, `{block name: BlockRecurrentState of arrays}`."""
    return {name: BlockRecurrentState(*map(numpy, state))
            for name, state in model.recurrent_state.items()}  # fmt: skip


def test_two_segments_with_state_equal_one_pass_over_both():
    """With M >= T and W dividing T, a segment's blocks and memory see what one pass over both
    segments sees: the outputs and the final state agree."""
    model = TINY.model()
    assert model.recurrent_blocks == [1] and model.memory_blocks == [0, 1]
    x = TINY.tokens((B, 2 * T), seed=2)
    state = model.initial_state(B)
    halves = []
    for segment in np.split(x, 2, axis=1):
        hidden, state = model.forward(segment, state)
        halves.append(numpy(hidden))
    whole, whole_state = model.forward(x, model.initial_state(B))
    np.testing.assert_allclose(np.concatenate(halves, axis=1), numpy(whole), rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    carried, once = state.recurrent["block_1"], whole_state.recurrent["block_1"]
    np.testing.assert_allclose(numpy(carried.vectors), numpy(once.vectors), rtol=1e-4, atol=1e-5)
    assert numpy(carried.length).tolist() == numpy(once.length).tolist() == [2 * T] * 2
    # `call` carries the same state in its variables.
    for segment in np.split(x, 2, axis=1):
        model(segment)
    np.testing.assert_allclose(recurrent_arrays(model)["block_1"].vectors,
                               numpy(carried.vectors), rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("architecture", ["ARF", None], ids=["fixed", "supernet"])
def test_future_tokens_never_change_past_outputs_through_the_state(architecture):
    overrides = dict(architecture=architecture, choices="ARFI", mem_len=0)  # the state alone
    model = TINY.model(**overrides)
    assert model.recurrent_blocks == ([1] if architecture else [0, 1, 2])
    x = TINY.tokens((B, 3 * T), seed=4)
    changed = x.copy()
    changed[:, 6] = (x[:, 6] + 1) % VOCAB  # the third position of the second segment
    outputs = []
    for ids in (x, changed):
        model.reset_state()
        outputs.append(np.concatenate([numpy(model(s)) for s in np.split(ids, 3, axis=1)], 1))
    before, after = outputs
    np.testing.assert_allclose(before[:, :6], after[:, :6], rtol=1e-5, atol=1e-6)
    assert np.abs(before[:, 8:] - after[:, 8:]).max() > 1e-4  # the next segment, by the state


def test_a_document_start_clears_the_streams_state():
    """With document boundaries, what a row saw before a start changes nothing after it,
    through the XL memory and the recurrent state alike; the other row keeps its state."""
    model = TINY.model(document_boundaries=True)
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
        assert recurrent_arrays(model)["block_1"].length.tolist() == [2, 2 * T]  # since start
        outputs[-1].append(numpy(model(batches[2])))
    first, second = outputs
    np.testing.assert_allclose(second[1][0, 2:], first[1][0, 2:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second[2][0], first[2][0], rtol=1e-5, atol=1e-6)
    assert np.abs(second[1][0, :2] - first[1][0, :2]).max() > 1e-3  # the change shows before
    np.testing.assert_allclose(second[2][1], first[2][1], rtol=1e-6)  # row 1: nothing changed


def test_a_branch_that_skips_r_forgets_the_state_at_a_document_start():
    """A supernet computing only A (argmax) passes the R state on, emptied in the rows where a
    document starts: the state of an earlier document never reaches a later one."""
    model = TINY.model(architecture=None, choices="AR", choice_at_inference="argmax",
                       document_boundaries=True)  # fmt: skip
    x = TINY.tokens((B, T), seed=11)
    model({"token_ids": x, "document_starts": np.zeros((B, T), "int32")})
    for block in model.blocks:
        block.gumbel.logits.assign([5.0, -5.0])  # A
    model.set_state(model.get_state()._replace(recurrent={
        name: BlockRecurrentState(np.ones((B, 3, 16), "float32"), np.array([5, 5], "int32"))
        for name in model.recurrent_state}))  # fmt: skip
    starts = np.zeros((B, T), "int32")
    starts[1, 3] = 1
    model({"token_ids": x, "document_starts": starts})
    for state in recurrent_arrays(model).values():
        assert state.length.tolist() == [5, 0]
        np.testing.assert_array_equal(state.vectors[0], 1.0)
        np.testing.assert_array_equal(state.vectors[1], 0.0)


@pytest.mark.slow  # XLA compiles the step in ~10 s on 2 cores
def test_fit_with_and_without_xla_gives_the_same_losses_and_states():
    results = []
    for jit_compile in (False, True):  # no noise: XLA draws other random numbers
        model = TINY.compiled(jit_compile, dropout_rate=0.0, recurrent_gate="lstm")
        history = model.fit(TINY.batches(4), epochs=2, shuffle=False, verbose=0)
        results.append((history.history["loss"], recurrent_arrays(model)["block_1"]))
        assert model.get_state().recurrent["block_1"].length.tolist() == [8 * T] * 2  # 2 epochs
    (losses, state), (xla_losses, xla_state) = results
    np.testing.assert_allclose(xla_losses, losses, rtol=1e-5)
    np.testing.assert_allclose(xla_state.vectors, state.vectors, rtol=1e-4, atol=1e-5)


def test_fit_trains_every_weight_of_r_and_the_epoch_starts_empty():
    model = TINY.compiled(False, run_eagerly=True)
    layer = model.blocks[1].block_recurrent_attention
    before = [numpy(w).copy() for w in layer.trainable_weights]
    model.fit(TINY.batches(2), shuffle=False, verbose=0)
    for weight, old in zip(layer.trainable_weights, before):
        assert np.any(numpy(weight) != old), weight.path
    assert recurrent_arrays(model)["block_1"].length.tolist() == [2 * T] * 2
    model.reset_state()  # what the trainer does at an epoch start
    state = recurrent_arrays(model)["block_1"]
    assert state.length.tolist() == [0, 0] and not state.vectors.any()


def test_resume_from_a_checkpoint_continues_with_the_same_state(tmp_path):
    assert_resume_is_exact(TINY, tmp_path, steps=4)


def test_saved_and_loaded_with_its_state(tmp_path):
    assert_saved_and_loaded(TINY, tmp_path, recurrent_gate="lstm")


def test_evaluation_carries_the_state_from_empty_and_generation_is_refused():
    model = TINY.model()
    model.compile(optimizer="adam", jit_compile=False)
    data = list(TINY.batches(3))
    model(data[0][0])  # a training state that evaluation leaves alone
    before = recurrent_arrays(model)
    result = evaluate_batches(model, data)
    for a, b in zip(before["block_1"], recurrent_arrays(model)["block_1"]):
        np.testing.assert_array_equal(b, a)
    model.reset_state()  # by hand: the state empty, then carried from batch to batch
    losses = [float(np.mean(numpy(model.output_layer.loss(model(x), y)))) for x, y in data]
    np.testing.assert_allclose(result["loss"], np.mean(losses), rtol=1e-5)
    with pytest.raises(ValueError, match=r"block-recurrent attention \(R\) cannot generate"):
        generate(model, [1, 2, 3], 2)
    from par_xl.serving.saved_model import ServingModule  # nor export a generating SavedModel

    with pytest.raises(ValueError, match=r"block-recurrent attention \(R\) cannot generate"):
        ServingModule(types.SimpleNamespace(model=model), 8, False)


@pytest.mark.parametrize("search", ["all_branches", "single_path"])
@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # eager: the branches not run
def test_a_search_with_m_and_r_trains_and_derive_keeps_them(search):
    model = TINY.compiled(False, run_eagerly=True, architecture=None, choices="AMRFI",
                           search=search, knn_memory_size=6, knn_neighbors=2)  # fmt: skip
    assert model.choice_letters == "AFIMR"
    assert model.recurrent_blocks == model.knn_blocks == [0, 1, 2]
    logits = [numpy(block.gumbel.logits) for block in model.blocks]
    history = model.fit(TINY.batches(3), shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.abs(numpy(b.gumbel.logits) - a).max() > 0 for b, a in zip(model.blocks, logits))
    if search == "all_branches":  # R computed at every step
        assert all(s.length.tolist() == [3 * T] * 2 for s in recurrent_arrays(model).values())
    for block, letter in zip(model.blocks, "RFM"):  # the order of the choice logits: AMRFI
        block.gumbel.logits.assign(np.where(np.array(list("AMRFI")) == letter, 5.0, -5.0))
    derived = model.derive()
    assert derived.architecture == "RFM" and derived.recurrent_blocks == [0]
    assert derived.knn_blocks == [2] and derived.choice_letters == "AFIMR"
    source = model.blocks[0].block_recurrent_attention
    for a, b in zip(source.weights, derived.blocks[0].block_recurrent_attention.weights):
        np.testing.assert_array_equal(numpy(b), numpy(a))
    assert recurrent_arrays(derived)["block_0"].length.tolist() == [0, 0]  # empty


def test_flops_count_r_by_its_blocks():
    """R costs A, plus the tokens' reading of the state, plus one update per block."""
    fixed = TINY.model(architecture="RRR", recurrent_gate="fixed")
    attention = TINY.model(architecture="AAA")
    d, s = 16, 3
    update = 4 * s * d * d + 2 * s * s * d + 2 * s * 2 * d + s * 2 * d * d  # a block of W = 2
    per_token = 2 * d * d + 2 * s * d + 2 * update / T  # two blocks per segment of 4
    extra = evaluation_flops_per_token(fixed, T, B) - evaluation_flops_per_token(attention, T, B)
    np.testing.assert_allclose(extra, 3 * 2 * per_token, rtol=1e-12)


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(recurrent_states=0), "--recurrent_states must be a positive integer, received 0"),
        (dict(recurrent_block_size=-1), "--recurrent_block_size must be a positive integer"),
        (dict(recurrent_gate="gru"), "--recurrent_gate must be one of ('fixed', 'lstm')"),
    ],
)
def test_recurrent_flags_are_validated(changes, message):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**changes).validate()
    assert message in str(error.value)
    with pytest.raises(ValueError, match="^recurrent_"):  # the model says the same, unprefixed
        PARTransformerXL(**dataclasses.replace(ModelConfig(), **changes).model_kwargs())
    ModelConfig(architecture="AAARAA", recurrent_gate="lstm").validate()
    ModelConfig(choices="AFIMR").validate()


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
state = model.get_state().recurrent["block_1"]
np.savez(sys.argv[3], outputs=np.stack(outputs), vectors=state.vectors)
print(json.dumps({"backend": keras.backend.backend(), "loss": history.history["loss"][-1],
                  "length": state.length.tolist()}))
"""


@pytest.mark.slow
def test_jax_backend_carries_the_state_like_tensorflow(tmp_path):
    pytest.importorskip("jax")
    model = TINY.model(recurrent_gate="lstm")
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
    assert report["backend"] == "jax" and report["length"] == [3 * T] * 2
    np.testing.assert_allclose(report["loss"], history.history["loss"][-1], rtol=1e-4)
    saved = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(saved["outputs"], outputs, rtol=1e-4, atol=1e-5)
    vectors = numpy(model.recurrent_state["block_1"].vectors)
    np.testing.assert_allclose(saved["vectors"], vectors, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_replicas_keep_their_rows_of_the_state_and_checkpoint_all_of_them(tmp_path):
    from test_distribution import fit_on_two_replicas

    vectors, length = "recurrent/block_1/vectors", "recurrent/block_1/length"
    report = fit_on_two_replicas(tmp_path, (4, 6), [vectors, length], architecture="ARF",
                                 recurrent_states=3, recurrent_block_size=3,
                                 recurrent_gate="lstm")  # fmt: skip
    one, two = report["one"], report["two"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    assert one[length] == two[length] == [4 * 6] * 4
    np.testing.assert_allclose(two[vectors], one[vectors], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(report["restored"][vectors], two[vectors], rtol=0, atol=0)


def test_scann_evaluation_of_a_single_path_search_over_m_and_r_equals_the_exact():
    """At inference a single-path supernet computes its argmax branch in a switch; a ScaNN
    memory (an object, filled in place) stays outside it. Below ScaNN's index size it searches
    exactly: the same losses as the exact store."""
    exact = TINY.model(architecture=None, choices="AMRFI", search="single_path",
                       knn_memory_size=6, knn_neighbors=2)  # fmt: skip
    for block, letter in zip(exact.blocks, "MRM"):
        block.gumbel.logits.assign(np.where(np.array(list("AMRFI")) == letter, 5.0, -5.0))
    scann = PARTransformerXL.from_config({**exact.get_config(), "knn_backend": "scann"})
    scann.build((B, T))
    scann.set_weights(exact.get_weights())
    for model in (exact, scann):
        model.compile(jit_compile=False)
    data = list(TINY.batches(3))
    expected = evaluate_batches(exact, data)["loss"]
    np.testing.assert_allclose(evaluate_batches(scann, data)["loss"], expected, rtol=1e-5)
