"""The whole data build behind build_data.py: text -> SentencePiece -> ids -> TFRecord splits.

Order: check flags, inputs and outputs (before any slow work); read every split as checked UTF-8;
train SentencePiece on the training split (or reuse an existing model); encode every split and mark
its document starts; check every split gives at least one batch; then per split: cut it into
context batches, write its shards, the unigram file (train only), and its `metadata.json` last. The
log goes to stderr and to `<tfrecords_directory>/build_data.log`.

A build that fails (a full disk: `DiskFull`, naming the device and the space needed; an
interrupt; a bad split) removes what it wrote, the splits it began and the SentencePiece model
it trained, so that the same command runs again as it ran first.

Shards: the training split gets `shards` files; every other split the same number scaled by its
size relative to train, rounded up (WikiText-2 with 4 train shards: 1 for valid, 1 for test). A
build without a training split gives each split `shards`. No shard is ever empty.
"""

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from par_xl.checks import INT_MAX
from par_xl.data.context_batching import context_batches, num_batches
from par_xl.data.corpora import read_manifest
from par_xl.data.documents import (
    WIKITEXT_DOCUMENT_START,
    compile_pattern,
    document_starts,
    first_lines,
)
from par_xl.data.errors import DataError
from par_xl.data.metadata import (
    FORMAT_VERSION,
    METADATA_FILE,
    DatasetMetadata,
    write_metadata,
)
from par_xl.data.text_files import find_splits, read_lines
from par_xl.data.text_units import bytes_per_id, characters_per_id, word_count, words_per_id
from par_xl.data.tfrecords import write_shards
from par_xl.data.tokenizer import (
    MODEL_TYPES,
    EncodedLines,
    encode_lines,
    load_tokenizer,
    tokenizer_info,
    train_tokenizer,
)
from par_xl.data.unigram import (
    UNIGRAM_FILE,
    FrequencyOrder,
    cluster_shares,
    frequency_order,
    unigram_counts,
    write_unigram,
)
from par_xl.files import DiskFull, reporting_full_disk, sha256_file
from par_xl.runtime.log_files import log_to_file

LOG_FILE = "build_data.log"
MAX_THREADS = 1024  # SentencePiece's limit
# The original PAR cutoffs: the build logs the share of training tokens in each of their clusters.
REPORTED_CUTOFFS = (250, 2500)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """What to build; the fields are build_data.py's flags (their help text says more)."""

    input_text: str
    tfrecords_directory: str
    sp_model_prefix: str = ""
    vocab_size: int = 12000
    model_type: str = "unigram"
    lowercase: bool = True
    unk_marker: str = "<unk>"  # the corpus's unknown-word marker, made one id; "" for none
    byte_fallback: bool = True
    keep_whitespace: bool = False  # a tokenizer for source code (`tokenizer.train_tokenizer`)
    document_start: str = WIKITEXT_DOCUMENT_START  # regex of a document's first line; "": none
    document_start_isolated: bool = True  # the first line stands between blank lines
    batch_size: int = 32
    seq_len: int = 32
    shards: int = 4
    train_tokenizer: bool = True
    sp_model: str = ""  # an existing .model to reuse instead of training one
    overwrite: bool = False
    num_threads: int = 0  # 0: all available cores

    def validate(self) -> None:
        """Rejects flag values that cannot work, naming the flag."""
        for flag in ("input_text", "tfrecords_directory"):
            if not getattr(self, flag):
                raise DataError(f"--{flag} is required")
        for flag in ("vocab_size", "batch_size", "seq_len", "shards"):
            value = getattr(self, flag)
            if not 1 <= value <= INT_MAX:
                raise DataError(f"--{flag}={value}: expected a positive integer up to {INT_MAX}")
        if not 0 <= self.num_threads <= MAX_THREADS:
            raise DataError(
                f"--num_threads={self.num_threads}: expected a positive count up to "
                f"{MAX_THREADS}, or 0 for all cores"
            )
        if self.model_type not in MODEL_TYPES:
            raise DataError(f"--model_type={self.model_type}: expected one of {MODEL_TYPES}")
        if self.unk_marker != self.unk_marker.strip() or " " in self.unk_marker:
            raise DataError(
                f"--unk_marker={self.unk_marker!r}: expected one word without spaces, "
                "or '' for none"
            )
        compile_pattern(self.document_start)


