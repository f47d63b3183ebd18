"""export.py and par_xl.serving: the SavedModel, loaded by TensorFlow and tensorflow-text alone
in a fresh process without par_xl, gives par-xl's numbers (score = evaluation's
log-probabilities, generate = generate.py's text for the seed); `par_xl.load` in Python."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from keras import ops
from scripts import run_script

import par_xl
from par_xl.data import decode_lines, encode_lines, load_tokenizer
from par_xl.data.context_batching import context_batches
from par_xl.models.generation import generate
from par_xl.serving.text_model import TextModel
from par_xl.training.evaluation import batch_losses

REPO = Path(__file__).resolve().parents[1]
LIMIT = 40  # --max_new_tokens_limit of the exports
SAMPLING = dict(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=3)
PROMPTS = ["Ka lo mi 😀 中文", "ka", "Sa to vi ze po qua , er ba di fu ka lo"]  # 3 lengths
EMOJI_AND_CJK = "Ka lo mi 😀 ne 中文字 ru"

# Run in a fresh interpreter, from a directory without par_xl, with par_xl blocked (the
# environment has it installed): only TensorFlow and tensorflow-text serve the export.
SERVE = r"""
import json, sys
sys.modules["par_xl"] = None  # `import par_xl` raises ImportError from here on
try:
    import par_xl  # noqa: F401
    importable = True
except ImportError:
    importable = False
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

loaded = tf.saved_model.load(sys.argv[1])
results, kept = [], []
for signature, inputs in json.load(open(sys.argv[2])):
    state = kept[inputs.pop("state_from")] if "state_from" in inputs else {}  # a state passed on
    tensors = {name: tf.constant(value, dtype) for name, (value, dtype) in inputs.items()}
    try:
        outputs = loaded.signatures[signature](**tensors, **state)
    except tf.errors.InvalidArgumentError as error:
        results.append({"error": error.message})
        kept.append({})
        continue
    kept.append({name: value for name, value in outputs.items() if name != "log_probs"})
    results.append({
        name: [x.decode() if isinstance(x, bytes) else x for x in value.numpy().tolist()]
        if value.dtype == tf.string else value.numpy().tolist()
        for name, value in outputs.items()
    })
loaded_modules = sorted(m for m in sys.modules if m.startswith("par_xl") and sys.modules[m])
print(json.dumps({"par_xl_importable": importable, "par_xl_modules": loaded_modules,
                  "results": results}))
"""


def serve(export, requests, directory):
    """Runs `[(signature, {input: (value, dtype)})]` on the export in a fresh process (see
    SERVE), an input `"state_from": i` passing request i's outputs but `log_probs` (a model
    state) on; returns its report."""
    directory.mkdir(exist_ok=True)
    (directory / "serve.py").write_text(SERVE)
    (directory / "requests.json").write_text(json.dumps(requests))
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "serve.py", str(export), "requests.json"],
        cwd=directory, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def generate_request(prompts, max_new_tokens, temperature, top_k, top_p, seed):
    return ("generate", {
        "prompt": (prompts, "string"), "max_new_tokens": (max_new_tokens, "int32"),
        "temperature": (temperature, "float32"), "top_k": (top_k, "int32"),
        "top_p": (top_p, "float32"), "seed": (seed, "int64"),
    })  # fmt: skip


def sampling_tensors(max_new_tokens, temperature, top_k, top_p, seed):
    """`generate`'s sampling inputs, for a call in this process."""
    import tensorflow as tf

    return {
        "max_new_tokens": tf.constant(max_new_tokens, tf.int32),
        "temperature": tf.constant(temperature, tf.float32), "top_k": tf.constant(top_k, tf.int32),
        "top_p": tf.constant(top_p, tf.float32), "seed": tf.constant(seed, tf.int64),
    }  # fmt: skip


IDS = np.array([[5, 17, 2, 40, 9], [3, 3, 250, 1, 77]], "int32")
DETOKENIZE = [41, 7, 2, 2, 19, 5, 8, 2, 30, 30, 12]  # 3 end-of-line ids (2): 4 lines


def next_token_request(ids, state_from):
    return ("next_token_log_probs", {"token_ids": (ids.tolist(), "int32"),
                                     "state_from": state_from})  # fmt: skip


