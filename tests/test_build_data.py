"""The data build end to end: SentencePiece, TFRecord shards, metadata, unigram file, the reader,
bad input, interrupted writes, and the build_data.py command line."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
from scripts import run_script

from par_xl.data import (
    METADATA_FILE,
    SPLITS,
    UNIGRAM_FILE,
    BuildConfig,
    DataError,
    build_data,
    load_dataset,
    read_metadata,
)
from par_xl.data import tfrecords as tfrecords_module
from par_xl.data.unigram import frequency_order
from par_xl.files import atomic_path, sha256_file

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=400, batch_size=4, seq_len=8, shards=3)


def small_config(text_dir, out: Path, **overrides) -> BuildConfig:
    """A build of `text_dir` into `out/tfrecords` with its model at `out/sp`."""
    fields = dict(
        input_text=str(text_dir),
        tfrecords_directory=str(out / "tfrecords"),
        sp_model_prefix=str(out / "sp"),
        **SMALL,
    )
    return BuildConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def small_build(small_text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("small_build")
    report = build_data(small_config(small_text_dir, out))
    return out / "tfrecords", report


def expected_ids(sp_model: str, text_file: Path) -> np.ndarray:
    """Independent reference: each line's SentencePiece ids, then </s>."""
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    ids = []
    for line in text_file.read_text(encoding="utf-8").split("\n")[:-1]:
        ids += sp.encode(line) + [sp.eos_id()]
    return np.array(ids)


def read_split(directory: Path, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """All (inputs, labels) of a split, stacked: (S, B, T) each."""
    batches = list(load_dataset(directory, **kwargs).as_numpy_iterator())
    return np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])


# ---------------------------------------------------------------------------- the built data


@pytest.mark.parametrize("split", SPLITS)
def test_dataset_ids_equal_sentencepiece_encoding(small_build, small_text_dir, split):
    tfrecords, _ = small_build
    metadata = read_metadata(tfrecords / split)
    ids = expected_ids(metadata.sp_model, small_text_dir / f"{split}.txt")
    inputs, labels = read_split(tfrecords / split)
    b, t, used = metadata.batch_size, metadata.seq_len, metadata.tokens_used
    assert inputs.shape == labels.shape == (metadata.steps, b, t)
    assert metadata.num_tokens == ids.size
    assert metadata.tokens_dropped == ids.size - 1 - used < b * t
    # Row i of all batches is stream i: undo the (S, B, T) layout into one stream per row.
    np.testing.assert_array_equal(inputs.swapaxes(0, 1).reshape(-1), ids[:used])
    np.testing.assert_array_equal(labels.swapaxes(0, 1).reshape(-1), ids[1 : used + 1])


def test_metadata_and_files(small_build, small_text_dir):
    tfrecords, report = small_build
    for split in SPLITS:
        metadata = read_metadata(tfrecords / split)
        assert report.splits[split] == metadata
        assert (metadata.format_version, metadata.split) == (2, split)
        assert (metadata.vocab_size, metadata.batch_size, metadata.seq_len) == (400, 4, 8)
        assert metadata.lowercase and metadata.model_type == "unigram"
        assert metadata.sp_model == str(report.sp_model.resolve())
        assert metadata.sp_model_sha256 == sha256_file(metadata.sp_model)
        assert metadata.source == str((small_text_dir / f"{split}.txt").resolve())
        assert metadata.tokens_used == metadata.steps * 4 * 8
        sizes = [shard.batches for shard in metadata.shards]
        assert sum(sizes) == metadata.steps and max(sizes) - min(sizes) <= 1
        n = len(metadata.shards)
        assert [s.file for s in metadata.shards] == [
            f"{split}-{k:05d}-of-{n:05d}.tfrecord" for k in range(n)
        ]
        extra = {UNIGRAM_FILE} if split == "train" else set()
        assert (
            set(os.listdir(tfrecords / split))
            == {
                METADATA_FILE,
                *(s.file for s in metadata.shards),
            }
            | extra
        )
    assert len(report.splits["train"].shards) == 3
    assert len(report.splits["valid"].shards) == 1  # scaled down: valid is ~1/8 of train
    assert (tfrecords / "build_data.log").read_text().count("seconds per phase") == 1


