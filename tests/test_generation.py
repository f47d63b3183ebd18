"""par_xl.models.generation: the compiled sampling loop against a Python loop over `forward`,
the in-graph filtering against NumPy, cached generation against recomputing the prefix."""

import json

import numpy as np
import pytest
from conftest import run_on_jax
from keras import ops
from test_sampling_uniforms import reference_uniforms
from tiny_models import TinyModels

from par_xl.models import PARTransformerXL, generation
from par_xl.models.compiled import compiled_function
from par_xl.models.generation import (
    draw,
    filter_probabilities,
    generate,
    read_prompt,
    sample,
)

VOCAB = 40
TINY = TinyModels(2, 4, vocab_size=VOCAB, d_model=16, num_heads=2, d_ffn=24, num_layers=3,
                  mem_len=3, cutoffs=[10, 25], proj_factor=2, dropout_rate=0.0)  # fmt: skip


def reference_filter(log_probs, temperature=1.0, top_k=0, top_p=1.0):
    """Temperature, top-k and nucleus filtering of one `(V,)` row by sorting, in float64."""
    logits = np.asarray(log_probs, "float64") / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = np.ones(len(probs), bool)
    if top_k:
        keep[order[top_k:]] = False
    if top_p < 1:
        cumulative = np.cumsum(probs[order])
        keep[order[np.searchsorted(cumulative, top_p) + 1 :]] = False  # after the nucleus
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum()


def reference_draw(probs, uniform):
    """The token whose interval of the cumulative distribution holds `uniform`."""
    cumulative = np.cumsum(probs)
    index = np.searchsorted(cumulative, uniform * cumulative[-1], side="right")
    return int(min(index, np.flatnonzero(probs)[-1]))


def reference_generate(model, prompt, num_tokens, temperature, top_k, top_p, seed, chunk):
    """A Python loop: the prompt in chunks through `forward` (the first chunk the remainder,
    no padding), then one `forward` call per token, NumPy filtering, the documented uniforms."""
    state = model.initial_state(1)
    context = np.array([prompt[:-1]], "int32")
    first = context.shape[1] % chunk
    for piece in np.split(context, range(first, context.shape[1], chunk), axis=1):
        if piece.shape[1]:
            _, state = model.forward(piece, state)
    token, ids, scores = prompt[-1], [], []
    for uniform in reference_uniforms(seed, num_tokens):
        hidden, state = model.forward(np.array([[token]], "int32"), state)
        log_probs = ops.convert_to_numpy(model.log_probs(hidden))[0, 0]
        token = reference_draw(reference_filter(log_probs, temperature, top_k, top_p), uniform)
        ids.append(token)
        scores.append(log_probs[token])
    return ids, scores


SETTINGS = {
    "plain": dict(temperature=1.0, top_k=0, top_p=1.0),
    "filtered": dict(temperature=0.7, top_k=12, top_p=0.8),
    "greedy": dict(temperature=1.0, top_k=1, top_p=1.0),
}


# XLA compiles the tiny loop in ~5 s on 2 cores, a graph without it in ~1 s: one case with XLA.
@pytest.mark.parametrize(
    "architecture, settings, jit_compile",
    [(None, "plain", False), (None, "filtered", True), ("AFIA", "greedy", False)],
)
def test_compiled_loop_equals_a_python_loop_over_forward(architecture, settings, jit_compile):
    num_layers = 3 if architecture is None else len(architecture)
    model = TINY.model(architecture=architecture, num_layers=num_layers)
    prompt = np.random.default_rng(5).integers(0, VOCAB, 8).tolist()  # 7 read: 1 + 2 chunks
    kwargs = SETTINGS[settings]
    ids, scores = generate(model, prompt, 12, seed=3, chunk_length=3, jit_compile=jit_compile,
                           **kwargs)  # fmt: skip
    expected_ids, expected_scores = reference_generate(model, prompt, 12, seed=3, chunk=3,
                                                       **kwargs)  # fmt: skip
    assert ids == expected_ids
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)
    assert len(set(ids)) > 1 or settings == "greedy"


