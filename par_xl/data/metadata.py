"""Dataset metadata: one `metadata.json` per split directory, written last by the build.

Its presence means the split is complete. It records how the split was built (vocabulary, batch
size, sequence length, SentencePiece model and its hash), which shards hold its batches, in order,
with each shard's size and SHA-256, and what the batches cover: tokens, words and characters (for
word-level perplexity and bits per character) and document starts. `read_metadata` validates it
before training uses the split; `verify_shards` checks the shard files against it.

Format 2 (data v2): frequency-ordered ids, the unknown-word marker as one id, byte fallback,
document starts as a TFRecord feature, word and character counts, shard checksums. Format 1
splits are refused with a message to rebuild.
"""

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from par_xl.checks import INT_MAX
from par_xl.data.errors import DataError
from par_xl.data.text_files import SPLITS
from par_xl.files import atomic_write_text, sha256_file

FORMAT_VERSION = 2
METADATA_FILE = "metadata.json"
MODEL_TYPES = ("unigram", "bpe")  # SentencePiece's model types that build_data.py trains
_SHARD_FIELDS = ("file", "batches", "bytes", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Fields that must be >= 1 (words_used and characters_used divide the loss), and >= 0.
_POSITIVE = ("vocab_size", "batch_size", "seq_len", "steps", "words_used", "characters_used")
_NON_NEGATIVE = ("num_tokens", "tokens_used", "tokens_dropped", "num_words", "documents",
                 "bytes_used")  # fmt: skip
OPTIONAL = {"bytes_used": 0, "corpus": {}}  # fields a split built before them lacks


@dataclass(frozen=True)
class Shard:
    """One TFRecord file of a split and how many batches (records) it holds."""

    file: str  # file name, relative to the split directory
    batches: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class DatasetMetadata:
    """A built split: B = batch_size, T = seq_len, one record per (B, T) batch.

    num_tokens counts the split's ids (end-of-line ids included); tokens_used = steps * B * T pairs
    are in the batches, tokens_dropped = num_tokens - 1 - tokens_used were left at the end.
    num_words is WikiText's word count of the whole split (`text_units.word_count`); words_used and
    characters_used count the words and characters of the labels in the batches (what evaluation
    scores), so word perplexity is exp(total NLL / words_used). documents counts the document
    starts in the split (`documents.py`; 0 when document_start is "").
    """

    format_version: int
    split: str
    vocab_size: int
    batch_size: int
    seq_len: int
    steps: int
    num_tokens: int
    tokens_used: int
    tokens_dropped: int
    num_words: int
    words_used: int
    characters_used: int
    documents: int
    document_start: str  # the regular expression of a document's first line; "" for none
    lowercase: bool
    model_type: str
    unk_marker: str
    byte_fallback: bool
    sp_model: str  # absolute path of the SentencePiece .model
    sp_model_sha256: str
    shards: tuple[Shard, ...]
    source: str  # the text file the split was built from
    # Added later: a split built before them reads with these defaults (`OPTIONAL`).
    bytes_used: int = 0  # UTF-8 bytes of the labels' text (bits per byte); 0: not counted
    corpus: dict = dataclasses.field(default_factory=dict)  # corpus.json of a corpus build

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def write_metadata(directory: str | os.PathLike, metadata: DatasetMetadata) -> Path:
    """Writes `<directory>/metadata.json` atomically; returns its path."""
    path = Path(directory) / METADATA_FILE
    atomic_write_text(path, metadata.to_json())
    return path


def read_metadata(directory: str | os.PathLike) -> DatasetMetadata:
    """Reads and validates a split's `metadata.json`.

    Checks: the file exists, its format_version is supported, all keys are there with the right
    types, every shard file exists, and the shards' batches add up to `steps`.
    """
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: {directory} is not a built split, or its build did not "
            "finish; build the data with build_data.py (or create_tfrecords.sh)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} holds no JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path} has format_version={raw.get('format_version')!r}, this version of par-xl "
            f"reads format_version={FORMAT_VERSION}; rebuild the data with build_data.py"
        )
    fields = {field.name: field.type for field in dataclasses.fields(DatasetMetadata)}
    raw = {**OPTIONAL, **raw}
    missing = [name for name in fields if name not in raw]
    if missing:
        raise DataError(f"{path} lacks the keys {', '.join(missing)}; rebuild the data")
    for name, kind in fields.items():
        if name != "shards" and not _is_instance(raw[name], kind):
            raise DataError(f"{path}: {name}={raw[name]!r} is not of type {kind.__name__}")
    _check_ranges(path, raw)
    shards = _read_shards(path, raw["shards"])
    metadata = DatasetMetadata(**{**{name: raw[name] for name in fields}, "shards": shards})
    for shard in shards:
        if not (Path(directory) / shard.file).is_file():
            raise DataError(f"{path} lists the shard {shard.file}, which is not in {directory}")
    if sum(shard.batches for shard in shards) != metadata.steps:
        raise DataError(
            f"{path}: the shards hold {sum(s.batches for s in shards)} batches, "
            f"steps={metadata.steps}"
        )
    if metadata.tokens_used != metadata.steps * metadata.batch_size * metadata.seq_len:
        raise DataError(
            f"{path}: tokens_used={metadata.tokens_used} is not steps * batch_size * seq_len"
        )
    if metadata.tokens_dropped != metadata.num_tokens - 1 - metadata.tokens_used:
        raise DataError(
            f"{path}: tokens_dropped={metadata.tokens_dropped} is not num_tokens - 1 - "
            f"tokens_used = {metadata.num_tokens - 1 - metadata.tokens_used}"
        )
    return metadata