def split_lines(text_file: Path) -> list[str]:
    return text_file.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.mark.parametrize("split", SPLITS)
def test_document_starts_mark_the_end_of_line_before_each_title(small_build, small_text_dir, split):
    """The generated corpus has a title at every line k with k % 9 == 1 (see conftest)."""
    tfrecords, _ = small_build
    metadata = read_metadata(tfrecords / split)
    sp = spm.SentencePieceProcessor(model_file=metadata.sp_model)
    lines = split_lines(small_text_dir / f"{split}.txt")
    line_ends = np.cumsum([len(sp.encode(line)) + 1 for line in lines])
    titles = range(1, len(lines), 9)
    expected = np.zeros(line_ends[-1], np.int32)
    expected[[line_ends[k - 1] - 1 for k in titles]] = 1
    assert metadata.documents == len(titles)
    batches = list(load_dataset(tfrecords / split, document_starts=True).as_numpy_iterator())
    features = np.stack([x["document_starts"] for x, _ in batches])
    inputs = np.stack([x["token_ids"] for x, _ in batches])
    np.testing.assert_array_equal(inputs, read_split(tfrecords / split)[0])
    used = metadata.tokens_used
    np.testing.assert_array_equal(features.swapaxes(0, 1).reshape(-1), expected[:used])


def test_no_document_boundaries(small_text_dir, tmp_path):
    report = build_data(small_config(small_text_dir, tmp_path, document_start=""))
    assert report.splits["train"].documents == 0
    batches = load_dataset(tmp_path / "tfrecords" / "valid", document_starts=True)
    assert not any(x["document_starts"].any() for x, _ in batches.as_numpy_iterator())


@pytest.mark.parametrize("split", SPLITS)
def test_word_and_character_counts(small_build, small_text_dir, split):
    tfrecords, _ = small_build
    metadata = read_metadata(tfrecords / split)
    lines = split_lines(small_text_dir / f"{split}.txt")
    assert metadata.num_words == sum(len(line.split()) for line in lines) + len(lines)
    sp = spm.SentencePieceProcessor(model_file=metadata.sp_model)
    ids = expected_ids(metadata.sp_model, small_text_dir / f"{split}.txt")
    starts_word = np.array([p.startswith("\u2581") for p in map(sp.id_to_piece, range(400))])
    starts_word[sp.eos_id()] = True
    assert starts_word[ids].sum() == metadata.num_words  # the stream's count is WikiText's
    labels = ids[1 : metadata.tokens_used + 1]
    assert metadata.words_used == starts_word[labels].sum() < metadata.num_words
    decoded = [sp.decode(sp.encode(line)) for line in lines]  # the normalized text
    characters = sum(len(line) + (len(line) > 0) + 1 for line in decoded)  # space, end of line
    assert metadata.characters_used < characters
    assert characters - metadata.characters_used < 2 * 4 * 8 * 10  # only the dropped tail


def test_one_record_per_batch(small_build):
    tfrecords, _ = small_build
    metadata = read_metadata(tfrecords / "valid")
    records = list(tf.data.TFRecordDataset(str(tfrecords / "valid" / metadata.shards[0].file)))
    assert len(records) == metadata.steps
    example = tf.train.Example.FromString(records[0].numpy())
    assert sorted(example.features.feature) == ["document_starts", "inputs", "labels"]
    assert len(example.features.feature["inputs"].int64_list.value) == 4 * 8


def test_unigram_file(small_build, small_text_dir):
    tfrecords, _ = small_build
    metadata = read_metadata(tfrecords / "train")
    sp = spm.SentencePieceProcessor(model_file=metadata.sp_model)
    ids = expected_ids(metadata.sp_model, small_text_dir / "train.txt")
    lines = (tfrecords / "train" / UNIGRAM_FILE).read_text(encoding="utf-8").splitlines()
    fields = [line.split("\t") for line in lines]
    assert [int(f[0]) for f in fields] == list(range(metadata.vocab_size))
    assert [f[1] for f in fields] == [sp.id_to_piece(i) for i in range(metadata.vocab_size)]
    counts = np.array([int(f[2]) for f in fields])
    np.testing.assert_array_equal(counts, np.bincount(ids, minlength=metadata.vocab_size))
    probabilities = np.array([float(f[-1]) for f in fields])
    np.testing.assert_allclose(probabilities, counts / counts.sum(), rtol=1e-8)