def test_one_trace_for_every_prompt_length_and_seed():
    model = TINY.model()
    prompt = read_prompt(model, [1, 2, 3, 4, 5], jit_compile=False)
    first, _ = sample(model, prompt, 6, seed=0, jit_compile=False)
    again, _ = sample(model, prompt, 6, seed=0, jit_compile=False)  # the state is not changed
    other, _ = sample(model, prompt, 6, seed=1, jit_compile=False)
    assert first == again and first != other
    assert generate(model, [1, 2, 3, 4, 5], 6, seed=0, jit_compile=False)[0] == first
    generate(model, list(range(1, 12)), 6, seed=2, jit_compile=False)
    for step in (generation.read_chunk, generation.sampling_loop):  # the cached compiled functions
        assert compiled_function(model, step, False).experimental_get_tracing_count() == 1


def test_cached_generation_equals_recomputing_the_prefix():
    """With a memory longer than the whole context, each sampled token's log-probability is
    the one a single pass over the prompt and the tokens before it gives."""
    model = TINY.model()
    prompt = [3, 7, 1, 12, 30]
    ids, scores = generate(model, prompt, 8, seed=1, mem_len=16, chunk_length=2,
                           jit_compile=False)  # fmt: skip
    full = ops.convert_to_numpy(model.log_probs(model.forward(np.array([prompt + ids]))[0]))
    expected = full[0, np.arange(len(prompt) - 1, len(prompt) + 7), ids]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_a_model_without_memory_sees_its_whole_context():
    """mem_len=0: each token as if the whole prefix were recomputed; no attention at all: the
    context cannot matter, only the last token does."""
    model = TINY.model(mem_len=0)
    prompt = [3, 7, 1, 12, 30, 2]
    ids, scores = generate(model, prompt, 6, seed=2, chunk_length=4, jit_compile=False)
    full = ops.convert_to_numpy(model.log_probs(model.forward(np.array([prompt + ids]))[0]))
    np.testing.assert_allclose(scores, full[0, np.arange(5, 11), ids], rtol=1e-4, atol=1e-5)

    feed_forward = TINY.model(architecture="FFI")
    assert not feed_forward.memory_blocks
    ids, _ = generate(feed_forward, prompt, 4, top_k=1, jit_compile=False)
    assert ids == generate(feed_forward, [9, 9, prompt[-1]], 4, top_k=1, jit_compile=False)[0]


