"""MemorizingAttention against a numpy reference (local relative attention, brute-force
retrieval, gate), its masks, causality, gradients, compiled and JAX runs, the ScaNN store, and
saving; the functional exact store (`exact_state`) against `ExactKNNMemory` and a brute force."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_jax
from keras import ops
from test_knn_memory import ReferenceMemory, assert_same_results, random_entries, unit
from test_relative_attention import reference_attended

from par_xl.layers import MemorizingAttention, RelativeAttention
from par_xl.layers.relative_attention import causal_memory_mask, sinusoid_positions
from par_xl.memory import ExactKNNMemory, KNNMemory, KNNState, ScannKNNMemory, exact_state

B, T, N, H = 2, 4, 2, 4
D = N * H
K = 3  # neighbours
CAPACITY = 6  # less than two segments: the store wraps around by the third call


def numpy(x):
    return ops.convert_to_numpy(x)


def numpy_state(state):
    return KNNState(*(numpy(x) for x in state))


# The functional store.


def test_functional_store_equals_exact_memory_and_brute_force():
    """Filling, wrapping around (5 tokens a call through 12 slots), document starts, a per-row
    clear: `exact_state`'s results equal `ExactKNNMemory`'s and the brute force's, and the state
    equals the memory's variables."""
    rng = np.random.default_rng(0)
    heads, size, capacity, k = 3, 8, 12, 4
    state = exact_state.empty_state(B, heads, capacity, size)
    memory = ExactKNNMemory(B, heads, capacity, size, num_neighbors=k)
    reference = ReferenceMemory(B, capacity)
    for step in range(7):
        queries, keys, values = random_entries(rng, 5, heads=heads, size=size)
        expected = reference.search(queries, k)
        assert_same_results(exact_state.search(state, queries, k), expected)
        assert_same_results(memory.search(queries, k), expected)
        starts = np.zeros((B, 5), "int32")
        starts[step % B, 3] = step in (2, 5)  # row 0 at step 2, row 1 at step 5
        state = exact_state.add(state, keys, values, starts)
        memory.add(keys, values, starts)
        reference.add(keys, values, starts)
        if step == 3:
            state = exact_state.clear(state, np.array([False, True]))
            memory.clear(np.array([False, True]))
            reference.clear([False, True])
        for a, b in zip(numpy_state(state), numpy_state(memory.state)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert numpy(state.length).tolist() == [len(row) for row in reference.rows]


def test_functional_store_evicts_the_oldest_entries_first():
    state = exact_state.empty_state(1, 1, 4, 2)
    rng = np.random.default_rng(1)
    for token in range(7):  # values carry the token's number
        key = rng.normal(size=(1, 1, 1, 2)).astype("float32")
        state = exact_state.add(state, key, np.full((1, 1, 1, 2), token, "float32"))
        held = numpy(state.values)[0, 0, numpy(exact_state.valid_slots(state))[0], 0]
        assert sorted(held.tolist()) == list(range(max(0, token - 3), token + 1))
    assert numpy(state.position).tolist() == [7 % 4]
    state = exact_state.clear(state)
    assert numpy(state.length).tolist() == [0] and not numpy(exact_state.valid_slots(state)).any()


def test_functional_store_under_xla_equals_eager():
    rng = np.random.default_rng(2)

    def step(state, queries, keys, values, starts):
        found = exact_state.search(state, queries, 4)
        return found, exact_state.add(state, keys, values, starts)

    compiled = tf.function(step, jit_compile=True)
    eager_state = compiled_state = exact_state.empty_state(B, 3, 12, 8)
    for i in range(4):
        queries, keys, values = random_entries(rng, 5, heads=3, size=8)
        starts = np.zeros((B, 5), "int32")
        starts[1, 2] = i == 2
        expected, eager_state = step(eager_state, queries, keys, values, starts)
        got, compiled_state = compiled(compiled_state, queries, keys, values, tf.constant(starts))
        assert isinstance(compiled_state, KNNState)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(numpy(a), numpy(b), atol=1e-5)
    for a, b in zip(compiled_state, eager_state):  # keys differ by XLA's rsqrt rounding
        np.testing.assert_allclose(numpy(a), numpy(b), atol=1e-6)


def test_functional_store_rejects_bad_arguments():
    state = exact_state.empty_state(B, 3, 8, 4)
    with pytest.raises(ValueError, match=r"queries must have shape \(B=2, T, N=3, H=4\)"):
        exact_state.search(state, np.zeros((B, 1, 3, 5)), 2)
    with pytest.raises(ValueError, match=r"k must be in \[1, capacity=8\]"):
        exact_state.search(state, np.zeros((B, 1, 3, 4)), 9)
    with pytest.raises(ValueError, match=r"values must have shape"):
        exact_state.add(state, np.zeros((B, 1, 3, 4)), np.zeros((B + 1, 1, 3, 4)))
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        exact_state.empty_state(B, 3, 0, 4)


# The layer.


def make_layer(gate_bias=None, **kwargs):
    """A built layer with fixed random weights (the same at every call): biases, gate and scale
    large enough that a wrong sign, index or head shows."""
    rng = np.random.default_rng(3)
    layer = MemorizingAttention(N, H, num_neighbors=K, **kwargs)
    layer.build((B, T, D))
    for weight in layer.weights:  # kernels (D, N, H) or (N, H, D): std 1/sqrt(D); others 1
        scale = 1.0 / np.sqrt(D) if len(weight.shape) == 3 else 1.0
        weight.assign(scale * rng.normal(size=weight.shape))
    layer.log_retrieval_scale.assign(rng.normal(1.0, 0.5, size=N))
    if gate_bias is not None:
        layer.gate_bias.assign(np.full(N, gate_bias))
    return layer


def relative_twin(layer):
    """A RelativeAttention with `layer`'s local-attention weights."""
    twin = RelativeAttention(N, H, name="twin")
    twin.build((B, T, D))
    weights = {w.name: w for w in layer.weights}
    for weight in twin.weights:
        weight.assign(weights[weight.name])
    return twin


def segments(seed, count, mem_len):
    """`count` (segment (B, T, D), XL memory (B, M, D)) pairs."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.normal(size=(B, T, D)).astype("float32"),
            rng.normal(size=(B, mem_len, D)).astype("float32"),
        )
        for _ in range(count)
    ]


def local_inputs(mem_len, document_starts=None):
    """The position encoding and mask of a segment with a full XL memory of `mem_len`."""
    document_index = None if document_starts is None else np.cumsum(document_starts, axis=1)
    mask = causal_memory_mask(T, mem_len, mem_len, document_index)
    return sinusoid_positions(mem_len + T, D), mask


def reference_call(layer, segment, memory, store):
    """The layer written in numpy: `reference_attended`'s local attention, the brute-force
    `store`'s top k of the unit queries scored with the per-head scale, the per-head gate, the
    output projection; then the segment's keys and values added to `store`."""
    weights = {w.name: numpy(w) for w in layer.weights}
    local = reference_attended(layer, segment, memory, memory.shape[1])  # (B, T, N, H)
    query = np.einsum("btd,dnh->btnh", segment, weights["query_kernel"])
    keys, values, valid = store.search(query, K)  # (B, T, N, k, H) x2, (B, T, N, k)
    scale = np.exp(weights["log_retrieval_scale"])
    gate = 1.0 / (1.0 + np.exp(-weights["gate_bias"]))
    combined = local.copy()
    for b, t, n in np.ndindex(B, T, N):
        found = valid[b, t, n]
        if found.any():
            logits = scale[n] * (keys[b, t, n, found] @ unit(query[b, t, n]))
            probs = np.exp(logits - logits.max())
            retrieved = (probs / probs.sum()) @ values[b, t, n, found]
            combined[b, t, n] = gate[n] * retrieved + (1 - gate[n]) * local[b, t, n]
    store.add(
        np.einsum("btd,dnh->btnh", segment, weights["key_kernel"]),
        np.einsum("btd,dnh->btnh", segment, weights["value_kernel"]),
    )
    return np.einsum("btnh,nhd->btd", combined, weights["output_kernel"])


@pytest.mark.parametrize("mem_len", [0, 3])
def test_matches_numpy_reference(mem_len):
    """Three calls through a store of 6 slots: empty, partly filled, wrapped around."""
    layer = make_layer()
    state = exact_state.empty_state(B, N, CAPACITY, H)
    store = ReferenceMemory(B, CAPACITY)
    positions, mask = local_inputs(mem_len)
    for segment, memory in segments(4, 3, mem_len):
        output, state = layer(segment, memory if mem_len else None, positions, mask, state)
        expected = reference_call(layer, segment, memory, store)
        np.testing.assert_allclose(numpy(output), expected, rtol=1e-4, atol=1e-5)
    assert numpy(state.length).tolist() == [CAPACITY] * B


def test_closed_gate_or_empty_store_equals_relative_attention():
    """A gate shut (bias -1e4) over a filled store, and an open gate (+5) over an empty store,
    give RelativeAttention's output; an open gate over a filled store does not."""
    (first, memory), (second, _) = segments(5, 2, 3)
    positions, mask = local_inputs(3)
    layers = {bias: make_layer(gate_bias=bias) for bias in (-1e4, 5.0)}
    twin = relative_twin(layers[5.0])
    for bias, layer in layers.items():
        state = exact_state.empty_state(B, N, CAPACITY, H)
        output, state = layer(first, memory, positions, mask, state)
        expected = twin(first, memory, positions, mask)
        # On an empty store even an open gate attends locally only: the segment's own entries,
        # added after the search, were not visible to it.
        np.testing.assert_allclose(numpy(output), numpy(expected), atol=1e-6)
        output, _ = layer(second, memory, positions, mask, state)
        expected = numpy(twin(second, memory, positions, mask))
        if bias < 0:
            np.testing.assert_allclose(numpy(output), expected, atol=1e-6)
        else:  # every position retrieves
            assert np.abs(numpy(output) - expected).max(axis=-1).min() > 1e-4


def test_causal_and_stores_exactly_the_segment():
    layer = make_layer()
    (first, memory), (second, _) = segments(6, 2, 3)
    positions, mask = local_inputs(3)
    empty = exact_state.empty_state(B, N, 2 * T, H)
    _, state = layer(first, memory, positions, mask, empty)
    # The store holds the segment's unit keys and values in slots 0..T-1, and nothing else:
    # neither the XL memory's entries nor any other.
    weights = {w.name: numpy(w) for w in layer.weights}
    keys = unit(np.einsum("btd,dnh->bnth", first, weights["key_kernel"]))
    values = np.einsum("btd,dnh->bnth", first, weights["value_kernel"])
    stored = numpy_state(state)
    np.testing.assert_allclose(stored.keys[:, :, :T], keys, atol=1e-6)
    np.testing.assert_allclose(stored.values[:, :, :T], values, atol=1e-6)
    assert not stored.keys[:, :, T:].any() and not stored.values[:, :, T:].any()
    assert stored.length.tolist() == [T] * B and stored.position.tolist() == [T] * B
    # Changing positions 2.. of the next segment changes no output before them.
    changed = second.copy()
    changed[:, 2:] += 1.0
    before, _ = layer(second, memory, positions, mask, state)
    after, _ = layer(changed, memory, positions, mask, state)
    np.testing.assert_allclose(numpy(after)[:, :2], numpy(before)[:, :2], atol=1e-6)
    assert np.abs(numpy(after)[:, 2:] - numpy(before)[:, 2:]).max() > 1e-3


def test_no_retrieval_at_or_after_a_document_start():
    """Row 0 starts a document at position 2: its positions 2 and 3 attend locally only (like a
    shut gate), positions 0 and 1 and row 1 retrieve; row 0's store keeps positions 2 and 3."""
    layer, shut = make_layer(gate_bias=1.0), make_layer(gate_bias=-1e4)
    (first, memory), (second, _) = segments(7, 2, 3)
    starts = np.zeros((B, T), "int32")
    starts[0, 2] = 1
    positions, mask = local_inputs(3, starts)
    state = exact_state.empty_state(B, N, CAPACITY, H)
    _, state = layer(first, memory, positions, mask, state)
    output, new_state = layer(second, memory, positions, mask, state, document_starts=starts)
    local_only, _ = shut(second, memory, positions, mask, state)
    retrieving, _ = layer(second, memory, positions, mask, state)
    output, local_only, retrieving = numpy(output), numpy(local_only), numpy(retrieving)
    np.testing.assert_allclose(output[0, 2:], local_only[0, 2:], atol=1e-6)
    np.testing.assert_allclose(output[0, :2], retrieving[0, :2], atol=1e-6)
    np.testing.assert_allclose(output[1], retrieving[1], atol=1e-6)
    assert np.abs(output[0, :2] - local_only[0, :2]).max() > 1e-3  # row 0 did retrieve
    assert numpy(new_state.length).tolist() == [2, CAPACITY]


def test_gradients_reach_the_weights_but_never_the_store():
    layer = make_layer()
    (first, memory), (second, _) = segments(8, 2, 3)
    positions, mask = local_inputs(3)
    _, state = layer(first, memory, positions, mask, exact_state.empty_state(B, N, CAPACITY, H))
    target = np.random.default_rng(9).normal(size=(B, T, D)).astype("float32")
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([state.keys, state.values])
        output, new_state = layer(second, memory, positions, mask, state)
        loss = ops.sum(output * target)
        stored = ops.sum(new_state.keys) + ops.sum(new_state.values)
    for weight, grad in zip(layer.trainable_weights, tape.gradient(loss, layer.trainable_weights)):
        assert grad is not None and np.abs(numpy(grad)).max() > 0, weight.name
    assert tape.gradient(loss, [state.keys, state.values]) == [None, None]
    assert all(g is None for g in tape.gradient(stored, layer.trainable_weights))


def run_calls(layer, store, calls, mode):
    """Outputs of `layer` over `calls` [(segment, memory, starts)], eagerly or in a
    `tf.function` with or without XLA, and the final state: a `KNNState` is threaded through
    (and returned as numpy), a `KNNMemory` object is updated in place (None is returned)."""
    positions, mask = local_inputs(3)
    in_place = isinstance(store, KNNMemory)

    def step(segment, memory, state, starts):
        output, state = layer(
            segment, memory, positions, mask, store if in_place else state, document_starts=starts
        )
        return output, () if in_place else state

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    outputs, state = [], () if in_place else store
    for segment, memory, starts in calls:
        output, state = step(segment, memory, state, starts)
        outputs.append(numpy(output))
    return outputs, None if in_place else numpy_state(state)


def calls_with_a_start(seed, count=3):
    calls = []
    for i, (segment, memory) in enumerate(segments(seed, count, 3)):
        starts = np.zeros((B, T), "int32")
        starts[1, 1] = i == 1
        calls.append((segment, memory, starts))
    return calls


def test_compiled_with_and_without_xla_equals_eager():
    layer = make_layer()
    calls = calls_with_a_start(10)
    empty = exact_state.empty_state(B, N, CAPACITY, H)
    expected, expected_state = run_calls(layer, empty, calls, "eager")
    for mode in ("graph", "xla"):
        outputs, state = run_calls(layer, empty, calls, mode)
        np.testing.assert_allclose(outputs, expected, atol=1e-5, err_msg=mode)
        for a, b in zip(state, expected_state):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=mode)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_scann_store_below_its_index_size_equals_the_exact_state(mode):
    """ScannKNNMemory searches rows under `min_index_size` (4,096) entries exactly: through the
    layer it gives the exact state's outputs and holds the same entries."""
    layer = make_layer()
    calls = calls_with_a_start(11)
    expected, expected_state = run_calls(
        layer, exact_state.empty_state(B, N, CAPACITY, H), calls, "eager"
    )
    memory = ScannKNNMemory(B, N, CAPACITY, H, num_neighbors=K)
    outputs, _ = run_calls(layer, memory, calls, mode)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    for name, value in memory.get_state().items():
        np.testing.assert_allclose(value, getattr(expected_state, name), atol=1e-6)


