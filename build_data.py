r"""Builds the TFRecord splits for training: SentencePiece tokenizer, ids, context batches.

Example (what create_tfrecords.sh runs):

  python build_data.py --input_text=data/wikitext-2 --sp_model_prefix=data/sp12k \
      --tfrecords_directory=data/tfrecords

Writes `<tfrecords_directory>/{train,valid,test}/` (shards, metadata.json, train/unigram.txt) and
`<sp_model_prefix>.model` / `.vocab`. The work is `par_xl.data.build_data`.
"""

import os
import sys

# SentencePiece's OpenMP threads spin while they wait by default; on a shared machine a spinning
# thread takes the core its partner needs, and training took 3 to 21 s instead of 3 to 4.5 s on
# WikiText-2 (2 cores). libgomp reads this when sentencepiece is imported, so set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from absl import app, flags  # noqa: E402

import par_xl.runtime.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from par_xl.data import BuildConfig, DataError, build_data  # noqa: E402
from par_xl.data.documents import WIKITEXT_DOCUMENT_START  # noqa: E402
from par_xl.data.tokenizer import MODEL_TYPES  # noqa: E402
from par_xl.files import DiskFull  # noqa: E402

flags.DEFINE_string(
    "input_text",
    None,
    "A text file, or a directory holding train.txt, valid.txt and test.txt. A single file is "
    "built as the split its name says (valid.txt -> valid), else as train.",
)
flags.DEFINE_string(
    "tfrecords_directory", None, "Output directory; each split goes to <directory>/<split>/."
)
flags.DEFINE_string(
    "sp_model_prefix",
    None,
    "Where the trained SentencePiece model goes: <prefix>.model and <prefix>.vocab.",
)
flags.DEFINE_integer("vocab_size", 12000, "SentencePiece vocabulary size.")
flags.DEFINE_enum("model_type", "unigram", MODEL_TYPES, "SentencePiece model type.")
flags.DEFINE_bool(
    "lowercase",
    True,
    "Lowercase the text; done by the SentencePiece model itself (rule nmt_nfkc_cf).",
)
flags.DEFINE_string(
    "unk_marker",
    "<unk>",
    "The corpus's unknown-word marker (WikiText, Penn Treebank), made exactly one id that decodes "
    "back to itself; '' for none.",
)
flags.DEFINE_bool(
    "byte_fallback",
    True,
    "Encode characters never seen in training as their UTF-8 bytes, so every text round-trips "
    "(instead of becoming the unknown id).",
)
flags.DEFINE_string(
    "document_start",
    WIKITEXT_DOCUMENT_START,
    "Regular expression (re.fullmatch) of a document's first line; the default is WikiText's "
    "top-level heading ' = Title = '. '' for no document boundaries.",
)
flags.DEFINE_bool(
    "document_start_isolated",
    True,
    "A document's first line must also stand between blank lines, as WikiText's headings do.",
)
flags.DEFINE_integer("batch_size", 32, "Rows per batch (B).")
flags.DEFINE_integer("seq_len", 32, "Tokens per row and batch (T).")
flags.DEFINE_integer(
    "shards",
    4,
    "TFRecord files for the training split; the other splits get this number scaled by their "
    "size relative to train, rounded up (WikiText-2: 1 each).",
)
flags.DEFINE_bool(
    "train_tokenizer",
    True,
    "Train SentencePiece on the training split; --notrain_tokenizer reuses "
    "<sp_model_prefix>.model.",
)
flags.DEFINE_string(
    "sp_model", None, "An existing SentencePiece .model to reuse instead of training one."
)
flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace non-empty split directories and an existing <sp_model_prefix>.model.",
)
flags.DEFINE_integer("num_threads", 0, "Threads for SentencePiece; 0 uses all available cores.")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = BuildConfig(
        input_text=FLAGS.input_text or "",
        tfrecords_directory=FLAGS.tfrecords_directory or "",
        sp_model_prefix=FLAGS.sp_model_prefix or "",
        vocab_size=FLAGS.vocab_size,
        model_type=FLAGS.model_type,
        lowercase=FLAGS.lowercase,
        unk_marker=FLAGS.unk_marker,
        byte_fallback=FLAGS.byte_fallback,
        document_start=FLAGS.document_start,
        document_start_isolated=FLAGS.document_start_isolated,
        batch_size=FLAGS.batch_size,
        seq_len=FLAGS.seq_len,
        shards=FLAGS.shards,
        train_tokenizer=FLAGS.train_tokenizer,
        sp_model=FLAGS.sp_model or "",
        overwrite=FLAGS.overwrite,
        num_threads=FLAGS.num_threads,
    )
    try:
        report = build_data(config)
    except (DataError, DiskFull, OSError) as e:  # OSError: a failing or unwritable device
        print(f"build_data.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "build_data.py: interrupted; every file is written under a temporary name first, and "
            "what the build had written is removed: run the build again.",
            file=sys.stderr,
        )
        return 130
    for split, metadata in report.splits.items():
        print(
            f"{split}: {metadata.steps} batches of {metadata.batch_size} x {metadata.seq_len}, "
            f"{metadata.num_tokens} tokens, {metadata.tokens_dropped} dropped, "
            f"{metadata.num_words} words, {metadata.documents} documents, "
            f"{len(metadata.shards)} shards"
        )
    print(f"SentencePiece model: {report.sp_model}; built in {report.seconds['total']:.1f} s")
    return 0


if __name__ == "__main__":
    app.run(main)