def test_model_lowercases_itself(small_build):
    _, report = small_build
    sp = spm.SentencePieceProcessor(model_file=str(report.sp_model))
    assert sp.encode("Kalo MIPO ruka") == sp.encode("kalo mipo ruka")


def test_nolowercase_keeps_case(small_text_dir, tmp_path):
    report = build_data(small_config(small_text_dir, tmp_path, lowercase=False))
    sp = spm.SentencePieceProcessor(model_file=str(report.sp_model))
    assert not report.splits["train"].lowercase
    assert sp.encode("Kalo MIPO") != sp.encode("kalo mipo")


def test_training_is_reproducible(small_text_dir, tmp_path):
    first = build_data(small_config(small_text_dir, tmp_path))
    again = build_data(small_config(small_text_dir, tmp_path, overwrite=True))
    assert again.splits["train"].sp_model_sha256 == first.splits["train"].sp_model_sha256


def test_existing_model_can_be_reused(small_build, small_text_dir, tmp_path):
    tfrecords, first = small_build
    reused = build_data(
        small_config(
            small_text_dir,
            tmp_path,
            tfrecords_directory=str(tmp_path / "reused"),
            sp_model=str(first.sp_model),
            vocab_size=999,
        )
    )
    assert reused.sp_model == first.sp_model and not (tmp_path / "sp.model").exists()
    assert reused.splits["valid"].sp_model_sha256 == first.splits["valid"].sp_model_sha256
    assert reused.splits["valid"].vocab_size == 400  # the model's, not --vocab_size
    shard = first.splits["valid"].shards[0].file
    assert (tmp_path / "reused" / "valid" / shard).read_bytes() == (
        tfrecords / "valid" / shard
    ).read_bytes()
    # --notrain_tokenizer reuses <sp_model_prefix>.model.
    build_data(
        small_config(
            small_text_dir / "test.txt",
            tmp_path,
            tfrecords_directory=str(tmp_path / "prefix"),
            train_tokenizer=False,
            sp_model_prefix=str(first.sp_model.with_suffix("")),
        )
    )
    assert sorted(os.listdir(tmp_path / "prefix")) == ["build_data.log", "test"]


# ---------------------------------------------------------------------------- the reader


def test_reader_shapes_cardinality_skip_and_repeat(small_build):
    tfrecords, _ = small_build
    directory = tfrecords / "valid"
    steps = read_metadata(directory).steps
    dataset = load_dataset(directory)
    assert dataset.element_spec == (
        tf.TensorSpec((4, 8), tf.int32),
        tf.TensorSpec((4, 8), tf.int32),
    )
    assert dataset.cardinality() == steps
    inputs, labels = read_split(directory)
    skipped = load_dataset(directory, skip_batches=5)
    assert skipped.cardinality() == steps - 5
    np.testing.assert_array_equal(read_split(directory, skip_batches=5)[0], inputs[5:])
    repeated = load_dataset(directory, skip_batches=steps + 2, repeat=True)
    assert repeated.cardinality() == tf.data.INFINITE_CARDINALITY
    batches = [b[1] for b in repeated.take(steps).as_numpy_iterator()]
    np.testing.assert_array_equal(np.stack(batches), np.concatenate([labels[2:], labels[:2]]))
    assert len(list(load_dataset(directory, skip_batches=steps))) == 0
    with pytest.raises(DataError, match=rf"skip_batches={steps + 1} is outside 0..{steps}"):
        load_dataset(directory, skip_batches=steps + 1)
    with pytest.raises(DataError, match="skip_batches=-1"):
        load_dataset(directory, skip_batches=-1, repeat=True)