def test_exact_memory_object_is_updated_in_place():
    layer = make_layer()
    calls = calls_with_a_start(12)
    expected, expected_state = run_calls(
        layer, exact_state.empty_state(B, N, CAPACITY, H), calls, "eager"
    )
    memory = ExactKNNMemory(B, N, CAPACITY, H, num_neighbors=K)
    outputs, _ = run_calls(layer, memory, calls, "xla")
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    for a, b in zip(numpy_state(memory.state), expected_state):
        np.testing.assert_allclose(a, b, atol=1e-6)


JAX_SCRIPT = """
import json, sys
import jax, keras, numpy as np
from par_xl.layers import MemorizingAttention
from par_xl.memory import exact_state
data = np.load(sys.argv[1])
layer = MemorizingAttention(2, 4, num_neighbors=3)
layer.build((2, 4, 8))
layer.set_weights([data[f"weight_{i}"] for i in range(len(layer.weights))])
step = jax.jit(lambda variables, state, x, memory, starts: layer.stateless_call(
    *variables, x, memory, data["positions"], data["mask"], state, document_starts=starts))
state, outputs = exact_state.empty_state(2, 2, 6, 4), []
variables = ([w.value for w in layer.trainable_variables],
             [w.value for w in layer.non_trainable_variables])
for i in range(3):
    (output, state), _ = step(variables, state, data[f"x_{i}"], data[f"memory_{i}"],
                              data[f"starts_{i}"])
    outputs.append(np.asarray(output))
np.savez(sys.argv[2], *outputs, *[np.asarray(x) for x in state])
print(json.dumps({"backend": keras.backend.backend(), "state": type(state).__name__}))
"""