@dataclass(frozen=True)
class BuildReport:
    """The built splits, the SentencePiece model used, and seconds per phase.

    seconds: read (text files), sp_train (0 when reusing a model), encode, write (batching and
    writing shards, unigram file, metadata), total.
    """

    splits: dict[str, DatasetMetadata]
    sp_model: Path
    seconds: dict[str, float]
    frequency_order: FrequencyOrder | None  # of the training split, when built
    cluster_shares: list[float] | None  # training tokens in each REPORTED_CUTOFFS cluster


def build_data(config: BuildConfig) -> BuildReport:
    """Builds the TFRecord splits of `config.input_text` into `config.tfrecords_directory`."""
    start = time.perf_counter()
    config.validate()
    texts = find_splits(config.input_text)
    sp_model, train_sp = _tokenizer_model(config, texts)
    out = Path(config.tfrecords_directory)
    for split in texts:
        _prepare_split_directory(config, out / split)
    begun = []  # the split directories this build began writing
    with log_to_file(out / LOG_FILE, "par_xl.data", "%(asctime)s %(levelname)s %(message)s"):
        try:
            log.info("build_data: %s", config)
            return _build(config, texts, sp_model, train_sp, start, begun)
        except BaseException as error:  # also an interrupt: nothing of this build stays
            if isinstance(error, DataError | DiskFull):
                log.error("%s", error)
            _remove_partial_build(begun, sp_model if train_sp else None)
            raise


def _remove_partial_build(splits: list[tuple[Path, str]], sp_model: Path | None) -> None:
    """Removes what a failed build wrote: the splits it began, the SentencePiece model it
    trained. What remains does not stop the same command from running again."""
    for directory, split in splits:
        _clear_split_directory(directory, split)
    if sp_model is not None:
        for path in (sp_model, sp_model.with_suffix(".vocab")):
            path.unlink(missing_ok=True)
    if splits or sp_model is not None:
        log.info("removed the partial build: %s", ", ".join(
            [str(d) for d, _ in splits] + ([str(sp_model)] if sp_model else [])))  # fmt: skip


def _tokenizer_model(config: BuildConfig, texts: dict[str, Path]) -> tuple[Path, bool]:
    """The SentencePiece .model to use, and whether to train it (checked before any work)."""
    prefix = config.sp_model_prefix
    if config.sp_model:
        path = Path(config.sp_model)
        if not path.is_file():
            raise DataError(
                f"--sp_model={config.sp_model} does not exist; expected an existing SentencePiece "
                ".model file, or no --sp_model to train one"
            )
        return path, False
    if not prefix:
        raise DataError(
            "--sp_model_prefix is required (where the SentencePiece .model and .vocab go, "
            "e.g. data/sp12k), unless --sp_model names a model to reuse"
        )
    path = Path(f"{prefix}.model")
    if not config.train_tokenizer:
        if not path.is_file():
            raise DataError(
                f"--notrain_tokenizer reuses {path} (--sp_model_prefix={prefix}), which does not "
                "exist; train it (--train_tokenizer) or pass --sp_model"
            )
        return path, False
    if "train" not in texts:
        raise DataError(
            f"--input_text={config.input_text} holds no training split, and SentencePiece is "
            "trained on the training split only; pass --sp_model to reuse a trained model"
        )
    if path.exists() and not config.overwrite:
        raise DataError(
            f"{path} exists (--sp_model_prefix={prefix}); pass --overwrite to train it again, "
            f"or --sp_model={path} to reuse it"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the directory of --sp_model_prefix={prefix}: {e.strerror}"
        ) from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise DataError(f"the directory of --sp_model_prefix={prefix} is not writable")
    return path, True


def _prepare_split_directory(config: BuildConfig, directory: Path) -> None:
    """Creates a split's output directory; refuses a non-empty one unless --overwrite."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create {directory} (--tfrecords_directory={config.tfrecords_directory}): "
            f"{e.strerror}; expected a writable directory"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DataError(
            f"{directory} is not writable (--tfrecords_directory={config.tfrecords_directory})"
        )
    if any(directory.iterdir()) and not config.overwrite:
        raise DataError(
            f"{directory} is not empty; pass --overwrite to replace the split, or choose another "
            "--tfrecords_directory"
        )


def _clear_split_directory(directory: Path, split: str) -> None:
    """Removes what an earlier build wrote, metadata.json first (the split is then incomplete)."""
    (directory / METADATA_FILE).unlink(missing_ok=True)
    for pattern in (f"{split}-*-of-*.tfrecord", UNIGRAM_FILE, "*.tmp-*"):
        for path in directory.glob(pattern):
            path.unlink()


def _shard_counts(shards: int, steps: dict[str, int]) -> dict[str, int]:
    """Shards per split: `shards` for train, scaled by size for the others, 1..steps each."""
    reference = steps.get("train")
    return {
        split: min(n, shards if reference is None else max(1, math.ceil(shards * n / reference)))
        for split, n in steps.items()
    }


class _Split(NamedTuple):
    """One split's encoded text, what the build needs to write it."""

    encoded: EncodedLines
    document_starts: np.ndarray  # (N,) int32 0/1
    num_words: int  # WikiText's count of the split's text


