"""The block types W (sliding-window attention), L (LEAP), G (gated feed-forward) and the rotary
and T5 positions inside the model: the window across segments, state carried equals one long
segment, causality, documents, cached generation, fit with and without XLA, save/load, the JAX
backend, 2 logical devices, the configuration and flags. `derive()` of a supernet with each
letter, and each letter's sublayers and cost: `test_choices.py` (parameterized over the
registry)."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_jax
from test_generation import reference_generate
from tiny_models import TinyModels, numpy

from par_xl.configs import ConfigError, ModelConfig, TrainConfig, from_json, to_json
from par_xl.cost.flops import evaluation_flops_per_token
from par_xl.layers.leap_state import LeapState
from par_xl.models import PARTransformerXL
from par_xl.models.generation import generate

VOCAB, B, T = 40, 2, 5
TINY = TinyModels(B, T, vocab_size=VOCAB, d_model=16, num_heads=2, d_ffn=24, num_layers=3,
                  mem_len=5, cutoffs=[10], dropout_rate=0.0)  # fmt: skip


def test_a_w_block_sees_exactly_w_predecessors_across_segments():
    """One W block, window 3, memory 4: the second segment's position i changes when the token
    at distance 3 changes (in the first segment for i < 3) and never for distance 4."""
    model = TINY.model(num_layers=1, architecture="W", window=3, mem_len=4, segment=4)
    first, second = TINY.tokens((1, 4), 2), TINY.tokens((1, 4), 3)
    _, state = model.forward(first, model.initial_state(1))
    base = numpy(model.forward(second, state)[0])[0]
    context = np.concatenate([first, second], axis=1)  # (1, 8): position 4 + i is query i
    for distance, matters in ((3, True), (4, False)):
        for i in range(4):
            changed = context.copy()
            changed[0, 4 + i - distance] = (changed[0, 4 + i - distance] + 1) % VOCAB
            _, state = model.forward(changed[:, :4], model.initial_state(1))
            output = numpy(model.forward(changed[:, 4:], state)[0])[0]
            moved = bool(np.abs(output[i] - base[i]).max() > 1e-5)
            assert moved is matters, (distance, i)


CARRIED = {  # architecture and options: the second segment sees all the long segment's past
    "W": dict(architecture="WGW", window=3),  # M = 5 >= W
    "W-chunks": dict(architecture="WFW", window=2),  # W < T
    "L": dict(architecture="LGL"),  # LEAP's sums, no XL memory
    "A-rotary": dict(architecture="AGA", position="rotary"),  # M = T
    "A-t5": dict(architecture="AFA", position="t5"),
    "supernet": dict(choices="AWLG", position="t5", window=4),
}


@pytest.mark.parametrize("case", list(CARRIED))
def test_state_carried_across_segments_equals_one_long_segment(case):
    model = TINY.model(**CARRIED[case])
    a, b = TINY.tokens((B, T), 4), TINY.tokens((B, T), 5)
    full = numpy(model.forward(np.concatenate([a, b], axis=1))[0])
    hidden_a, state = model.forward(a, model.initial_state(B))
    hidden_b, state = model.forward(b, state)
    np.testing.assert_allclose(numpy(hidden_a), full[:, :T], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numpy(hidden_b), full[:, T:], rtol=1e-5, atol=1e-5)
    assert sorted(state.recurrent) == [f"block_{i}" for i in model.recurrent_blocks]
    model.reset_state()  # the same through `call`, the state in variables
    np.testing.assert_allclose(numpy(model(a)), full[:, :T], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numpy(model(b)), full[:, T:], rtol=1e-5, atol=1e-5)


def test_future_tokens_never_change_past_outputs():
    model = TINY.model(choices="AWLG", position="rotary", window=2)
    state = model.initial_state(B)
    _, state = model.forward(TINY.tokens((B, T), 6), state)
    x = TINY.tokens((B, 7), 7)
    changed = x.copy()
    changed[:, 4:] = (changed[:, 4:] + 1) % VOCAB
    before, after = numpy(model.forward(x, state)[0]), numpy(model.forward(changed, state)[0])
    np.testing.assert_allclose(before[:, :4], after[:, :4], rtol=1e-5, atol=1e-6)
    assert np.abs(before[:, 4:] - after[:, 4:]).max() > 1e-3


def test_a_document_start_forgets_the_context_before_it():
    """With document boundaries, the positions from a start on equal a fresh stream reading the
    document: W's window and LEAP's sums both stop at the start."""
    model = TINY.model(architecture="WLA", window=3, document_boundaries=True, position="t5")
    _, state = model.forward(TINY.tokens((B, T), 8), model.initial_state(B))
    x = TINY.tokens((B, T), 9)
    starts = np.zeros((B, T), "int32")
    starts[:, 2] = 1
    hidden, _ = model.forward(x, state, document_starts=starts)
    fresh, _ = model.forward(x[:, 2:], model.initial_state(B))
    np.testing.assert_allclose(numpy(hidden)[:, 2:], numpy(fresh), rtol=1e-5, atol=1e-5)
    without = numpy(model.forward(x, state)[0])[:, 2:]
    assert np.abs(without - numpy(fresh)).max() > 1e-4  # the context did matter


@pytest.mark.parametrize("architecture", ["LGL", "WGW"])  # L: no XL memory, only its state
def test_cached_generation_equals_recomputing_the_prefix(architecture):
    """The compiled loop (LEAP's recurrent form, one position a step; W over its memory) against
    a Python loop over `forward`, the prompt read in chunks: the same tokens and scores."""
    model = TINY.model(architecture=architecture, window=3)
    prompt = np.random.default_rng(10).integers(0, VOCAB, 9).tolist()  # 8 read: 2 + 2 chunks
    settings = dict(temperature=0.9, top_k=0, top_p=1.0)
    ids, scores = generate(model, prompt, 10, seed=3, chunk_length=3, jit_compile=False,
                           **settings)  # fmt: skip
    expected_ids, expected_scores = reference_generate(model, prompt, 10, seed=3, chunk=3,
                                                       **settings)  # fmt: skip
    assert ids == expected_ids
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)
    # LEAP's state read from the prompt matters: another prompt, other scores.
    other = generate(model, prompt[:1] + prompt[-1:], 10, seed=3, jit_compile=False, **settings)
    assert not np.allclose(other[1], scores, atol=1e-4)


def test_saved_and_loaded_with_its_state(tmp_path):
    model = TINY.model(choices="AWLG", position="t5", window=3, ffn_activation="geglu")
    x = TINY.tokens((B, T), 11)
    model(x)  # LEAP's sums and the XL memory, saved with the model
    leap_sums = numpy(model.recurrent_state["block_0"].weight_sum)
    assert leap_sums.min() > 0
    clone = PARTransformerXL.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(numpy(loaded.recurrent_state["block_0"].weight_sum), leap_sums)
    np.testing.assert_allclose(numpy(loaded(x)), numpy(model(x)), rtol=1e-6, atol=1e-6)
    state = loaded.get_state()
    assert isinstance(state.recurrent["block_2"], LeapState)
    loaded.reset_state()
    assert not numpy(loaded.recurrent_state["block_2"].key_sum).any()
    loaded.set_state(state)
    np.testing.assert_array_equal(numpy(loaded.recurrent_state["block_2"].key_sum),
                                  state.recurrent["block_2"].key_sum)  # fmt: skip


@pytest.mark.slow  # TensorFlow's graph of the switch
def test_a_single_path_search_switches_between_the_new_branches():
    """GDAS's switch carries L's state out of the branch computed (the others pass it through):
    a fitted single-path supernet over W, L, G keeps the sums of the batches L ran on."""
    model = TINY.model(num_layers=2, choices="WLG", search="single_path", window=2)
    for block in model.blocks:  # L preferred, the others still drawn
        block.gumbel.logits.assign([0.0, 2.0, 0.0])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    x, y = TINY.tokens((4, B, T), 16), TINY.tokens((4, B, T), 17)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert numpy(model.recurrent_state["block_1"].weight_sum).min() > 0


@pytest.mark.slow  # two compilations of a training step
def test_fit_with_and_without_xla_agree():
    losses, sums = [], []
    for jit in (False, True):  # no noise: XLA draws other random numbers
        model = TINY.compiled(jit, seed=3, num_layers=2, architecture="WL", window=2,
                              dropout_rate=0.0)  # fmt: skip
        history = model.fit(TINY.batches(3, 12), shuffle=False, verbose=0)
        losses.append(history.history["loss"])
        sums.append(numpy(model.recurrent_state["block_1"].value_sum))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    np.testing.assert_allclose(sums[0], sums[1], rtol=1e-3, atol=1e-4)
    assert np.abs(sums[0]).max() > 0  # carried from batch to batch


JAX_SCRIPT = """
import json, sys
import numpy as np, keras
import par_xl.models  # registers the classes
model = keras.saving.load_model(sys.argv[1])
x, y = np.load(sys.argv[2])
output = keras.ops.convert_to_numpy(model(x[0]))  # eager: JAX runs it op by op
model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
model.reset_state()
history = model.fit(x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]),
                    batch_size=x.shape[1], shuffle=False, verbose=0)
