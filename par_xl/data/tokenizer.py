"""SentencePiece tokenizer: trained on the training split only, then used to encode every split.

What the trained model guarantees (data format 2):
- Ids follow training-split frequency. SentencePiece numbers pieces by score (a unigram model) or
  merge order (BPE), which follows frequency only roughly (Spearman 0.974 on WikiText-2), and the
  256 byte pieces of byte fallback sit at ids 4..259. The adaptive softmax's clusters are id ranges
  ("the 250 most frequent tokens"), so after training the model's pieces are reordered by how often
  each occurs in the encoded training split, special pieces (unknown, `<s>`, `</s>`) kept at ids
  0, 1, 2. The order lives in the `.model` file itself: any SentencePiece (or tensorflow-text)
  loading it tokenizes and decodes with the frequency-ordered ids in one call.
- The corpus's unknown-word marker (`unk_marker`, WikiText's and Penn Treebank's `<unk>`) is one
  piece, `▁<unk>` (or `<unk>` when glued to a preceding word), that decodes back to `<unk>`;
  SentencePiece's own unknown piece is renamed `<unknown>` so that the two never mix.
- Byte fallback (on by default): a character never seen in training is encoded as its UTF-8 bytes,
  so no text becomes the unknown id and decoding gives the text back exactly, as the model's
  normalization wrote it (NFKC, case folding when `lowercase`, runs of spaces as one space).
- `keep_whitespace` (source code, `build_data.py --corpus` / `--input_files`): no normalization
  at all (SentencePiece's "identity" rule: no NFKC, no case folding), runs of spaces kept
  (`remove_extra_whitespaces=False`) and learned as pieces of their own
  (`allow_whitespace_only_pieces`: an indentation of 8 spaces is one piece), no space added
  before a line (`add_dummy_prefix=False`). With byte fallback, decoding a file's lines gives
  the file back byte for byte, indentation, tabs, trailing spaces and `\r` included; newlines
  are the end-of-line ids between lines (checked on every file of Python 3.11's standard
  library, tests included; the tests check a sample).

Each text line is encoded and followed by the `</s>` id as its end-of-line token, so an empty line
still gives one id.
"""

import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tqdm import tqdm

from par_xl.data.errors import DataError
from par_xl.data.metadata import MODEL_TYPES  # noqa: F401  (one list: metadata.json checks it)
from par_xl.files import temporary_name

# SentencePiece's own unknown piece; renamed so that a corpus marker `<unk>` can be a piece.
UNKNOWN_PIECE = "<unknown>"
WORD_BOUNDARY = "\u2581"  # "▁": SentencePiece's mark of a space before a piece

# SentencePiece's default max_sentence_length; longer lines are silently skipped in training.
_DEFAULT_MAX_SENTENCE_BYTES = 4192
# Lines per `encode` call: large enough for the thread pool, small enough for a live progress bar.
_ENCODE_CHUNK_LINES = 4096
_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece


@dataclass(frozen=True)
class TokenizerInfo:
    """What the dataset metadata records about a SentencePiece model."""

    vocab_size: int
    lowercase: bool
    model_type: str
    eos_id: int
    unk_marker: str  # the corpus's unknown-word marker, one piece; "" for none
    byte_fallback: bool
    keep_whitespace: bool = False  # identity normalization, spaces kept (source code)


def train_tokenizer(
    lines: Sequence[str],
    model_prefix: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    lowercase: bool = True,
    unk_marker: str = "<unk>",
    byte_fallback: bool = True,
    keep_whitespace: bool = False,
    num_threads: int = 1,
    source: str = "the training text",
) -> Path:
    """Trains SentencePiece on `lines`; writes `<model_prefix>.model` and `.vocab` atomically.

    Trains on all lines (no sampling: on WikiText-2 it takes seconds), then encodes them once more
    to reorder the pieces by frequency (see the module docstring). `source` names the text in
    error messages; `keep_whitespace` trains a model for source code (the module docstring).
    Returns the path of the `.model` file.
    """
    if keep_whitespace:
        normalization = dict(normalization_rule_name="identity", remove_extra_whitespaces=False,
                             add_dummy_prefix=False, allow_whitespace_only_pieces=True)  # fmt: skip
    else:
        normalization = dict(normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc")
    prefix = os.fspath(model_prefix)
    tmp_prefix = os.fspath(temporary_name(prefix))
    tmp_model, tmp_vocab = f"{tmp_prefix}.model", f"{tmp_prefix}.vocab"
    try:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_prefix=tmp_prefix,
                vocab_size=vocab_size,
                model_type=model_type,
                **normalization,
                max_sentence_length=max(
                    _DEFAULT_MAX_SENTENCE_BYTES, max(len(line.encode("utf-8")) for line in lines)
                ),
                num_threads=num_threads,
                user_defined_symbols=[WORD_BOUNDARY + unk_marker, unk_marker] if unk_marker else [],
                unk_piece=UNKNOWN_PIECE,
                byte_fallback=byte_fallback,
                minloglevel=1,  # warnings only: the INFO log is hundreds of lines
            )
        except RuntimeError as e:
            raise DataError(
                _training_error_message(str(e), vocab_size, source, byte_fallback)
            ) from None
        _reorder_by_frequency(tmp_model, tmp_vocab, lines, vocab_size, prefix, num_threads)
        os.replace(tmp_vocab, f"{prefix}.vocab")
        os.replace(tmp_model, f"{prefix}.model")
    finally:
        for tmp in (tmp_model, tmp_vocab):
            Path(tmp).unlink(missing_ok=True)
    return Path(f"{prefix}.model")


