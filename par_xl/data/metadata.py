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
from dataclasses import dataclass
from pathlib import Path

from par_xl.data.errors import DataError
from par_xl.files import atomic_write_text, sha256_file

FORMAT_VERSION = 2
METADATA_FILE = "metadata.json"
_SHARD_FIELDS = ("file", "batches", "bytes", "sha256")


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
    missing = [name for name in fields if name not in raw]
    if missing:
        raise DataError(f"{path} lacks the keys {', '.join(missing)}; rebuild the data")
    for name, kind in fields.items():
        if name != "shards" and not _is_instance(raw[name], kind):
            raise DataError(f"{path}: {name}={raw[name]!r} is not of type {kind.__name__}")
    try:
        shards = tuple(Shard(**{name: s[name] for name in _SHARD_FIELDS}) for s in raw["shards"])
    except (TypeError, KeyError):
        raise DataError(
            f"{path}: shards must be a list of objects with the keys {', '.join(_SHARD_FIELDS)}"
        ) from None
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
    return metadata


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