@pytest.mark.slow
def test_jax_backend_under_jit_matches_tensorflow(tmp_path):
    pytest.importorskip("jax")
    layer = make_layer()
    calls = calls_with_a_start(13)
    expected, expected_state = run_calls(
        layer, exact_state.empty_state(B, N, CAPACITY, H), calls, "eager"
    )
    positions, mask = local_inputs(3)
    data = {"positions": numpy(positions), "mask": numpy(mask)}
    data.update({f"weight_{i}": w for i, w in enumerate(layer.get_weights())})
    for i, (segment, memory, starts) in enumerate(calls):
        data.update({f"x_{i}": segment, f"memory_{i}": memory, f"starts_{i}": starts})
    np.savez(tmp_path / "data.npz", **data)
    report = run_on_jax(JAX_SCRIPT, tmp_path, str(tmp_path / "data.npz"), str(tmp_path / "out.npz"))
    assert report == {"backend": "jax", "state": "KNNState"}
    got = np.load(tmp_path / "out.npz")
    for i, value in enumerate([*expected, *expected_state]):
        np.testing.assert_allclose(got[f"arr_{i}"], value, atol=1e-5)


def test_mixed_precision_keeps_float32_gate_and_scale():
    """Under mixed_float16 the output and a float16 state stay float16, close to float32's; a
    float32 state is cast on the way in, as the module docstring says."""
    reference = make_layer()
    layer = MemorizingAttention(N, H, num_neighbors=K, dtype="mixed_float16")
    layer.build((B, T, D))
    layer.set_weights(reference.get_weights())
    assert layer.gate_bias.dtype == "float32" and layer.log_retrieval_scale.dtype == "float32"
    positions, mask = local_inputs(3)
    state16 = exact_state.empty_state(B, N, CAPACITY, H, dtype="float16")
    state32 = exact_state.empty_state(B, N, CAPACITY, H)
    for segment, memory in segments(14, 2, 3):
        output, state16 = layer(segment, memory, positions, mask, state16)
        expected, state32 = reference(segment, memory, positions, mask, state32)
        assert output.dtype == "float16" and state16.keys.dtype == "float16"
        assert state16.length.dtype == "int32"
        np.testing.assert_allclose(numpy(output), numpy(expected), rtol=2e-2, atol=2e-2)
    _, cast = layer(segment, memory, positions, mask, state32)
    assert cast.keys.dtype == "float16"