def copy_split(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in os.listdir(source):
        (target / name).write_bytes((source / name).read_bytes())
    return target


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m, d: (d / METADATA_FILE).unlink(), "does not exist: .* run build_data|build_data"),
        (lambda m, d: m.update(format_version=1), "format_version=1, .* reads format_version=2"),
        (lambda m, d: m.pop("steps"), "lacks the keys steps"),
        (lambda m, d: m.update(steps="12"), "steps='12' is not of type int"),
        (lambda m, d: m.update(lowercase=1), "lowercase=1 is not of type bool"),
        (lambda m, d: (d / m["shards"][0]["file"]).unlink(), "lists the shard valid-00000"),
        (lambda m, d: m.update(steps=m["steps"] + 1), "the shards hold \\d+ batches, steps="),
        (lambda m, d: m["shards"][0].pop("batches"), "shards must be a list"),
    ],
)
def test_read_metadata_rejects(small_build, tmp_path, change, message):
    tfrecords, _ = small_build
    directory = copy_split(tfrecords / "valid", tmp_path / "valid")
    metadata = json.loads((directory / METADATA_FILE).read_text())
    change(metadata, directory)
    if (directory / METADATA_FILE).exists():
        (directory / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(DataError, match=message):
        read_metadata(directory)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: data + bytes(4096),  # zero-padded
        lambda data: data[:100] + bytes([data[100] ^ 1]) + data[101:],  # one bit flipped
    ],
    ids=["truncated", "zero-padded", "bit-flipped"],
)
def test_damaged_shard_is_named_before_reading(small_build, tmp_path, damage):
    tfrecords, _ = small_build
    directory = copy_split(tfrecords / "train", tmp_path / "train")
    shard = directory / read_metadata(directory).shards[1].file
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(DataError, match=f"{shard} .*damaged.*rebuild"):
        load_dataset(directory)


def test_read_metadata_of_a_missing_directory_says_how_to_build(tmp_path):
    with pytest.raises(DataError, match="build_data.py \\(or create_tfrecords.sh\\)"):
        read_metadata(tmp_path / "nothing")


# ---------------------------------------------------------------------------- bad input


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def text_dir(small_text_dir, tmp_path) -> Path:
    """A writable copy of the small corpus, to break."""
    return copy_split(small_text_dir, tmp_path / "text")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(vocab_size=0), "--vocab_size=0: expected a positive integer"),
        (dict(batch_size=-1), "--batch_size=-1: expected a positive integer"),
        (dict(seq_len=0), "--seq_len=0: expected a positive integer"),
        (dict(shards=0), "--shards=0: expected a positive integer"),
        (dict(num_threads=-2), "--num_threads=-2: expected a positive count up to 1024, or 0"),
        (dict(model_type="word"), "--model_type=word: expected one of"),
        (dict(input_text=""), "--input_text is required"),
        (dict(sp_model_prefix=""), "--sp_model_prefix is required"),
    ],
)
def test_bad_flag_values(small_text_dir, tmp_path, overrides, message):
    with pytest.raises(DataError, match=message):
        build_data(small_config(small_text_dir, tmp_path, **overrides))
    assert not (tmp_path / "tfrecords").exists()


def test_missing_input(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"--input_text={missing} does not exist; expected a text"):
        build_data(small_config(missing, tmp_path))


def test_directory_without_splits(text_dir, tmp_path):
    (text_dir / "valid.txt").unlink()
    (text_dir / "test.txt").unlink()
    with pytest.raises(DataError, match=r"is a directory without valid.txt, test.txt; expected"):
        build_data(small_config(text_dir, tmp_path))


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(text_dir, tmp_path, content):
    write(text_dir / "test.txt", content)
    with pytest.raises(DataError, match=r"test.txt is empty; expected UTF-8 text"):
        build_data(small_config(text_dir, tmp_path))
    assert not (tmp_path / "sp.model").exists()  # checked before training


def test_non_utf8_names_file_and_line(text_dir, tmp_path):
    write(text_dir / "valid.txt", "first line\nsecond\nthird caf\u00e9 ".encode() + b"\xff end\n")
    with pytest.raises(DataError, match=r"valid.txt, line 3: byte 0xff at byte 13 .* not valid"):
        build_data(small_config(text_dir, tmp_path))


def test_vocab_size_too_large(text_dir, tmp_path):
    with pytest.raises(DataError) as error:
        build_data(small_config(text_dir, tmp_path, vocab_size=50000))
    assert "--vocab_size=50000 is too large for" in str(error.value)
    assert "train.txt (the training split)" in str(error.value)
    assert "at most 530 pieces" in str(error.value)
    assert not list(tmp_path.glob("sp*"))  # no model, no temporary files


