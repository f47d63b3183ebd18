"""Long-document corpora (issue 31): the split by path hash, the files left out, the standard
library's file list, the source-code tokenizer's exact round trip and byte counts, and
build_data.py --input_files / --corpus end to end with bits per byte."""

import json
import math
import sys
import sysconfig
from pathlib import Path

import keras
import numpy as np
import pytest
from scripts import run_script

from par_xl.data import read_metadata
from par_xl.data.corpora import (
    DOCUMENT_START,
    CorpusFiles,
    glob_files,
    list_sha256,
    prepare_corpus,
    python_stdlib_files,
    split_of,
)
from par_xl.data.errors import DataError
from par_xl.data.text_units import bytes_per_id
from par_xl.data.tokenizer import decode_lines, encode_lines, load_tokenizer, train_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])

# A file that normalization, whitespace handling or a missing piece would change: indentation
# by spaces and tabs, trailing spaces, a CRLF line, a form feed, non-ASCII and astral
# characters, blank lines, no newline at the end.
AWKWARD = (
    "# -*- coding: utf-8 -*-\n"
    "def f(a,  b):\t# two  spaces\n"
    "        return {'é': 'ﬁ', \"😀\": 'x'}   \n"
    "\treturn  a\r\n"
    "\x0c\n"
    "\n"
    "    \n"
    "class C:  pass"
)


def test_the_split_depends_on_the_path_alone_and_is_stable():
    # Golden: the first 8 bytes of SHA-256 of the path, as a fraction of 2^64.
    assert [split_of(p, 0.05, 0.05) for p in ("json/decoder.py", "chunk.py", "bz2.py")] == [
        "train", "valid", "test"]  # fmt: skip
    assert split_of("json/decoder.py", 0.98, 0.01) == "valid"
    paths = [f"pkg{i}/module_{i}.py" for i in range(4000)]
    splits = [split_of(p, 0.1, 0.2) for p in paths]
    shares = {s: splits.count(s) / len(paths) for s in ("train", "valid", "test")}
    assert abs(shares["valid"] - 0.1) < 0.02 and abs(shares["test"] - 0.2) < 0.02, shares
    assert split_of("pkg1/module_1.py", 0.1, 0.2) == splits[1]  # the same call, the same split


def write_files(root, count=12, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):
        body = "".join(f"    x{j} = {int(rng.integers(100))}\n" for j in range(20 + i))
        path = root / f"pkg{i % 3}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def f{i}():  # café ☕ {i}\n{body}", encoding="utf-8")
    return root