def test_symbolic_call_config_and_validation():
    layer = MemorizingAttention(N, H, attention_dropout_rate=0.1, num_neighbors=K, name="mem")
    state = KNNState(
        keras.KerasTensor((B, N, CAPACITY, H)),
        keras.KerasTensor((B, N, CAPACITY, H)),
        keras.KerasTensor((B,), dtype="int32"),
        keras.KerasTensor((B,), dtype="int32"),
    )
    positions, mask = local_inputs(0)
    output, new_state = layer(keras.KerasTensor((B, T, D)), None, positions, mask, state)
    assert output.shape == (B, T, D) and isinstance(new_state, KNNState)
    assert [x.dtype for x in new_state] == ["float32", "float32", "int32", "int32"]
    config = layer.get_config()
    json.dumps(config)
    assert config["num_neighbors"] == K
    assert MemorizingAttention.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is MemorizingAttention and revived.get_config() == config

    layer = make_layer()
    segment, _ = segments(15, 1, 0)[0]
    positions, mask = local_inputs(0)
    for state, message in (
        (exact_state.empty_state(B, N + 1, CAPACITY, H), r"must hold keys \(B=2, N=2, C, H=4\)"),
        (exact_state.empty_state(B, N, K - 1, H), "capacity must be at least num_neighbors=3"),
        (ScannKNNMemory(B, N, CAPACITY, H, K, normalize=False), "must normalize its keys"),
        ((1, 2, 3, 4), "knn_state must be a KNNState or a KNNMemory"),
    ):
        with pytest.raises(ValueError, match=message):
            layer(segment, None, positions, mask, state)
    with pytest.raises(ValueError, match="num_neighbors must be a positive integer"):
        MemorizingAttention(N, H, num_neighbors=0)


