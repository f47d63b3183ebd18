"""Whether built TFRecords are what a build asks for: create_tfrecords.sh's check before it
skips a build.

    python -m par_xl.data.build_settings <tfrecords_directory> <sp_model> NAME=VALUE...

NAME is a create_tfrecords.sh setting (`SETTINGS`: VOCAB_SIZE, MODEL_TYPE, LOWERCASE,
BATCH_SIZE, SEQ_LEN, SHARDS). Each is compared with what the splits' `metadata.json` says
they were built with, and `<sp_model>` with the SentencePiece model they were built with (by
its SHA-256). Exit status: 0 the data are built with these settings; 1 they are not built (or
of an older format, or damaged), so build them; 2 a setting's value cannot work; 3 they were
built with other settings: the message names each difference and REBUILD=1.

Reads metadata only: no TensorFlow or SentencePiece import, a fraction of a second.
"""

import sys
from pathlib import Path

from par_xl.checks import INT_MAX
from par_xl.data.errors import DataError
from par_xl.data.metadata import MODEL_TYPES, read_metadata
from par_xl.data.text_files import SPLITS
from par_xl.files import sha256_file

BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _positive(name, text):
    if not text.isdigit() or not 1 <= int(text) <= INT_MAX:
        raise ValueError(f"{name}={text}: expected a positive integer up to {INT_MAX}")
    return int(text)


def _model_type(name, text):
    if text not in MODEL_TYPES:
        raise ValueError(f"{name}={text}: expected one of {', '.join(MODEL_TYPES)}")
    return text


def _boolean(name, text):
    if text.lower() not in BOOLEANS:
        raise ValueError(f"{name}={text}: expected true or false")
    return BOOLEANS[text.lower()]


# Setting -> (how to read its value, the metadata field it is built into).
SETTINGS = {
    "VOCAB_SIZE": (_positive, "vocab_size"),
    "MODEL_TYPE": (_model_type, "model_type"),
    "LOWERCASE": (_boolean, "lowercase"),
    "BATCH_SIZE": (_positive, "batch_size"),
    "SEQ_LEN": (_positive, "seq_len"),
    "SHARDS": (_positive, "shards"),
}


def differences(tfrecords_directory, sp_model, requested):
    """`[(setting, requested value, built value)]` where the built splits differ from the
    `requested` settings (`{NAME: text}`) or from the SentencePiece model `sp_model`.

    Raises DataError if a split is not built (or not readable), ValueError for a setting whose
    value cannot work.
    """
    wanted = {name: SETTINGS[name][0](name, text) for name, text in requested.items()}
    built = {split: read_metadata(Path(tfrecords_directory) / split) for split in SPLITS}
    train = built["train"]
    found = []
    for name, value in wanted.items():
        field = SETTINGS[name][1]
        if field == "shards":  # the training split's files; fewer if it has fewer batches
            have, value = len(train.shards), min(value, train.steps)
        else:
            have = getattr(train, field)
        if have != value:
            found.append((name, value, have))
    sp_model = Path(sp_model)
    if not sp_model.is_file() or sha256_file(sp_model) != train.sp_model_sha256:
        found.append(("SP_MODEL_PREFIX", f"{sp_model} (missing or another model)",
                      train.sp_model))  # fmt: skip
    return found


def main(argv):
    directory, sp_model, *settings = argv
    requested = dict(setting.split("=", 1) for setting in settings)
    try:
        found = differences(directory, sp_model, requested)
    except DataError:
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if found:
        named = "; ".join(f"{name}={value!s} asked, the data have {have}" for name, value, have
                          in found)  # fmt: skip
        print(
            f"error: the TFRecords in {directory} were built with other settings than this run "
            f"asks for: {named}. Set REBUILD=1 to build them again with these settings (it "
            "replaces them), or ask for the data's settings.",
            file=sys.stderr,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