def test_vocab_size_too_small(text_dir, tmp_path):
    with pytest.raises(DataError, match=r"--vocab_size=10 is too small .* at least \d+"):
        build_data(small_config(text_dir, tmp_path, vocab_size=10))


def test_split_shorter_than_one_batch(text_dir, tmp_path):
    write(text_dir / "test.txt", b"kalo mipo\n\nruka\n")
    with pytest.raises(DataError) as error:
        build_data(small_config(text_dir, tmp_path))
    message = str(error.value)
    assert f"split 'test' ({text_dir / 'test.txt'}) has N=" in message
    assert "--batch_size * --seq_len = 4 * 8 = 32 tokens" in message
    assert os.listdir(tmp_path / "tfrecords" / "train") == []  # failed before writing any split


def test_unwritable_output_directory(small_text_dir, tmp_path):
    blocker = write(tmp_path / "file", b"x")
    with pytest.raises(DataError, match=r"cannot create .*file/train .*Not a directory"):
        build_data(small_config(small_text_dir, tmp_path, tfrecords_directory=str(blocker)))
    with pytest.raises(DataError, match=r"directory of --sp_model_prefix=.*file/sp"):
        build_data(small_config(small_text_dir, tmp_path, sp_model_prefix=str(blocker / "sp")))


def test_non_empty_split_directory_needs_overwrite(small_text_dir, tmp_path):
    old = write(tmp_path / "tfrecords" / "valid" / "valid-00000-of-00009.tfrecord", b"old")
    with pytest.raises(DataError, match=r"tfrecords/valid is not empty; pass --overwrite"):
        build_data(small_config(small_text_dir, tmp_path))
    assert old.read_bytes() == b"old"  # nothing lost
    build_data(small_config(small_text_dir, tmp_path, overwrite=True))
    assert not old.exists()  # an earlier build's shards are replaced, not left beside the new
    read_metadata(tmp_path / "tfrecords" / "valid")


def test_existing_sp_model_needs_overwrite(small_text_dir, tmp_path):
    model = write(tmp_path / "sp.model", b"precious")
    with pytest.raises(DataError, match=r"sp.model exists .*--overwrite .*--sp_model=.*sp.model"):
        build_data(small_config(small_text_dir, tmp_path))
    assert model.read_bytes() == b"precious"


def test_missing_sp_model(small_text_dir, tmp_path):
    missing = tmp_path / "none.model"
    with pytest.raises(DataError, match=f"--sp_model={missing} does not exist"):
        build_data(small_config(small_text_dir, tmp_path, sp_model=str(missing)))
    with pytest.raises(DataError, match=r"--notrain_tokenizer reuses .*sp.model .*does not exist"):
        build_data(small_config(small_text_dir, tmp_path, train_tokenizer=False))


def test_not_a_sentencepiece_model(small_text_dir, tmp_path):
    bad = write(tmp_path / "bad.model", b"not a model")
    with pytest.raises(DataError, match="cannot load SentencePiece model .*bad.model"):
        build_data(small_config(small_text_dir, tmp_path, sp_model=str(bad)))


def test_training_needs_the_training_split(small_text_dir, tmp_path):
    with pytest.raises(DataError, match="holds no training split"):
        build_data(small_config(small_text_dir / "valid.txt", tmp_path))


# ---------------------------------------------------------------------------- interrupts


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "file.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert os.listdir(tmp_path) == ["file.json"] and target.read_text() == "whole"


def test_interrupted_write_leaves_no_file_under_a_final_name(small_text_dir, tmp_path, monkeypatch):
    serialize = tfrecords_module.serialize_batch
    calls = []

    def failing_serialize(*batch):
        calls.append(1)
        if len(calls) == 700:  # inside the second of three train shards (596 batches each)
            raise KeyboardInterrupt
        return serialize(*batch)

    monkeypatch.setattr(tfrecords_module, "serialize_batch", failing_serialize)
    with pytest.raises(KeyboardInterrupt):
        build_data(small_config(small_text_dir, tmp_path))
    # What the build wrote is removed, the complete first shard and the model included, so
    # that the same build runs again without --overwrite (issue 33).
    assert os.listdir(tmp_path / "tfrecords" / "train") == []
    assert not list(tmp_path.glob("sp.*"))
    build_data(small_config(small_text_dir, tmp_path))