def _check_ranges(path: Path, raw: dict) -> None:
    """The values of a type-checked metadata.json: each in its range, or a DataError naming
    the field, its value and what it must be."""

    def bad(name, expected):
        return DataError(
            f"{path}: {name}={raw[name]!r} must be {expected}; rebuild the data, or restore "
            "the file"
        )

    for name in _POSITIVE:
        if raw[name] < 1:
            raise bad(name, "a positive integer")
    for name in ("vocab_size", "batch_size", "seq_len"):  # tensor shapes
        if raw[name] > INT_MAX:
            raise bad(name, f"at most {INT_MAX}")
    for name in _NON_NEGATIVE:
        if raw[name] < 0:
            raise bad(name, "an integer >= 0")
    if raw["split"] not in SPLITS:
        raise bad("split", f"one of {SPLITS}")
    if raw["model_type"] not in MODEL_TYPES:
        raise bad("model_type", f"one of {MODEL_TYPES}")
    if not _SHA256.fullmatch(raw["sp_model_sha256"]):
        raise bad("sp_model_sha256", "64 hexadecimal digits")
    try:
        re.compile(raw["document_start"])
    except re.error:
        raise bad("document_start", "a regular expression (or '' for none)") from None


def _read_shards(path: Path, shards: object) -> tuple[Shard, ...]:
    """metadata.json's `shards`: a list of {file, batches, bytes, sha256}, each file a name in
    the split directory, each count of its type and range."""
    expected = (
        f"{path}: shards must be a list of objects with the keys {', '.join(_SHARD_FIELDS)}: "
        "file (a file name in the split directory), batches (>= 1), bytes (>= 0), sha256 (64 "
        "hexadecimal digits)"
    )
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise DataError(expected)
    for shard in shards:
        if not set(_SHARD_FIELDS) <= set(shard):
            raise DataError(expected)
        file, batches, size, sha256 = (shard[name] for name in _SHARD_FIELDS)
        plain_name = isinstance(file, str) and file not in ("", ".", "..")
        if not (plain_name and Path(file).name == file and _is_instance(batches, int)
                and batches >= 1 and _is_instance(size, int) and size >= 0
                and isinstance(sha256, str) and _SHA256.fullmatch(sha256)):  # fmt: skip
            raise DataError(f"{expected}; received {shard!r}")
    return tuple(Shard(**{name: s[name] for name in _SHARD_FIELDS}) for s in shards)


def verify_shards(directory: str | os.PathLike, metadata: DatasetMetadata) -> None:
    """Checks each shard file's size and SHA-256 against the metadata; names the first bad one.

    A truncated, zero-padded or altered shard would otherwise end training with a DataLossError
    far from its cause, or worse, train on other data. Hashing reads the split once (WikiText-2
    train: 15 MB, ~30 ms).
    """
    for shard in metadata.shards:
        path = Path(directory) / shard.file
        size = path.stat().st_size
        if size != shard.bytes:
            raise DataError(
                f"{path} has {size} bytes, its metadata says {shard.bytes}: the shard is damaged "
                "(truncated or padded); rebuild the data with build_data.py"
            )
        if sha256_file(path) != shard.sha256:
            raise DataError(
                f"{path} does not match the SHA-256 in its metadata: the shard is damaged; "
                "rebuild the data with build_data.py"
            )


def _is_instance(value: object, kind: type) -> bool:
    """isinstance, except that a JSON bool is not an int."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
