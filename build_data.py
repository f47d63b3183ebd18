r"""Builds the TFRecord splits for training: SentencePiece tokenizer, ids, context batches.

Example (what create_tfrecords.sh runs):

  python build_data.py --input_text=data/wikitext-2 --sp_model_prefix=data/sp12k \
      --tfrecords_directory=data/tfrecords

Writes `<tfrecords_directory>/{train,valid,test}/` (shards, metadata.json, train/unigram.txt) and
`<sp_model_prefix>.model` / `.vocab`. The work is `par_xl.data.build_data`.

A long-document corpus of files, one file one document (`par_xl.data.corpora`): first written as
`<corpus_directory>/{train,valid,test}.txt` and `corpus.json`, split by a hash of each file's
path, then built as above with a tokenizer for source code (case and whitespace kept):

  python build_data.py --corpus=python_stdlib --tfrecords_directory=data/stdlib \
      --sp_model_prefix=data/stdlib/sp12k --seq_len=256 --batch_size=16
  python build_data.py --input_files='src/**/*.py' --tfrecords_directory=... --sp_model_prefix=...
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
from par_xl.data.corpora import (  # noqa: E402
    CORPORA,
    SOURCE_CODE,
    glob_files,
    prepare_corpus,
    python_stdlib_files,
)
from par_xl.data.documents import WIKITEXT_DOCUMENT_START  # noqa: E402
from par_xl.data.tokenizer import MODEL_TYPES  # noqa: E402
from par_xl.files import DiskFull  # noqa: E402

flags.DEFINE_string(
    "input_text",
    None,
    "A text file, or a directory holding train.txt, valid.txt and test.txt. A single file is "
    "built as the split its name says (valid.txt -> valid), else as train.",
)
flags.DEFINE_enum(
    "corpus",
    None,
    list(CORPORA),
    "Instead of --input_text: a corpus of files on this machine, one file one document: "
    "python_stdlib, the standard library of the Python running the build (its test/ left out "
    "unless --corpus_include_tests). Implies --nolowercase --keep_whitespace --unk_marker='' "
    "and --document_start at each file's header line, unless given.",
)
flags.DEFINE_string(
    "input_files",
    None,
    "Instead of --input_text: a glob of files, one file one document (quote it: "
    "--input_files='src/**/*.py'), as --corpus does.",
)
flags.DEFINE_string(
    "corpus_directory",
    None,
    "Where --corpus or --input_files writes its train.txt, valid.txt, test.txt and corpus.json "
    "(default: <tfrecords_directory>/text).",
)
flags.DEFINE_float("valid_fraction", 0.05, "--corpus/--input_files: share of files in valid.")
flags.DEFINE_float("test_fraction", 0.05, "--corpus/--input_files: share of files in test.")
flags.DEFINE_bool(
    "corpus_include_tests", False, "--corpus=python_stdlib: keep the standard library's test/."
)
flags.DEFINE_bool(
    "keep_whitespace",
    False,
    "A tokenizer for source code: no normalization, runs of spaces kept as pieces, no space "
    "added before a line, so that decoding gives each file back byte for byte.",
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
    try:
        input_text, tokenizer = _corpus_or_input_text()
    except DataError as e:
        print(f"build_data.py: error: {e}", file=sys.stderr)
        return 1
    config = BuildConfig(
        input_text=input_text,
        tfrecords_directory=FLAGS.tfrecords_directory or "",
        sp_model_prefix=FLAGS.sp_model_prefix or "",
        vocab_size=FLAGS.vocab_size,
        model_type=FLAGS.model_type,
        byte_fallback=FLAGS.byte_fallback,
        **tokenizer,
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


def _corpus_or_input_text():
    """`(input_text, tokenizer and document flags)`: --input_text as given, or the text files
    --corpus / --input_files writes first, with the flags of a source-code build
    (`SOURCE_CODE`) where not given."""
    names = ("lowercase", "unk_marker", "keep_whitespace", "document_start",
             "document_start_isolated")  # fmt: skip
    given = {name: getattr(FLAGS, name) for name in names}
    sources = [f"--{n}" for n in ("input_text", "corpus", "input_files") if getattr(FLAGS, n)]
    if len(sources) > 1:
        raise DataError(f"give one of --input_text, --corpus and --input_files, not {sources}")
    if not (FLAGS.corpus or FLAGS.input_files):
        return FLAGS.input_text or "", given
    if not FLAGS.tfrecords_directory:
        raise DataError("--tfrecords_directory is required")
    if FLAGS.corpus:
        files = python_stdlib_files(include_tests=FLAGS.corpus_include_tests)
    else:
        files = glob_files(FLAGS.input_files)
    directory = FLAGS.corpus_directory or f"{FLAGS.tfrecords_directory}/text"
    prepare_corpus(files, directory, FLAGS.valid_fraction, FLAGS.test_fraction,
                   overwrite=FLAGS.overwrite)  # fmt: skip
    tokenizer = {name: given[name] if FLAGS[name].present else SOURCE_CODE[name]
                 for name in names}  # fmt: skip
    return directory, tokenizer


if __name__ == "__main__":
    app.run(main)