np.savez(sys.argv[3], output=output,
         weight_sum=model.get_state().recurrent["block_1"].weight_sum)
print(json.dumps({"backend": keras.backend.backend(), "loss": history.history["loss"][-1]}))
"""


@pytest.mark.slow
def test_jax_backend_matches_tensorflow(tmp_path):
    pytest.importorskip("jax")
    model = TINY.model(seed=4, num_layers=3, architecture="WLA", position="rotary", window=2)
    path = tmp_path / "model.keras"
    model.save(path)
    x, y = TINY.tokens((2, B, T), 14), TINY.tokens((2, B, T), 15)
    output = numpy(model(x[0]))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    model.reset_state()
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)), shuffle=False, verbose=0)
    np.save(tmp_path / "xy.npy", np.stack([x, y]))
    report = run_on_jax(JAX_SCRIPT, tmp_path, str(path), str(tmp_path / "xy.npy"),
                        str(tmp_path / "o.npz"))  # fmt: skip
    assert report["backend"] == "jax"
    np.testing.assert_allclose(report["loss"], history.history["loss"][-1], rtol=1e-4)
    saved = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(saved["output"], output, rtol=1e-4, atol=1e-5)
    weight_sum = numpy(model.recurrent_state["block_1"].weight_sum)
    np.testing.assert_allclose(saved["weight_sum"], weight_sum, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_replicas_keep_their_rows_of_the_state_and_checkpoint_all_of_them(tmp_path):
    from test_distribution import fit_on_two_replicas

    key_sum, memory = "recurrent/block_1/key_sum", "xl_memory/block_0"
    report = fit_on_two_replicas(tmp_path, (4, 5), [key_sum, memory], num_layers=2,
                                 architecture="WL", window=2)  # fmt: skip
    one, two = report["one"], report["two"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    for name in (key_sum, memory):  # per stream: never averaged across the replicas
        # The all-reduce's order of sums changes the weights by ~1e-7; LEAP's exp(c x)
        # focus weights (c = 10) amplify it: 1e-4.
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-4)
    assert np.abs(np.array(one[key_sum])[:2] - np.array(one[key_sum])[2:]).max() > 1e-3
    np.testing.assert_allclose(report["restored"][key_sum], two[key_sum], rtol=0, atol=0)


def test_the_configuration_takes_the_new_options():
    config = ModelConfig(choices="AWLFGI", window=64, position="rotary", ffn_activation="geglu")
    config.validate()
    assert ModelConfig(**{**dataclasses.asdict(config)}) == config
    model = PARTransformerXL(**dataclasses.replace(config, num_layers=2).model_kwargs())
    assert (model.window, model.position, model.ffn_activation) == (64, "rotary", "geglu")
    assert from_json(to_json(config, _train()))[0] == config
    old = to_json(ModelConfig(), _train()).replace('"window": null,', "")
    assert from_json(old)[0].window is None  # a run from before the field
    for changes, message in (
        (dict(window=0), "--window must be a positive integer"),
        (dict(position="alibi"), "--position must be one of"),
        (dict(position="rotary", d_model=12, num_heads=4), "--position='rotary' needs an even"),
        (dict(ffn_activation="tanh"), "--ffn_activation must be one of"),
        (dict(choices="AWX"), "--choices must be 2 or more distinct letters of A (attention), "),
    ):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            dataclasses.replace(config, **changes).validate()


def _train():
    return TrainConfig("train", "valid")


def test_a_window_needs_a_static_segment_length_and_follows_it():
    model = TINY.model(architecture="WWW", segment=4)
    assert [block.window_length for block in model.blocks] == [4, 4, 4]
    assert model.get_config()["window"] is None
    with pytest.raises(ValueError, match="window=None .* needs a static segment length"):
        PARTransformerXL(**TINY.config, architecture="WWW").blocks[0].build((2, None, 16))


def test_flops_count_the_windows_chunks_and_the_positions():
    """W < T: chunks of W queries over 2W keys, T padded to whole chunks (T = 5, W = 2: 6
    queries per 5 tokens); the projections over min(W, M) + T positions. A with rotary or T5
    positions: no position scores, no projection of the relative positions."""
    d, m = TINY.config["d_model"], TINY.config["mem_len"]
    identity = evaluation_flops_per_token(TINY.model(architecture="III"), T, B)
    window = TINY.model(architecture="WWW", window=2)
    macs = 2 * d * d + 2 * d * d * (2 + T) / T + 2 * (2 * 2) * d * 6 / T
    np.testing.assert_allclose(evaluation_flops_per_token(window, T, B) - identity,
                               3 * 2 * macs, rtol=1e-12)  # fmt: skip
    for position in ("rotary", "t5"):
        attention = TINY.model(architecture="AAA", position=position)
        macs = 2 * d * d + 2 * d * d * (m + T) / T + 2 * (m + T) * d
        np.testing.assert_allclose(evaluation_flops_per_token(attention, T, B) - identity,
                                   3 * 2 * macs, rtol=1e-12)  # fmt: skip
