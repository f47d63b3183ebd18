"""The data pipeline: SentencePiece, context batching, TFRecord splits and their reader.

Build with `build_data.py` (or `create_tfrecords.sh`); train with `load_dataset(<split dir>)`.

Each name is imported from its module on first use (PEP 562), so that reading a split's
metadata (`read_metadata`, `DataError`) does not import TensorFlow and SentencePiece: the
shell scripts' checks start in well under a second.
"""

import importlib

_MODULES = {
    "BuildConfig": "build",
    "BuildReport": "build",
    "build_data": "build",
    "ContextBatches": "context_batching",
    "context_batches": "context_batching",
    "num_batches": "context_batching",
    "DataError": "errors",
    "FORMAT_VERSION": "metadata",
    "METADATA_FILE": "metadata",
    "DatasetMetadata": "metadata",
    "Shard": "metadata",
    "read_metadata": "metadata",
    "verify_shards": "metadata",
    "SPLITS": "text_files",
    "load_dataset": "tfrecords",
    "decode_lines": "tokenizer",
    "encode_lines": "tokenizer",
    "load_tokenizer": "tokenizer",
    "UNIGRAM_FILE": "unigram",
}

__all__ = sorted(_MODULES)


def __getattr__(name):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
