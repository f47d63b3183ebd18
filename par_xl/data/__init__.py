"""The data pipeline: SentencePiece, context batching, TFRecord splits and their reader.

Build with `build_data.py` (or `create_tfrecords.sh`); train with `load_dataset(<split dir>)`.
"""

from par_xl.data.build import BuildConfig, BuildReport, build_data
from par_xl.data.context_batching import ContextBatches, context_batches, num_batches
from par_xl.data.errors import DataError
from par_xl.data.metadata import (
    FORMAT_VERSION,
    METADATA_FILE,
    DatasetMetadata,
    Shard,
    read_metadata,
    verify_shards,
)
from par_xl.data.text_files import SPLITS
from par_xl.data.tfrecords import load_dataset
from par_xl.data.tokenizer import decode_lines, encode_lines, load_tokenizer
from par_xl.data.unigram import UNIGRAM_FILE
from par_xl.files import sha256_file

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "SPLITS",
    "UNIGRAM_FILE",
    "BuildConfig",
    "BuildReport",
    "ContextBatches",
    "DataError",
    "DatasetMetadata",
    "Shard",
    "build_data",
    "context_batches",
    "decode_lines",
    "encode_lines",
    "load_dataset",
    "load_tokenizer",
    "num_batches",
    "read_metadata",
    "verify_shards",
    "sha256_file",
]