def _reorder_by_frequency(model_path, vocab_path, lines, vocab_size, prefix, num_threads):
    """Rewrites a trained model (and its `.vocab`) in place with its pieces ordered by their
    frequency in `lines` (`frequency_ordered`), recording the final `prefix` in it."""
    trained = load_tokenizer(model_path)
    counts = np.bincount(
        encode_lines(trained, lines, num_threads=num_threads, desc="counting pieces").ids,
        minlength=vocab_size,
    )
    proto = frequency_ordered(
        sentencepiece_model_pb2.ModelProto.FromString(Path(model_path).read_bytes()), counts
    )
    # The model records its prefix: store the final one, so that the same training gives the
    # same bytes (and SHA-256) whatever the temporary name was.
    proto.trainer_spec.model_prefix = prefix
    Path(model_path).write_bytes(proto.SerializeToString())
    Path(vocab_path).write_text(
        "".join(f"{piece.piece}\t{piece.score:g}\n" for piece in proto.pieces), encoding="utf-8"
    )


def frequency_ordered(
    proto: sentencepiece_model_pb2.ModelProto, counts: np.ndarray
) -> sentencepiece_model_pb2.ModelProto:
    """The model with its pieces (hence ids) sorted by decreasing count, ties by old id.

    Control and unknown pieces keep their ids; every other piece (normal, user-defined, byte)
    moves. Segmentation depends on the pieces' scores, not on their ids, so the reordered model
    splits every text exactly as before, only with other ids (tested).
    """
    fixed = {_Piece.CONTROL, _Piece.UNKNOWN}
    pieces = list(proto.pieces)
    slots = [i for i, piece in enumerate(pieces) if piece.type not in fixed]
    order = sorted(slots, key=lambda i: (-counts[i], i))
    reordered = list(pieces)
    for slot, old in zip(slots, order, strict=True):
        reordered[slot] = pieces[old]
    result = sentencepiece_model_pb2.ModelProto()
    result.CopyFrom(proto)
    del result.pieces[:]
    result.pieces.extend(reordered)
    return result


def _training_error_message(error: str, vocab_size: int, source: str, byte_fallback: bool) -> str:
    """Rewords SentencePiece's vocabulary-size errors in terms of --vocab_size."""
    too_high = re.search(
        r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", error
    )
    if too_high:
        most = too_high.group(1)
        return (
            f"--vocab_size={vocab_size} is too large for {source}: SentencePiece can learn at most "
            f"{most} pieces from it; pass --vocab_size={most} or less, or more training text"
        )
    too_low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", error)
    if too_low:
        least = too_low.group(1)
        return (
            f"--vocab_size={vocab_size} is too small for {source}: its characters and the special "
            f"pieces need at least {least}"
            + (" (256 byte pieces of --byte_fallback included)" if byte_fallback else "")
            + f"; pass --vocab_size={least} or more"
        )
    return f"SentencePiece training on {source} failed: {error}"


def load_tokenizer(model_path: str | os.PathLike) -> spm.SentencePieceProcessor:
    """Loads a SentencePiece `.model`; it must define `</s>`, the end-of-line id."""
    try:
        sp = spm.SentencePieceProcessor(model_file=os.fspath(model_path))
    except (OSError, RuntimeError) as e:
        raise DataError(f"cannot load SentencePiece model {model_path}: {e}") from None
    if sp.eos_id() < 0:
        raise DataError(
            f"SentencePiece model {model_path} has no </s> piece (eos_id=-1); "
            "the end-of-line token needs one"
        )
    return sp


def tokenizer_info(sp: spm.SentencePieceProcessor) -> TokenizerInfo:
    """Vocabulary size, lowercasing, model type, marker and byte fallback, read from the model."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(sp.serialized_model_proto())
    model_type = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
    markers = [p.piece for p in proto.pieces if p.type == _Piece.USER_DEFINED]
    return TokenizerInfo(
        vocab_size=sp.get_piece_size(),
        lowercase=proto.normalizer_spec.name.endswith("_cf"),
        model_type=model_type.lower(),
        eos_id=sp.eos_id(),
        unk_marker=min(markers, key=len, default=""),
        byte_fallback=proto.trainer_spec.byte_fallback,
        keep_whitespace=not proto.normalizer_spec.remove_extra_whitespaces,
    )


class EncodedLines(NamedTuple):
    """A text's id stream and how many of its ids each line gave (end-of-line id included)."""

    ids: np.ndarray  # (N,) int32
    line_lengths: np.ndarray  # (L,) int64, summing to N


def encode_lines(
    sp: spm.SentencePieceProcessor,
    lines: Sequence[str],
    *,
    num_threads: int = 1,
    desc: str | None = None,
) -> EncodedLines:
    """Encodes lines into one id stream, each line followed by the `</s>` (end-of-line) id.

    Batched and multi-threaded (`num_threads` per `encode` call), with a progress bar on a
    terminal. N = sum over lines of (pieces + 1).
    """
    eos = sp.eos_id()
    encoded: list[list[int]] = []
    with tqdm(total=len(lines), desc=desc, unit="line", disable=None) as bar:
        for start in range(0, len(lines), _ENCODE_CHUNK_LINES):
            chunk = sp.encode(
                list(lines[start : start + _ENCODE_CHUNK_LINES]), num_threads=num_threads
            )
            for ids in chunk:
                ids.append(eos)
            encoded.extend(chunk)
            bar.update(len(chunk))
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=lengths.sum())
    return EncodedLines(ids, lengths)


def decode_lines(sp: spm.SentencePieceProcessor, ids: Sequence[int]) -> str:
    """Decodes an id stream back to text: `</s>` ids end lines, as in the training text."""
    lines, current = [], []
    for token in ids:
        if token == sp.eos_id():
            lines.append(current)
            current = []
        else:
            current.append(int(token))
    lines.append(current)
    return "\n".join(sp.decode(line) for line in lines)