def _build(
    config: BuildConfig, texts: dict[str, Path], sp_model: Path, train_sp: bool, start: float,
    begun: list,
) -> BuildReport:
    """The build after the checks: read, tokenizer, encode, then each split's files."""
    seconds = {}
    num_threads = config.num_threads or len(os.sched_getaffinity(0))

    phase = time.perf_counter()
    lines = {split: read_lines(path) for split, path in texts.items()}
    seconds["read"] = time.perf_counter() - phase

    phase = time.perf_counter()
    if train_sp:
        _train_tokenizer(config, lines["train"], texts["train"], num_threads)
    seconds["sp_train"] = time.perf_counter() - phase
    sp = _load_tokenizer(config, sp_model, train_sp)

    phase = time.perf_counter()
    splits = {
        split: _encode_split(config, sp, split_lines, split, num_threads)
        for split, split_lines in lines.items()
    }
    seconds["encode"] = time.perf_counter() - phase

    phase = time.perf_counter()
    steps = _check_steps(config, texts, splits)
    shard_counts = _shard_counts(config.shards, steps)
    needed = sum(_estimated_bytes(config, n, len(sp)) for n in steps.values())
    writer = _SplitWriter(config, sp, sp_model, begun, needed)
    built = {
        split: writer(split, texts[split], data, steps[split], shard_counts[split])
        for split, data in splits.items()
    }
    seconds["write"] = time.perf_counter() - phase
    seconds["total"] = time.perf_counter() - start
    log.info("seconds per phase: %s", {k: round(v, 2) for k, v in seconds.items()})
    return BuildReport(built, sp_model, seconds, writer.frequency_order, writer.cluster_shares)


def _train_tokenizer(config: BuildConfig, lines: list[str], source: Path, num_threads: int):
    log.info(
        "training SentencePiece (%s, vocabulary %d, lowercase %s, unknown-word marker %r, byte "
        "fallback %s, %d threads) on %s",
        config.model_type,
        config.vocab_size,
        config.lowercase,
        config.unk_marker,
        config.byte_fallback,
        num_threads,
        source,
    )
    train_tokenizer(
        lines,
        config.sp_model_prefix,
        vocab_size=config.vocab_size,
        model_type=config.model_type,
        lowercase=config.lowercase,
        unk_marker=config.unk_marker,
        byte_fallback=config.byte_fallback,
        keep_whitespace=config.keep_whitespace,
        num_threads=num_threads,
        source=f"{source} (the training split)",
    )


def _load_tokenizer(config: BuildConfig, sp_model: Path, trained: bool):
    """Loads the model; a reused one's own settings apply, and the log says where they differ."""
    sp = load_tokenizer(sp_model)
    info = tokenizer_info(sp)
    log.info("SentencePiece model %s: %s", sp_model, info)
    names = ("vocab_size", "lowercase", "model_type", "unk_marker", "byte_fallback",
             "keep_whitespace")  # fmt: skip
    differ = [n for n in names if getattr(info, n) != getattr(config, n)]
    if not trained and differ:
        log.warning(
            "reusing %s: its own %s apply, not %s",
            sp_model,
            ", ".join(f"{n}={getattr(info, n)!r}" for n in differ),
            ", ".join(f"--{n}={getattr(config, n)!r}" for n in differ),
        )
    return sp


def _encode_split(config: BuildConfig, sp, lines: list[str], split: str, num_threads: int):
    encoded = encode_lines(sp, lines, num_threads=num_threads, desc=f"encoding {split}")
    starting = first_lines(lines, config.document_start, config.document_start_isolated)
    starts = document_starts(encoded.line_lengths, starting).astype(np.int32)
    return _Split(encoded, starts, word_count(lines))


def _check_steps(config: BuildConfig, texts: dict[str, Path], splits: dict[str, _Split]):
    """Batches per split; every split must give at least one."""
    tokens = config.batch_size * config.seq_len
    steps = {}
    for split, data in splits.items():
        steps[split] = num_batches(len(data.encoded.ids), config.batch_size, config.seq_len)
        if steps[split] == 0:
            raise DataError(
                f"split {split!r} ({texts[split]}) has N={len(data.encoded.ids)} ids, too few for "
                f"one batch of --batch_size * --seq_len = {config.batch_size} * {config.seq_len} "
                f"= {tokens} tokens (it needs at least {tokens + 1}); lower --batch_size or "
                "--seq_len"
            )
    return steps