# ---------------------------------------------------------------------------- command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return run_script("build_data.py", *args, env=env, timeout=300)


def test_cli_end_to_end(small_text_dir, tmp_path):
    result = run_cli(
        f"--input_text={small_text_dir}",
        f"--tfrecords_directory={tmp_path / 'tf'}",
        f"--sp_model_prefix={tmp_path / 'sp400'}",
        "--vocab_size=400",
        "--batch_size=4",
        "--seq_len=8",
        "--shards=2",
        "--num_threads=1",
    )
    assert result.returncode == 0, result.stderr
    metadata = read_metadata(tmp_path / "tf" / "train")
    assert f"train: {metadata.steps} batches of 4 x 8" in result.stdout
    assert len(metadata.shards) == 2 and metadata.sp_model == str(tmp_path / "sp400.model")
    ids = expected_ids(metadata.sp_model, small_text_dir / "train.txt")
    inputs, _ = read_split(tmp_path / "tf" / "train")
    np.testing.assert_array_equal(inputs.swapaxes(0, 1).reshape(-1), ids[: metadata.tokens_used])
    assert (tmp_path / "tf" / "train" / UNIGRAM_FILE).is_file()
    assert "seconds per phase" in (tmp_path / "tf" / "build_data.log").read_text()


def test_cli_bad_input_prints_the_message_without_traceback(tmp_path):
    result = run_cli(
        f"--input_text={tmp_path / 'missing'}",
        f"--tfrecords_directory={tmp_path / 'tf'}",
        f"--sp_model_prefix={tmp_path / 'sp'}",
    )
    assert result.returncode == 1
    assert f"build_data.py: error: --input_text={tmp_path / 'missing'} does not exist" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- WikiText-2


WIKITEXT2_WORDS = {"train": 2_088_628, "valid": 217_646, "test": 245_569}


@pytest.mark.slow
def test_wikitext2_build(wikitext2_tfrecords, wikitext2_dir):
    tfrecords = wikitext2_tfrecords.tfrecords_directory
    sp_model = f"{wikitext2_tfrecords.sp_model_prefix}.model"
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    unk = sp.encode("<unk>")
    assert len(unk) == 1 and sp.decode(unk) == "<unk>"
    for split in SPLITS:
        metadata = read_metadata(tfrecords / split)
        assert (metadata.vocab_size, metadata.batch_size, metadata.seq_len) == (12000, 32, 32)
        assert metadata.sp_model == sp_model and metadata.lowercase
        assert len(metadata.shards) == (4 if split == "train" else 1)
        assert metadata.num_words == WIKITEXT2_WORDS[split]  # the standard count
        assert metadata.documents == (600 if split == "train" else 60)  # one per article
        ids = expected_ids(sp_model, wikitext2_dir / f"{split}.txt")
        lines = (wikitext2_dir / f"{split}.txt").read_bytes().count(b"\n")
        assert np.sum(ids == 2) == lines  # one end-of-line id per line, empty lines included
        assert not np.any(ids == sp.unk_id())  # byte fallback: nothing is unknown
        text = (wikitext2_dir / f"{split}.txt").read_text(encoding="utf-8")
        assert np.sum(ids == unk[0]) == text.count(" <unk>")  # every marker is one id
        inputs, labels = read_split(tfrecords / split)
        used = metadata.tokens_used
        assert metadata.tokens_dropped == ids.size - 1 - used < 32 * 32
        np.testing.assert_array_equal(inputs.swapaxes(0, 1).reshape(-1), ids[:used])
        np.testing.assert_array_equal(labels.swapaxes(0, 1).reshape(-1), ids[1 : used + 1])
    counts = np.array(
        [
            int(line.split("\t")[2])
            for line in (tfrecords / "train" / UNIGRAM_FILE).read_text().splitlines()
        ]
    )
    assert np.all(np.diff(counts[3:]) <= 0)  # ids follow frequency after the special ids
    order = frequency_order(counts)
    assert order.spearman > 0.99 and order.top_fraction[250] > 0.99, order