def train(data, runs, name, *extra):
    args = [f"--train_directory={data}/tf/train", f"--valid_directory={data}/tf/valid",
            f"--sp_model_prefix={data}/sp", "--preset=tiny", "--cutoffs=20", "--cutoffs=80",
            "--max_steps=4", "--warmup_steps=2", "--max_lr=3e-3", f"--log_dir={runs}",
            f"--model_name={name}", *extra]  # fmt: skip
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / name / "checkpoints"


def export(checkpoints, output):
    result = run_script("export.py", f"--checkpoint_dir={checkpoints}", f"--output={output}",
                        f"--max_new_tokens_limit={LIMIT}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def text(small_text_dir):
    """Ten lines of the corpus, a document title among them: 100-odd tokens, 7 segments."""
    return "\n".join((small_text_dir / "valid.txt").read_text().splitlines()[:10])


@pytest.fixture(scope="module")
def derived(tiny_data, tmp_path_factory):
    """A fixed architecture with LEAP (its recurrent sums in the state), a memorizing block
    (exact store) and document boundaries, trained 4 steps and exported."""
    root = tmp_path_factory.mktemp("derived")
    checkpoints = train(
        tiny_data,
        root,
        "lmf",
        "--architecture=LMF",
        "--knn_layers=1",
        "--knn_memory_size=64",
        "--knn_neighbors=4",
        "--document_boundaries",
    )
    result = export(checkpoints, root / "exported" / "lmf")
    return checkpoints, root / "exported" / "lmf", result


@pytest.fixture(scope="module")
def served(derived, text, tmp_path_factory):
    """The derived export's answers to every request the tests check, from one process."""
    _, output, _ = derived
    requests = [
        ("score", {"text": ([text, EMOJI_AND_CJK, "a"], "string")}),
        generate_request([PROMPTS[0]], **SAMPLING),
        generate_request(PROMPTS, **SAMPLING),
        ("initial_state", {"batch_size": (2, "int32")}),
        ("tokenize", {"text": ([EMOJI_AND_CJK, "ka"], "string")}),
        next_token_request(IDS, 3),  # 5: all ids from the initial state
        next_token_request(IDS[:, :3], 3),  # 6, 7: the same in two calls
        next_token_request(IDS[:, 3:], 6),
        ("detokenize", {"token_ids": ([DETOKENIZE], "int32"), "lengths": ([11], "int32")}),
    ]
    bad = [
        ("score", {"text": (["ka lo", ""], "string")}),
        ("score", {"text": (["   "], "string")}),
        generate_request(["ka"], **{**SAMPLING, "max_new_tokens": 0}),
        generate_request(["ka"], **{**SAMPLING, "max_new_tokens": LIMIT + 1}),
        generate_request(["ka"], **{**SAMPLING, "temperature": 0.0}),
        generate_request(["ka"], **{**SAMPLING, "top_p": 1.5}),
        generate_request(["ka"], **{**SAMPLING, "top_p": 0.0}),
        generate_request(["ka"], **{**SAMPLING, "top_k": -1}),
        next_token_request(IDS[:1], 3),  # 1 row, a state of 2
        next_token_request(IDS + 400, 3),  # beyond the vocabulary
    ]
    report = serve(output, requests + bad, tmp_path_factory.mktemp("serve"))
    report["bad"] = report["results"][len(requests) :]
    return report


@pytest.mark.slow
def test_export_writes_a_saved_model_that_loads_without_par_xl(derived, tiny_data, served):
    checkpoints, output, result = derived
    assert "wrote" in result.stdout and "saved_model_cli show --all" in result.stdout
    assert "supernet" not in result.stdout  # a fixed architecture: nothing derived
    for info in ("Assets written", "contains input name(s)", "Sharding callback", "fingerprint"):
        assert info not in result.stderr  # TensorFlow's INFO lines while saving
    info = json.loads((output / "assets.extra/par_xl_export.json").read_text())
    assert info["architecture"] == "LMF" and not info["derived_from_supernet"]
    assert (output / "saved_model.pb").is_file()
    assert (output / "assets/sp.model").read_bytes() == (tiny_data / "sp.model").read_bytes()
    assert not [p for p in output.parent.iterdir() if ".tmp" in p.name]  # renamed whole
    assert served["par_xl_importable"] is False and served["par_xl_modules"] == []
    again = run_script("export.py", f"--checkpoint_dir={checkpoints}", f"--output={output}")
    assert again.returncode == 2 and f"--output={output} exists" in again.stderr


@pytest.mark.slow
def test_score_equals_evaluation_log_probs(derived, served, text):
    """Per segment of T tokens the mean of `score`'s log-probs is minus the loss evaluation
    computes for the same stream in batches of one row (document starts, kNN store and XL
    memory carried); per token they are `TextModel.score`'s."""
    checkpoints, _, _ = derived
    model = TextModel.from_run(checkpoints)
    scored = served["results"][0]
    expected = model.score([text, EMOJI_AND_CJK, "a"])
    for row, reference in enumerate(expected):
        got = np.array(scored["token_log_probs"][row][: scored["tokens"][row]])
        np.testing.assert_allclose(got, reference["token_log_probs"], rtol=1e-5, atol=1e-5)
        for name in ("tokens", "words"):
            assert scored[name][row] == reference[name]
        for name in ("total_log_prob", "bits_per_character"):
            np.testing.assert_allclose(scored[name][row], reference[name], rtol=1e-5)

    sp = model.tokenizer
    stream = np.concatenate([[sp.eos_id()], encode_lines(sp, text.split("\n")).ids])
    starts = np.zeros_like(stream)
    starts[0] = 1  # the text is one document
    batches = context_batches(stream, 1, model.segment_length, starts)
    dataset = [
        ({"token_ids": x, "document_starts": s}, y)
        for x, s, y in zip(batches.inputs, batches.document_starts, batches.labels)
    ]
    losses = batch_losses(model.model, dataset)
    assert len(losses) >= 6
    covered = np.array(scored["token_log_probs"][0][: len(losses) * model.segment_length])
    np.testing.assert_allclose(-covered.reshape(len(losses), -1).mean(axis=1), losses,
                               rtol=1e-5)  # fmt: skip
    assert scored["tokens"][2] == len(sp.encode("a")) + 1  # and its end of line
    assert scored["words"][2] == 2  # one word, one end of line
    assert math.isfinite(scored["bits_per_character"][1])


@pytest.mark.slow
def test_generate_equals_generate_py_for_the_seed(derived, served):
    """With emoji and CJK in the prompt (byte fallback): generate.py's text, lowercased,
    the unseen characters back as they were."""
    checkpoints, _, _ = derived
    flags = [f"--checkpoint_dir={checkpoints}", f"--prompt={PROMPTS[0]}", "--num_tokens=12",
             "--temperature=0.8", "--top_k=20", "--top_p=0.9", "--seed=3"]  # fmt: skip
    expected = run_script("generate.py", *flags)
    assert expected.returncode == 0, expected.stderr[-3000:]
    got = served["results"][1]
    assert got["text"] == [expected.stdout.removesuffix("\n")]
    assert got["text"][0].startswith("ka lo mi 😀 中文") and "⁇" not in got["text"][0]
    assert len(got["token_ids"][0]) == 12
    other = run_script("generate.py", *flags[:-1], "--seed=4")
    assert other.stdout.removesuffix("\n") != got["text"][0]  # the seed decides


@pytest.mark.slow
def test_a_batch_of_prompts_of_different_lengths(derived, served):
    """Three prompts of different lengths (one of a single token) in one call: the library's
    batch for the seed, tokens and log-probabilities, and row 0 what the first prompt alone
    samples."""
    checkpoints, _, _ = derived
    batch = served["results"][2]
    model = par_xl.load(checkpoints.parent)  # the one-liner, from the run directory
    assert batch["text"] == model.generate(PROMPTS, **SAMPLING, jit_compile=False)
    ids = [model.encode(prompt) for prompt in PROMPTS]
    assert len({len(row) for row in ids}) == 3 and len(ids[1]) == 1
    settings = {**SAMPLING, "num_tokens": SAMPLING["max_new_tokens"]}
    del settings["max_new_tokens"]
    new, log_probs = generate(model.model, ids, **settings, jit_compile=False)
    assert batch["token_ids"] == new.tolist()
    np.testing.assert_allclose(batch["log_probs"], log_probs, rtol=1e-5, atol=1e-5)
    assert batch["text"][0] == served["results"][1]["text"][0]


@pytest.mark.slow
def test_next_token_log_probs_carries_the_state(derived, served):
    """From `initial_state`, ids read in one call or in two (the state passed back) give the
    log-probabilities of a Python loop over `forward`, one position at a time."""
    checkpoints, _, _ = derived
    model = TextModel.from_run(checkpoints).model
    state, expected = model.initial_state(2), None
    for i in range(IDS.shape[1]):
        hidden, state = model.forward(IDS[:, i : i + 1], state)
        expected = ops.convert_to_numpy(model.log_probs(hidden[:, -1]))
    whole, part, rest = served["results"][5:8]
    np.testing.assert_allclose(whole["log_probs"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rest["log_probs"], expected, rtol=1e-5, atol=1e-5)
    assert np.abs(np.array(part["log_probs"]) - expected).max() > 1e-3  # 3 ids are not 5
    assert whole["valid_length"] == [min(IDS.shape[1], model.mem_len)] * 2 == rest["valid_length"]
    assert set(served["results"][3]) == set(whole) - {"log_probs"}  # the state's tensors


@pytest.mark.slow
def test_tokenize_is_sentencepiece_and_detokenize_ends_lines(served, tiny_data):
    sp = load_tokenizer(tiny_data / "sp.model")
    tokens = served["results"][4]
    expected = [sp.encode(EMOJI_AND_CJK), sp.encode("ka")]
    assert tokens["lengths"] == [len(ids) for ids in expected]
    assert [row[:n] for row, n in zip(tokens["token_ids"], tokens["lengths"])] == expected
    text = served["results"][8]["text"]
    assert text == [decode_lines(sp, DETOKENIZE)] and text[0].count("\n") == 3


@pytest.mark.slow
def test_bad_input_gets_an_error_naming_the_argument(served):
    messages = [result.get("error", "no error") for result in served["bad"]]
    expected = [
        "score: text[1] is empty: each needs at least one character",
        "score: text[0] has no token: it holds only spaces",
        f"generate: max_new_tokens must be in [1, {LIMIT}] (the cap set at export), received 0",
        f"generate: max_new_tokens must be in [1, {LIMIT}] (the cap set at export), received 41",
        "generate: temperature must be positive, received 0",
        "generate: top_p must be in (0, 1], received 1.5",
        "generate: top_p must be in (0, 1], received 0",
        "generate: top_k must be >= 0 (0: all tokens), received -1",
        "must have as many rows as token_ids (1), received 2 (a state of another batch)",
        "next_token_log_probs: token_ids must be in [0, 400)",
    ]
    for message, text in zip(messages, expected, strict=True):
        assert text in message, message


@pytest.fixture(scope="module")
def untrained(small_text_dir, tmp_path_factory):
    """`(model, plain)`: an untrained one-block `TextModel` (M 2, T 4) with a byte-fallback
    tokenizer, and the same network with a tokenizer without byte fallback; no run needed."""
    import keras

    from par_xl.data.tokenizer import train_tokenizer
    from par_xl.models import PARTransformerXL

    root = tmp_path_factory.mktemp("untrained")
    lines = (small_text_dir / "train.txt").read_text().splitlines()
    keras.utils.set_random_seed(0)
    network = PARTransformerXL(vocab_size=400, d_model=8, num_heads=2, d_ffn=8, num_layers=1,
                               mem_len=2, cutoffs=[])  # fmt: skip
    network.build((1, 4))
    paths = {
        fallback: train_tokenizer(
            lines, root / f"sp{fallback}", vocab_size=size, byte_fallback=fallback
        )
        for fallback, size in ((True, 400), (False, 200))
    }
    return tuple(TextModel(network, load_tokenizer(paths[f]), paths[f], 4) for f in (1, 0))


def test_text_model_refuses_bad_input_naming_the_argument(untrained, tmp_path):
    """Errors before any model work: what is wrong and with which argument."""
    from par_xl.configs import ConfigError

    model, plain = untrained
    for call, message in [
        (lambda: model.generate(""), "^prompt is empty"),
        (lambda: model.generate(["ka", ""]), r"^prompt\[1\] is empty"),
        (lambda: model.generate(["ka", 3]), "^prompt must be a string or a list of strings"),
        (lambda: model.generate("ka", max_new_tokens=0), "^max_new_tokens must be positive"),
        (lambda: model.generate("ka", temperature=0), "^temperature must be positive"),
        (lambda: model.generate("ka", top_p=1.5), r"^top_p must be in \(0, 1\]"),
        (lambda: model.generate("ka", top_p=0), r"^top_p must be in \(0, 1\]"),
        (lambda: model.score(" "), "^text has no token"),
        (lambda: model.score([]), "^text must hold at least one string"),
        (lambda: plain.score(["ka", "ka 😀中"]), r"^text\[1\] holds characters the tokenizer "
                                                  "cannot encode \\('中😀'\\)"),
        (lambda: plain.generate("😀"), "^prompt holds characters the tokenizer cannot encode"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ConfigError, match=f"{tmp_path} is not a training run"):
        par_xl.load(tmp_path)


def test_saved_model_refuses_characters_a_tokenizer_without_byte_fallback_cannot_encode(
    untrained,
):
    """The signatures, traced in this process (no XLA, no file): the unknown id is an error
    naming the signature and the string, as TextModel's ValueError does."""
    import tensorflow as tf

    from par_xl.serving.saved_model import ServingModule

    _, plain = untrained
    signatures = ServingModule(plain, 4, jit_compile=False).signatures()
    settings = sampling_tensors(**{**SAMPLING, "max_new_tokens": 2})
    assert signatures["score"](text=tf.constant(["ka lo"]))["tokens"].numpy().tolist() == [
        len(plain.encode("ka lo")) + 1
    ]
    for call, message in [
        (lambda: signatures["score"](text=tf.constant(["ka", "ka 😀中"])),
         r"score: text\[1\] holds characters the tokenizer cannot encode"),
        (lambda: signatures["generate"](prompt=tf.constant(["😀"]), **settings),
         r"generate: prompt\[0\] holds characters the tokenizer cannot encode"),
    ]:  # fmt: skip
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call()


@pytest.mark.slow
def test_saved_model_cli_shows_every_signature(derived):
    _, output, _ = derived
    cli = Path(sys.executable).with_name("saved_model_cli")
    result = subprocess.run([str(cli), "show", "--all", "--dir", str(output)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for signature in ("score", "generate", "next_token_log_probs", "initial_state", "tokenize",
                      "detokenize", "serving_default"):  # fmt: skip
        assert f"signature_def['{signature}']" in result.stdout
    assert "inputs['max_new_tokens']" in result.stdout
    assert "outputs['bits_per_character']" in result.stdout


@pytest.mark.slow
def test_a_supernet_is_exported_as_its_derived_architecture(tiny_data, text, tmp_path):
    """export.py says so, the export records it, and the SavedModel scores as the derived
    model does (not as the supernet's mixture) and samples what it samples for the seed."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

    checkpoints = train(tiny_data, tmp_path, "supernet")
    result = export(checkpoints, tmp_path / "exported")
    derived = TextModel.from_run(checkpoints)
    architecture = derived.supernet_architecture
    assert f"the run is a supernet: exporting the architecture it derives, {architecture}" in (
        result.stdout
    )
    info = json.loads((tmp_path / "exported/assets.extra/par_xl_export.json").read_text())
    assert info["architecture"] == architecture and info["derived_from_supernet"]
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    got = loaded.signatures["score"](text=tf.constant([text]))["token_log_probs"][0]
    expected = derived.score(text)["token_log_probs"]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    mixture = TextModel.from_run(checkpoints, derive=False).score(text)["token_log_probs"]
    assert np.abs(mixture - expected).max() > 1e-3
    signature = loaded.signatures["generate"]
    sample = signature(prompt=tf.constant(PROMPTS), **sampling_tensors(**SAMPLING))["text"]
    expected = derived.generate(PROMPTS, **SAMPLING, jit_compile=False)
    assert [text.decode() for text in sample.numpy()] == expected