@keras.saving.register_keras_serializable(package="test_memorizing_attention")
class MemorizingProbe(keras.Model):
    """One memorizing layer with its store in an `ExactKNNMemory`'s variables, the way a model
    keeps it: `state` into the layer, the new state assigned back after the call."""

    def __init__(self, batch_size, capacity, **kwargs):
        super().__init__(**kwargs)
        self.batch_size, self.capacity = batch_size, capacity
        self.attention = MemorizingAttention(N, H, num_neighbors=K, name="attention")
        self.store = ExactKNNMemory(batch_size, N, capacity, H, num_neighbors=K, name="store")

    def build(self, input_shape):
        self.attention.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        positions, mask = local_inputs(0)
        output, state = self.attention(
            x, None, positions, mask, self.store.state, training=training
        )
        self.store.assign_state(state)
        return output

    def get_config(self):
        return {**super().get_config(), "batch_size": self.batch_size, "capacity": self.capacity}


def test_saved_and_loaded_with_its_store(tmp_path):
    model = MemorizingProbe(B, CAPACITY)
    first, second, third = (x for x, _ in segments(16, 3, 0))
    model(first)
    model(second)
    model.save(tmp_path / "probe.keras")
    loaded = keras.saving.load_model(tmp_path / "probe.keras")
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(numpy(a), numpy(b), err_msg=a.path)
    np.testing.assert_array_equal(numpy(loaded(third)), numpy(model(third)))


def fit_probe(jit_compile):
    keras.utils.set_random_seed(0)
    model = MemorizingProbe(B, CAPACITY)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=jit_compile)
    rng = np.random.default_rng(17)
    x = rng.normal(size=(3 * B, T, D)).astype("float32")
    y = rng.normal(size=(3 * B, T, D)).astype("float32")
    loss = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0).history["loss"]
    return loss, [numpy(w) for w in model.weights]


@pytest.mark.slow
def test_fit_with_and_without_xla_agree_and_fill_the_store():
    (graph_loss, graph_weights), (xla_loss, xla_weights) = fit_probe(False), fit_probe(True)
    np.testing.assert_allclose(graph_loss, xla_loss, rtol=1e-4)
    for a, b in zip(graph_weights, xla_weights):
        np.testing.assert_allclose(a, b, atol=1e-4)
    position, length = xla_weights[-2:]
    assert length.tolist() == [CAPACITY] * B and position.tolist() == [(6 * T) % CAPACITY] * B