def test_adding_files_moves_no_other_and_the_manifest_says_what_was_read(tmp_path):
    root = write_files(tmp_path / "src")
    (root / "empty.py").write_text("")
    (root / "latin1.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    (root / "header.py").write_text("x = 1\n#@ file: not/a/real/start.py\n")
    (root / "mark.py").write_text("x = '\u2581'\n")
    files = glob_files(f"{root}/**/*.py")
    assert files.root == root.resolve() and len(files.paths) == 16
    manifest = prepare_corpus(files, tmp_path / "text", 0.3, 0.3)
    assert manifest.left_out == {"empty.py": "empty", "latin1.py": "not UTF-8",
                                 "header.py": f"line 2 looks like a document header "
                                              f"({DOCUMENT_START})",
                                 "mark.py": "holds '▁' (U+2581), which the tokenizer would "
                                            "decode as a space"}  # fmt: skip
    assert manifest.python_version == ".".join(map(str, sys.version_info[:3]))
    kept = sorted(p for p in files.paths if p not in manifest.left_out)
    assert manifest.file_list_sha256 == list_sha256(kept)
    assert sum(s["files"] for s in manifest.splits.values()) == 12
    on_disk = json.loads((tmp_path / "text" / "corpus.json").read_text())
    assert on_disk["file_list_sha256"] == manifest.file_list_sha256
    # Each document: its header, then the file exactly.
    text = {s: (tmp_path / "text" / f"{s}.txt").read_text() for s in ("train", "valid", "test")}
    for path in kept:
        split = split_of(path, 0.3, 0.3)
        document = f"#@ file: {path}\n" + (root / path).read_text()
        assert document in text[split]
    # More files: the earlier ones stay where they were.
    write_files(tmp_path / "src", count=30, seed=1)
    more = prepare_corpus(glob_files(f"{root}/**/*.py"), tmp_path / "more", 0.3, 0.3)
    assert more.file_list_sha256 != manifest.file_list_sha256
    for path in kept:
        split = split_of(path, 0.3, 0.3)
        assert f"#@ file: {path}\n" in (tmp_path / "more" / f"{split}.txt").read_text()
    with pytest.raises(DataError, match="already holds train.txt, valid.txt, test.txt; pass "
                                        "--overwrite"):  # fmt: skip
        prepare_corpus(files, tmp_path / "text", 0.3, 0.3)
    with pytest.raises(DataError, match="leave no file for the split"):
        prepare_corpus(CorpusFiles("x", root, ("pkg0/mod0.py",), "one"), tmp_path / "one")
    with pytest.raises(DataError, match="names no file"):
        glob_files(f"{tmp_path}/nothing/**/*.py")


def test_the_standard_library_without_its_tests():
    files = python_stdlib_files()
    assert files.root == STDLIB.resolve() and len(files.paths) > 500
    assert "json/decoder.py" in files.paths and "os.py" in files.paths
    assert not any(p.startswith("test/") or "site-packages/" in p for p in files.paths)
    assert "pydoc_data/topics.py" not in files.paths
    assert "pydoc_data/topics.py" in files.excluded
    with_tests = python_stdlib_files(include_tests=True)
    assert set(with_tests.paths) > set(files.paths)
    assert any(p.startswith("test/") for p in with_tests.paths)
    assert "without test/" in files.description and "with test/" in with_tests.description


@pytest.fixture(scope="module")
def code_tokenizer(tmp_path_factory):
    """A source-code tokenizer (`keep_whitespace`) of 500 pieces trained on json/ and AWKWARD."""
    lines = []
    for path in sorted((STDLIB / "json").glob("*.py")):
        lines += path.read_text(encoding="utf-8").split("\n")
    prefix = tmp_path_factory.mktemp("code_tokenizer") / "sp"
    train_tokenizer(lines + AWKWARD.split("\n"), prefix, vocab_size=500, lowercase=False,
                    unk_marker="", keep_whitespace=True)  # fmt: skip
    return load_tokenizer(f"{prefix}.model")


def sources():
    """Files of the standard library the tokenizer never saw (and one it did, and AWKWARD)."""
    names = ["json/decoder.py", "textwrap.py", "email/_header_value_parser.py",
             "lib2to3/tests/data/crlf.py", "lib2to3/tests/data/bom.py",
             "pydoc_data/topics.py"]  # fmt: skip
    texts = {name: (STDLIB / name).read_text(encoding="utf-8")
             for name in names if (STDLIB / name).is_file()}  # fmt: skip
    return {**texts, "awkward": AWKWARD}


def test_the_code_tokenizer_round_trips_source_exactly_and_counts_its_bytes(code_tokenizer):
    sp = code_tokenizer
    assert sp.encode("        return x", out_type=str)[0] == "▁" * 8  # one indentation piece
    per_id = bytes_per_id(sp)
    for name, text in sources().items():
        text = text if text.endswith("\n") else text + "\n"  # as the corpus writes it
        lines = text.split("\n")[:-1]  # as the build reads it (`read_lines`)
        encoded = encode_lines(sp, lines)
        assert decode_lines(sp, encoded.ids) == text, name  # byte for byte
        assert per_id[encoded.ids].sum() == len(text.encode("utf-8")), name
        assert sp.unk_id() not in encoded.ids


def test_the_default_tokenizer_would_not_round_trip(tmp_path):
    """The WikiText tokenizer normalizes: it loses indentation and case (why a corpus build
    trains another)."""
    prefix = tmp_path / "sp"
    train_tokenizer(AWKWARD.split("\n") * 20, prefix, vocab_size=295, unk_marker="")
    sp = load_tokenizer(f"{prefix}.model")
    lines = AWKWARD.split("\n")
    assert decode_lines(sp, encode_lines(sp, lines).ids) != AWKWARD


@pytest.mark.slow  # trains a tokenizer and a tiny model: ~40 s on 2 cores
def test_build_data_input_files_end_to_end_with_bits_per_byte(tmp_path):
    from par_xl.data import load_dataset
    from par_xl.models import PARTransformerXL
    from par_xl.training.evaluation import evaluate_split

    root = write_files(tmp_path / "src", count=40)
    out = tmp_path / "data"
    result = run_script(
        "build_data.py", f"--input_files={root}/**/*.py", f"--tfrecords_directory={out}",
        f"--sp_model_prefix={out}/sp", "--vocab_size=300", "--batch_size=2", "--seq_len=16",
        "--valid_fraction=0.2", "--test_fraction=0.2", "--shards=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "text" / "corpus.json").read_text())
    for split in ("train", "valid", "test"):
        metadata = read_metadata(out / split)
        assert metadata.corpus == manifest and not metadata.lowercase
        assert metadata.documents == manifest["splits"][split]["files"]
        assert metadata.document_start == DOCUMENT_START
        assert 0 < metadata.characters_used < metadata.bytes_used  # "é" 2 bytes, "☕" 3
    # The first batch row starts with a document: its header line.
    sp = load_tokenizer(f"{out}/sp.model")
    first, _ = next(iter(load_dataset(out / "valid", document_starts=True)))
    assert int(first["document_starts"][0, 0]) == 1
    assert sp.decode(first["token_ids"][0].numpy().tolist()).startswith("#@ file:")
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=300, d_model=16, num_heads=2, d_ffn=24, num_layers=2,
                             mem_len=8, cutoffs=[], architecture="AF", document_boundaries=True)
    model.build((2, 16))
    model.compile(jit_compile=False)
    figures = evaluate_split(model, out / "valid")
    metadata = read_metadata(out / "valid")
    expected = figures["loss"] * metadata.tokens_used / math.log(2) / metadata.bytes_used
    np.testing.assert_allclose(figures["bits_per_byte"], expected, rtol=1e-9)
    assert figures["bits_per_byte"] < figures["bits_per_token"]  # several bytes a token
    # The source of a corpus is exclusive with --input_text.
    both = run_script("build_data.py", f"--input_files={root}/*.py", f"--input_text={root}",
                      f"--tfrecords_directory={tmp_path / 'other'}")  # fmt: skip
    assert both.returncode == 1 and "give one of --input_text, --corpus and --input_files" in (
        both.stderr)  # fmt: skip
