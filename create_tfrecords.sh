#!/usr/bin/env bash
# Builds the WikiText-2 TFRecords with the original PAR settings: lowercase unigram SentencePiece
# with 12000 pieces, batches of 32 x 32.
#
#   1. Gets WikiText-2 into $DATA_DIR/wikitext-2/{train,valid,test}.txt: uses it if train.txt is
#      there; else copies it from $WIKITEXT2_DIR if set; else downloads the official release.
#   2. Runs build_data.py into $DATA_DIR/tfrecords/, the model at $DATA_DIR/sp12k.{model,vocab}.
#
# Idempotent: when all three splits have a metadata.json of the current format, built with the
# settings below and $SP_MODEL_PREFIX.model, it says so and stops; built with other settings, it
# stops with an error naming each difference (the data are not replaced behind a run's back);
# REBUILD=1 builds again. Otherwise (nothing built, an interrupted build, or data of an older
# format) it builds with --overwrite: the script owns $TFRECORDS_DIR and $SP_MODEL_PREFIX.*.
#
# Environment (default): DATA_DIR (data/ in the repository), WIKITEXT2_DIR (unset),
# WIKITEXT2_URLS (the release), TFRECORDS_DIR ($DATA_DIR/tfrecords), SP_MODEL_PREFIX
# ($DATA_DIR/sp12k), VOCAB_SIZE (12000), MODEL_TYPE (unigram), LOWERCASE (true), BATCH_SIZE (32),
# SEQ_LEN (32), SHARDS (4), NUM_THREADS (0: all cores), REBUILD (0), PYTHON (python).
# Relative paths are relative to the current directory.
set -euo pipefail

REPO=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
DATA_DIR=${DATA_DIR:-$REPO/data}
TEXT_DIR="$DATA_DIR/wikitext-2"
TFRECORDS_DIR=${TFRECORDS_DIR:-$DATA_DIR/tfrecords}
SP_MODEL_PREFIX=${SP_MODEL_PREFIX:-$DATA_DIR/sp12k}
# The official release, then its older location; WIKITEXT2_URLS (space-separated) overrides.
read -r -a URLS <<< "${WIKITEXT2_URLS:-https://wikitext.smerity.com/wikitext-2-v1.zip \
https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip}"

# Copies $1 to $2 through a temporary name, so an interrupt leaves no partial file under $2.
copy_atomically() {
  cp "$1" "$2.tmp-$$"
  mv "$2.tmp-$$" "$2"
}

download_wikitext2() {
  local tmp="$DATA_DIR/wikitext-2.tmp-$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  local url
  for url in "${URLS[@]}"; do
    echo "Downloading $url"
    # One line, not a traceback, when there is no network; a partial file is removed.
    if "$PYTHON" -c '
import os, sys, urllib.request
try:
    urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
except (OSError, ValueError) as error:
    if os.path.exists(sys.argv[2]):
        os.remove(sys.argv[2])
    sys.exit(f"  {type(error).__name__}: {error}")' "$url" "$tmp/wikitext-2-v1.zip"; then
      break
    fi
    echo "Download from $url failed" >&2
  done
  if [[ ! -f "$tmp/wikitext-2-v1.zip" ]]; then
    rm -rf "$tmp"
    echo "error: could not download WikiText-2 (no network?). Put its train.txt, valid.txt" \
      "and test.txt (the release's wiki.{train,valid,test}.tokens, renamed) in $TEXT_DIR," \
      "or set WIKITEXT2_DIR to a directory holding them, and run this again." >&2
    exit 1
  fi
  "$PYTHON" -m zipfile -e "$tmp/wikitext-2-v1.zip" "$tmp"
  local split
  for split in test valid train; do  # train.txt last: its presence means complete
    mv "$tmp/wikitext-2/wiki.$split.tokens" "$TEXT_DIR/$split.txt"
  done
  rm -rf "$tmp"
}

# Whether the splits are built, of this version's format, with the settings asked for:
# 0 yes, 1 not built (or older, damaged), 2 a setting that cannot work, 3 other settings.
built_settings() {
  PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m par_xl.data.build_settings \
    "$TFRECORDS_DIR" "$SP_MODEL_PREFIX.model" VOCAB_SIZE="${VOCAB_SIZE:-12000}" \
    MODEL_TYPE="${MODEL_TYPE:-unigram}" LOWERCASE="${LOWERCASE:-true}" \
    BATCH_SIZE="${BATCH_SIZE:-32}" SEQ_LEN="${SEQ_LEN:-32}" SHARDS="${SHARDS:-4}"
}

if [[ "${REBUILD:-0}" != 1 && -f "$TFRECORDS_DIR/train/metadata.json" \
    && -f "$TFRECORDS_DIR/valid/metadata.json" && -f "$TFRECORDS_DIR/test/metadata.json" ]]; then
  status=0
  built_settings || status=$?
  case $status in
    0)
      echo "TFRecords already built in $TFRECORDS_DIR with these settings; skipping." \
        "Set REBUILD=1 to build them again."
      exit 0 ;;
    1) echo "TFRecords in $TFRECORDS_DIR are of an older format (or damaged); building them again." ;;
    *) exit 1 ;;  # the check said why
  esac
fi

mkdir -p "$TEXT_DIR"
if [[ -f "$TEXT_DIR/train.txt" ]]; then
  echo "Using WikiText-2 in $TEXT_DIR"
elif [[ -n "${WIKITEXT2_DIR:-}" ]]; then
  echo "Copying WikiText-2 from $WIKITEXT2_DIR to $TEXT_DIR"
  for split in train valid test; do
    if [[ ! -f "$WIKITEXT2_DIR/$split.txt" ]]; then
      echo "error: WIKITEXT2_DIR=$WIKITEXT2_DIR holds no $split.txt; expected train.txt," \
        "valid.txt and test.txt" >&2
      exit 1
    fi
  done
  for split in test valid train; do  # train.txt last: its presence means complete
    copy_atomically "$WIKITEXT2_DIR/$split.txt" "$TEXT_DIR/$split.txt"
  done
else
  download_wikitext2
fi

"$PYTHON" "$REPO/build_data.py" \
  --input_text="$TEXT_DIR" \
  --tfrecords_directory="$TFRECORDS_DIR" \
  --sp_model_prefix="$SP_MODEL_PREFIX" \
  --vocab_size="${VOCAB_SIZE:-12000}" \
  --model_type="${MODEL_TYPE:-unigram}" \
  --lowercase="${LOWERCASE:-true}" \
  --batch_size="${BATCH_SIZE:-32}" \
  --seq_len="${SEQ_LEN:-32}" \
  --shards="${SHARDS:-4}" \
  --num_threads="${NUM_THREADS:-0}" \
  --overwrite
