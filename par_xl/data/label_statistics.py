"""Statistics of a split's labels that size the model: the tail-cluster capacities.

The adaptive softmax's loss scores each tail cluster on a static slice of positions
(`AdaptiveSoftmax(tail_capacities=...)`), so that XLA sees fixed shapes; a slice as large as
the most any training batch needs keeps every batch on that sparse path.
"""

import os

import numpy as np
import tensorflow as tf

from par_xl.cutoffs import validate_cutoffs
from par_xl.data.tfrecords import load_dataset


def max_tail_labels_per_batch(batches, cutoffs, vocab_size, multiple=8):
    """The most labels any batch puts in each tail cluster, rounded up to `multiple`.

    Args:
        batches: a split directory written by build_data.py (its labels are read in full), a
            `tf.data.Dataset` of `(inputs, labels)` batches, or an iterable of integer label
            arrays, one per batch (any shape).
        cutoffs: the adaptive-softmax cutoffs.
        vocab_size: V.
        multiple: the counts are rounded up to a multiple of this (at least one multiple).

    Returns:
        A list with one capacity per tail cluster, for `AdaptiveSoftmax(tail_capacities=...)`.
    """
    if isinstance(batches, str | os.PathLike):
        batches = load_dataset(batches)
    if isinstance(batches, tf.data.Dataset):
        batches = (labels for _, labels in batches.as_numpy_iterator())
    bounds = [*validate_cutoffs(cutoffs, vocab_size), vocab_size]
    most = np.zeros(len(bounds) - 1, dtype=np.int64)
    for labels in batches:
        counts = np.histogram(np.asarray(labels).ravel(), bins=bounds)[0]
        most = np.maximum(most, counts)
    return [int(-(-max(m, 1) // multiple) * multiple) for m in most]
