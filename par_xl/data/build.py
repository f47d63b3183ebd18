"""The whole data build behind build_data.py: text -> SentencePiece -> ids -> TFRecord splits.

Order: check flags, inputs and outputs (before any slow work); read every split as checked UTF-8;
train SentencePiece on the training split (or reuse an existing model); encode every split; check
every split gives at least one batch; then per split: cut it into context batches, write its shards,
the unigram file (train only), and its `metadata.json` last. The log goes to stderr and to
`<tfrecords_directory>/build_data.log`.

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

from par_xl.data.context_batching import context_batches, num_batches
from par_xl.data.errors import DataError
from par_xl.data.metadata import (
    FORMAT_VERSION,
    METADATA_FILE,
    DatasetMetadata,
    write_metadata,
)
from par_xl.data.text_files import find_splits, read_lines
from par_xl.data.tfrecords import write_shards
from par_xl.data.tokenizer import (
    MODEL_TYPES,
    encode_lines,
    load_tokenizer,
    tokenizer_info,
    train_tokenizer,
)
from par_xl.data.unigram import (
    UNIGRAM_FILE,
    FrequencyOrder,
    frequency_order,
    unigram_counts,
    write_unigram,
)
from par_xl.files import sha256_file
from par_xl.log_files import log_to_file

LOG_FILE = "build_data.log"

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
            if value < 1:
                raise DataError(f"--{flag}={value}: expected a positive integer")
        if self.num_threads < 0:
            raise DataError(
                f"--num_threads={self.num_threads}: expected a positive count, or 0 for all cores"
            )
        if self.model_type not in MODEL_TYPES:
            raise DataError(f"--model_type={self.model_type}: expected one of {MODEL_TYPES}")


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


def build_data(config: BuildConfig) -> BuildReport:
    """Builds the TFRecord splits of `config.input_text` into `config.tfrecords_directory`."""
    start = time.perf_counter()
    config.validate()
    texts = find_splits(config.input_text)
    sp_model, train_sp = _tokenizer_model(config, texts)
    out = Path(config.tfrecords_directory)
    for split in texts:
        _prepare_split_directory(config, out / split)
    with log_to_file(out / LOG_FILE, "par_xl.data", "%(asctime)s %(levelname)s %(message)s"):
        try:
            log.info("build_data: %s", config)
            return _build(config, texts, sp_model, train_sp, start)
        except DataError as e:
            log.error("%s", e)
            raise


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


def _build(
    config: BuildConfig, texts: dict[str, Path], sp_model: Path, train_sp: bool, start: float
) -> BuildReport:
    seconds = {}
    num_threads = config.num_threads or len(os.sched_getaffinity(0))

    phase = time.perf_counter()
    lines = {split: read_lines(path) for split, path in texts.items()}
    seconds["read"] = time.perf_counter() - phase

    phase = time.perf_counter()
    if train_sp:
        log.info(
            "training SentencePiece (%s, vocabulary %d, lowercase %s, %d threads) on %s",
            config.model_type,
            config.vocab_size,
            config.lowercase,
            num_threads,
            texts["train"],
        )
        train_tokenizer(
            lines["train"],
            config.sp_model_prefix,
            vocab_size=config.vocab_size,
            model_type=config.model_type,
            lowercase=config.lowercase,
            num_threads=num_threads,
            source=f"{texts['train']} (the training split)",
        )
    seconds["sp_train"] = time.perf_counter() - phase
    sp = load_tokenizer(sp_model)
    info = tokenizer_info(sp)
    log.info("SentencePiece model %s: %s", sp_model, info)
    requested = (config.vocab_size, config.lowercase, config.model_type)
    if not train_sp and (info.vocab_size, info.lowercase, info.model_type) != requested:
        log.warning(
            "reusing %s: its own vocabulary %d, lowercase %s and %s apply, not --vocab_size=%d, "
            "--lowercase=%s, --model_type=%s",
            sp_model,
            info.vocab_size,
            info.lowercase,
            info.model_type,
            *requested,
        )

    phase = time.perf_counter()
    ids = {
        split: encode_lines(sp, split_lines, num_threads=num_threads, desc=f"encoding {split}")
        for split, split_lines in lines.items()
    }
    seconds["encode"] = time.perf_counter() - phase

    phase = time.perf_counter()
    tokens = config.batch_size * config.seq_len
    steps = {
        split: num_batches(len(stream), config.batch_size, config.seq_len)
        for split, stream in ids.items()
    }
    for split, n in steps.items():
        if n == 0:
            raise DataError(
                f"split {split!r} ({texts[split]}) has N={len(ids[split])} ids, too few for one "
                f"batch of --batch_size * --seq_len = {config.batch_size} * {config.seq_len} = "
                f"{tokens} tokens (it needs at least {tokens + 1}); lower --batch_size or --seq_len"
            )
    sha256 = sha256_file(sp_model)
    shard_counts = _shard_counts(config.shards, steps)
    order = None
    built = {}
    for split, stream in ids.items():
        directory = Path(config.tfrecords_directory) / split
        _clear_split_directory(directory, split)
        batches = context_batches(stream, config.batch_size, config.seq_len)
        shards = write_shards(directory, split, batches, shard_counts[split])
        if split == "train":
            counts = unigram_counts(stream, info.vocab_size)
            pieces = [sp.id_to_piece(i) for i in range(info.vocab_size)]
            write_unigram(directory / UNIGRAM_FILE, pieces, counts)
            order = frequency_order(counts)
            log.info("train: id order vs frequency: %s", order)
        built[split] = DatasetMetadata(
            format_version=FORMAT_VERSION,
            split=split,
            vocab_size=info.vocab_size,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            steps=steps[split],
            num_tokens=len(stream),
            tokens_used=steps[split] * tokens,
            tokens_dropped=batches.tokens_dropped,
            lowercase=info.lowercase,
            model_type=info.model_type,
            sp_model=os.fspath(sp_model.resolve()),
            sp_model_sha256=sha256,
            shards=shards,
            source=os.fspath(texts[split].resolve()),
        )
        write_metadata(directory, built[split])
        log.info(
            "%s: %d ids -> %d batches of %d x %d in %d shards, %d tokens dropped at the end",
            split,
            len(stream),
            steps[split],
            config.batch_size,
            config.seq_len,
            len(shards),
            batches.tokens_dropped,
        )
    seconds["write"] = time.perf_counter() - phase
    seconds["total"] = time.perf_counter() - start
    log.info("seconds per phase: %s", {k: round(v, 2) for k, v in seconds.items()})
    return BuildReport(splits=built, sp_model=sp_model, seconds=seconds, frequency_order=order)