def _estimated_bytes(config: BuildConfig, steps: int, vocab_size: int) -> int:
    """About how many bytes a split's shards take: per batch, B * T ids and labels as varints
    (1-3 bytes, by the vocabulary size), a document-start byte each, and a record's framing."""
    varint = 1 if vocab_size <= 2**7 else 2 if vocab_size <= 2**14 else 3
    return steps * (config.batch_size * config.seq_len * (2 * varint + 1) + 64)


class _SplitWriter:
    """Writes one split's directory: shards, unigram file (train), `metadata.json` last.

    `begun` collects each split directory as it is begun (to be removed if the build fails);
    `needed` is what the whole build takes, which a full disk's message gives."""

    def __init__(self, config: BuildConfig, sp, sp_model: Path, begun: list, needed: int):
        self.begun = begun
        self.needed = needed
        self.config = config
        self.sp = sp
        self.info = tokenizer_info(sp)
        self.sp_model = sp_model
        self.sha256 = sha256_file(sp_model)
        self.words_per_id = words_per_id(sp)
        self.characters_per_id = characters_per_id(sp)
        self.bytes_per_id = bytes_per_id(sp)
        corpus_directory = Path(config.input_text)
        self.corpus = read_manifest(corpus_directory) if corpus_directory.is_dir() else None
        self.frequency_order = None
        self.cluster_shares = None

    def __call__(self, split, source: Path, data: _Split, steps: int, num_shards: int):
        directory = Path(self.config.tfrecords_directory) / split
        self.begun.append((directory, split))
        advice = "what the build wrote is removed: run it again"
        with reporting_full_disk(directory / f"the {split} split of the build", self.needed,
                                 advice):  # fmt: skip
            return self._write(directory, split, source, data, steps, num_shards)

    def _write(self, directory, split, source: Path, data: _Split, steps: int, num_shards: int):
        config, ids = self.config, data.encoded.ids
        _clear_split_directory(directory, split)
        batches = context_batches(ids, config.batch_size, config.seq_len, data.document_starts)
        shards = write_shards(directory, split, batches, num_shards)
        if split == "train":
            self._write_unigram(directory, ids)
        labels = ids[1 : steps * config.batch_size * config.seq_len + 1]
        metadata = DatasetMetadata(
            format_version=FORMAT_VERSION,
            split=split,
            vocab_size=self.info.vocab_size,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            steps=steps,
            num_tokens=len(ids),
            tokens_used=len(labels),
            tokens_dropped=batches.tokens_dropped,
            num_words=data.num_words,
            words_used=int(self.words_per_id[labels].sum()),
            characters_used=int(self.characters_per_id[labels].sum()),
            documents=int(data.document_starts.sum()),
            document_start=config.document_start,
            lowercase=self.info.lowercase,
            model_type=self.info.model_type,
            unk_marker=self.info.unk_marker,
            byte_fallback=self.info.byte_fallback,
            sp_model=os.fspath(self.sp_model.resolve()),
            sp_model_sha256=self.sha256,
            shards=shards,
            source=os.fspath(source.resolve()),
            bytes_used=int(self.bytes_per_id[labels].sum()),
            corpus=self.corpus or {},
        )
        write_metadata(directory, metadata)
        log.info(
            "%s: %d ids -> %d batches of %d x %d in %d shards, %d tokens dropped at the end; "
            "%d words (%d in the batches), %d documents",
            split,
            len(ids),
            steps,
            config.batch_size,
            config.seq_len,
            len(shards),
            batches.tokens_dropped,
            metadata.num_words,
            metadata.words_used,
            metadata.documents,
        )
        return metadata

    def _write_unigram(self, directory: Path, ids: np.ndarray):
        counts = unigram_counts(ids, self.info.vocab_size)
        pieces = [self.sp.id_to_piece(i) for i in range(self.info.vocab_size)]
        write_unigram(directory / UNIGRAM_FILE, pieces, counts)
        self.frequency_order = frequency_order(counts)
        log.info("train: id order vs frequency: %s", self.frequency_order)
        cutoffs = [c for c in REPORTED_CUTOFFS if c < self.info.vocab_size]
        self.cluster_shares = cluster_shares(counts, cutoffs)
        log.info(
            "train: share of tokens per cluster at cutoffs %s (head first): %s",
            cutoffs,
            [round(share, 4) for share in self.cluster_shares],
        )