@pytest.mark.parametrize("as_tensors", [False, True])
def test_filtering_matches_a_numpy_reference(as_tensors):
    """Python settings (each traced anew) and tensor settings (one program, as a SavedModel
    takes them) keep the same tokens."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(3, VOCAB))
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    # (0.5, 20, 0.5): the nucleus ends among the top 20; (1.0, 3, 0.95): it holds all 3.
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (1.0, 5, 1.0), (0.5, 0, 0.7),
                                      (0.5, 20, 0.5), (1.0, 3, 0.95), (1.0, 1, 1.0),
                                      (1.0, 0, 1e-6)]:  # fmt: skip
        settings = (temperature, top_k, top_p)
        if as_tensors:
            settings = [ops.convert_to_tensor(v, d) for v, d in zip(settings, SETTING_TYPES)]
        got = ops.convert_to_numpy(filter_probabilities(log_probs.astype("float32"), *settings))
        got = got / got.sum(axis=-1, keepdims=True)  # weights: draw needs no normalization
        expected = np.stack([reference_filter(row, temperature, top_k, top_p) for row in log_probs])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        kept = (expected > 0).sum(axis=-1)
        if top_k:
            assert (kept <= top_k).all()
        if (top_k, top_p) == (20, 0.5):
            assert (kept < top_k).all()
        if (top_k, top_p) == (3, 0.95):
            assert (kept == top_k).all()
    assert ((got > 0).sum(axis=-1) == 1).all()  # a tiny nucleus is the most likely token


SETTING_TYPES = ("float32", "int32", "float32")


@pytest.mark.parametrize(
    "architecture, settings",
    [("AMF", {"knn_layers": [1], "knn_memory_size": 8, "knn_neighbors": 2}), ("ALF", {})],
)
def test_prompts_of_different_lengths_sample_what_each_prompt_alone_samples(architecture,
                                                                           settings):  # fmt: skip
    """One batch of a long, a one-token and a short prompt (a memorizing block, or LEAP's
    recurrent sums, included): each row's greedy sample and its log-probabilities are those of
    a Python loop over its prompt alone, which reads no padding."""
    model = TINY.model(architecture=architecture, initializer_range=0.5, **settings)
    prompts = [[3, 7, 1, 12, 30, 2, 9, 4], [5], [8, 6, 11]]
    ids, scores = generate(model, prompts, 6, top_k=1, chunk_length=3, jit_compile=False)
    for row, prompt in enumerate(prompts):
        expected_ids, expected_scores = reference_generate(model, prompt, 6, 1.0, 1, 1.0, 0, 3)
        assert ids[row].tolist() == expected_ids
        np.testing.assert_allclose(scores[row], expected_scores, rtol=1e-5, atol=1e-6)


def test_draw_follows_the_distribution_and_never_picks_a_filtered_token():
    weights = np.array([0.1, 0.0, 0.25, 0.4, 0.0, 0.25, 0.0], "float32") * 3  # 3 blocks of 3
    rows = 4000
    uniforms = (np.arange(rows, dtype="float32") + 0.5) / rows  # one per quantile
    ids = ops.convert_to_numpy(draw(np.tile(weights, (rows, 1)), uniforms))
    frequencies = np.bincount(ids, minlength=7) / rows
    np.testing.assert_allclose(frequencies, weights / weights.sum(), atol=1 / rows)
    edge = np.array([0.0, 1 - 2**-24], "float32")  # the very ends of [0, 1)
    ids = ops.convert_to_numpy(draw(np.tile(weights, (2, 1)), edge))
    assert ids.tolist() == [0, 5]


def test_generation_rejects_what_cannot_work():
    model = TINY.model()
    for kwargs, name in [(dict(temperature=0), "temperature"), (dict(top_k=-1), "top_k"),
                         (dict(top_p=0), "top_p"), (dict(mem_len=-1), "mem_len"),
                         (dict(num_tokens=0), "num_tokens"),
                         (dict(chunk_length=0), "chunk_length")]:  # fmt: skip
        with pytest.raises(ValueError, match=f"^{name}"):
            generate(model, [1, 2], **{"num_tokens": 3, **kwargs})
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3)


JAX_SCRIPT = """
import json, sys
import keras, numpy as np
import par_xl.models  # registers the classes
from par_xl.models.generation import generate
model = keras.saving.load_model(sys.argv[1])
prompt = np.load(sys.argv[2]).tolist()
ids, scores = generate(model, prompt, 10, temperature=0.8, top_k=20, top_p=0.9, seed=4,
                       chunk_length=3)
print(json.dumps({"backend": keras.backend.backend(), "ids": ids, "scores": scores}))
"""


@pytest.mark.slow
def test_jax_backend_samples_the_same_tokens(tmp_path):
    pytest.importorskip("jax")
    model = TINY.model(seed=1)
    model.save(tmp_path / "model.keras")
    prompt = np.random.default_rng(6).integers(0, VOCAB, 9)
    np.save(tmp_path / "prompt.npy", prompt)
    ids, scores = generate(model, prompt.tolist(), 10, temperature=0.8, top_k=20, top_p=0.9,
                           seed=4, chunk_length=3)  # fmt: skip
    report = run_on_jax(JAX_SCRIPT, tmp_path, str(tmp_path / "model.keras"),
                        str(tmp_path / "prompt.npy"))  # fmt: skip
    assert report["backend"] == "jax"
    assert report["ids"] == ids, json.dumps(report)
    np.testing.assert_allclose(report["scores"], scores, rtol=1e-4, atol=1e-5)


def test_an_argmax_supernet_samples_what_its_derived_model_samples():
    """`choice_at_inference="argmax"` computes only the preferred branches, inside the loop."""
    supernet = TINY.model()
    for block, preferred in zip(supernet.blocks, "AFI"):
        block.gumbel.logits.assign(np.where(np.arange(3) == "AFI".index(preferred), 2.0, 0.0))
    argmax = PARTransformerXL.from_config(
        {**supernet.get_config(), "choice_at_inference": "argmax"}
    )
    argmax.build((2, 4))
    argmax.set_weights(supernet.get_weights())
    prompt = [3, 7, 1, 12, 30, 2]
    expected = generate(supernet.derive(), prompt, 6, seed=2, jit_compile=False)
    ids, scores = generate(argmax, prompt, 6, seed=2, jit_compile=False)
    assert ids == expected[0]
    np.testing.assert_allclose(scores, expected[1], rtol=1e-5, atol=1e-6)
