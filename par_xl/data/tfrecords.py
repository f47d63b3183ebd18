"""TFRecord shards of a split: the atomic sharded writer, and the tf.data reader training uses.

Layout of `<tfrecords_directory>/<split>/`: shard files `<split>-00000-of-00004.tfrecord`, ... and
`metadata.json` (see `metadata.py`). ONE record per batch: a `tf.train.Example` with int64
features `inputs`, `labels` and `document_starts` (0/1 marks aligned with `inputs`, all 0 when
the build has no document boundaries), each B * T values, row-major (B, T). The S batches are cut
into contiguous ranges, one per shard, whose sizes differ by at most one: reading the shards in
order gives the batches in order, and sharding drops nothing.
"""

import contextlib
import errno
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from par_xl.data.context_batching import ContextBatches
from par_xl.data.errors import DataError
from par_xl.data.metadata import Shard, read_metadata, verify_shards
from par_xl.files import atomic_path, sha256_file

FEATURES = ("inputs", "labels", "document_starts")


def shard_ranges(num_batches: int, num_shards: int) -> list[range]:
    """Cuts batches 0..num_batches-1 into num_shards contiguous ranges, sizes differing by <= 1."""
    if not 1 <= num_shards <= num_batches:
        raise ValueError(f"num_shards must be in 1..{num_batches}, got {num_shards}")
    size, extra = divmod(num_batches, num_shards)
    bounds = np.cumsum([0] + [size + (k < extra) for k in range(num_shards)])
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def shard_file_name(split: str, index: int, num_shards: int) -> str:
    """`<split>-00000-of-00004.tfrecord`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def serialize_batch(inputs: np.ndarray, labels: np.ndarray, document_starts: np.ndarray) -> bytes:
    """One batch, (B, T) inputs, labels and document starts, as a serialized tf.train.Example."""
    feature = {
        name: tf.train.Feature(int64_list=tf.train.Int64List(value=values.ravel().tolist()))
        for name, values in zip(FEATURES, (inputs, labels, document_starts), strict=True)
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(
    directory: str | os.PathLike, split: str, batches: ContextBatches, num_shards: int
) -> tuple[Shard, ...]:
    """Writes a split's batches into `num_shards` shard files in `directory`, each atomically.

    Returns the shards in order, as `metadata.json` lists them.
    """
    shards = []
    starts = batches.document_starts
    if starts is None:  # no document boundaries: no token starts a document
        starts = np.zeros_like(batches.inputs)
    ranges = shard_ranges(len(batches.inputs), num_shards)
    progress = tqdm(total=len(batches.inputs), desc=f"writing {split}", unit="batch", disable=None)
    with progress as bar:
        for index, batch_range in enumerate(ranges):
            name = shard_file_name(split, index, num_shards)
            with (
                atomic_path(Path(directory) / name) as tmp,
                _out_of_space_as_os_error(tmp),
                tf.io.TFRecordWriter(os.fspath(tmp)) as writer,
            ):
                for t in batch_range:
                    writer.write(serialize_batch(batches.inputs[t], batches.labels[t], starts[t]))
                    bar.update()
            path = Path(directory) / name
            shards.append(Shard(name, len(batch_range), path.stat().st_size, sha256_file(path)))
    return tuple(shards)


@contextlib.contextmanager
def _out_of_space_as_os_error(path):
    """TensorFlow's writers report a full disk (or quota) as ResourceExhaustedError; it is
    raised as the OSError (ENOSPC) that `par_xl.files.reporting_full_disk` names."""
    try:
        yield
    except tf.errors.ResourceExhaustedError as error:
        text = f"No space left on device ({error.message})"
        raise OSError(errno.ENOSPC, text, str(path)) from error


def load_dataset(
    directory: str | os.PathLike,
    *,
    skip_batches: int = 0,
    repeat: bool = False,
    document_starts: bool = False,
) -> tf.data.Dataset:
    """The batches of a built split, in order: `(inputs, labels)`, int32, shape (B, T) each.

    Shards are read one after another (no shuffling, no interleave): row i of batch t + 1
    continues row i of batch t, as the Transformer-XL memory needs. The shards are first checked
    against their metadata (`verify_shards`), so a damaged file is named before training.

    Args:
      directory: a split directory written by build_data.py, e.g. `data/tfrecords/train`.
      skip_batches: batches to skip at the start, to resume mid-epoch. Without `repeat` at most
        `steps`; with `repeat` any n >= 0 (all epochs are the same, so n % steps are skipped).
      repeat: repeat the epoch forever.
      document_starts: yield `({"token_ids": inputs, "document_starts": starts}, labels)`, the
        inputs of a model with `document_boundaries=True`; starts are int32 0/1 marks.

    Returns:
      A prefetched tf.data.Dataset with static shapes; its cardinality is `steps - skip_batches`
      (known to Keras) without `repeat`, infinite with it.
    """
    metadata = read_metadata(directory)
    if skip_batches < 0 or (not repeat and skip_batches > metadata.steps):
        raise DataError(
            f"skip_batches={skip_batches} is outside 0..{metadata.steps} "
            f"(the batches of {directory})"
        )
    verify_shards(directory, metadata)
    files = [os.fspath(Path(directory) / shard.file) for shard in metadata.shards]
    shape = (metadata.batch_size, metadata.seq_len)
    names = FEATURES if document_starts else FEATURES[:2]
    spec = {name: tf.io.FixedLenFeature(shape, tf.int64) for name in names}

    @tf.autograph.experimental.do_not_convert  # plain Python: AutoGraph would only cost time
    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        inputs, labels, *starts = (tf.cast(example[name], tf.int32) for name in names)
        if starts:
            return {"token_ids": inputs, "document_starts": starts[0]}, labels
        return inputs, labels

    dataset = tf.data.TFRecordDataset(files)  # one file after another, in order
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(metadata.steps))
    if repeat:
        dataset = dataset.repeat()
        skip_batches %= metadata.steps
    dataset = dataset.skip(skip_batches)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
