"""The unigram file: how often each vocabulary id occurs in the training split.

`build_data.py` writes it as `<tfrecords_directory>/train/unigram.txt`: one line per vocabulary id,
in id order (line k is id k), four tab-separated fields:

    <id>\\t<piece>\\t<count>\\t<probability>

`count` is the number of times the id occurs in the training split's id stream (end-of-line ids
included), `probability` is count / total count. `optimal_cuts.py` reads the last field of each line
as the id's frequency, to choose the adaptive-softmax cutoffs.
"""

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from par_xl.files import atomic_path

UNIGRAM_FILE = "unigram.txt"


def unigram_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Occurrences of each id in a stream: (N,) ids -> (vocab_size,) int64 counts."""
    return np.bincount(ids, minlength=vocab_size)


def write_unigram(path: str | os.PathLike, pieces: Sequence[str], counts: np.ndarray) -> None:
    """Writes the unigram file (format in the module docstring) atomically."""
    probabilities = counts / counts.sum()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, (piece, count, p) in enumerate(zip(pieces, counts, probabilities, strict=True)):
            f.write(f"{i}\t{piece}\t{count}\t{p:.9g}\n")


class FrequencyOrder(NamedTuple):
    """How well id order follows frequency order (1.0 everywhere means exactly)."""

    spearman: float  # rank correlation of id with -count (ties get average ranks)
    top_fraction: dict[int, float]  # k -> fraction of the k most frequent ids that are below k


def frequency_order(counts: np.ndarray, ks: Sequence[int] = (250, 2500)) -> FrequencyOrder:
    """Measures how closely ids are ordered by their counts (low id = frequent).

    The adaptive softmax's clusters are id ranges, so they work as intended when the ids below a
    cutoff are the most frequent ones.
    """
    ids = np.arange(counts.size, dtype=np.float64)
    spearman = np.corrcoef(_average_ranks(ids), _average_ranks(-counts.astype(np.float64)))[0, 1]
    by_frequency = np.argsort(-counts, kind="stable")
    top = {k: float(np.mean(by_frequency[:k] < k)) for k in ks if k <= counts.size}
    return FrequencyOrder(float(spearman), top)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of x, tied values sharing their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    _, first, size = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(first + (size - 1) / 2, size)
    return ranks
