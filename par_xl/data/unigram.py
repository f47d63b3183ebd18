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


def cluster_shares(counts: np.ndarray, cutoffs: Sequence[int]) -> list[float]:
    """The share of the counted tokens in each adaptive-softmax cluster: head, then each tail."""
    bounds = [0, *cutoffs, counts.size]
    return [float(counts[a:b].sum() / counts.sum()) for a, b in zip(bounds[:-1], bounds[1:])]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of x, tied values sharing their average rank (as Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    _, first, size = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(first + (size - 1) / 2, size)
    return ranks


def read_unigram_file(path: str | os.PathLike) -> np.ndarray:
    """Reads one frequency per line (the last whitespace-separated field), in file order.

    Accepts the unigram file (module docstring) as well as plain counts or probabilities, one
    per line. Trailing blank lines are ignored.

    Returns:
        `(N,)` float64 values as read (not normalized, not sorted).

    Raises:
        ValueError: naming the file, line number and text of the first bad line, or if the file
            cannot be read, is empty, or holds only zeros.
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")  # not splitlines(): pieces may hold U+2028, U+0085...
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise ValueError(f"{path}: cannot read the unigram file ({reason}).") from e
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: the unigram file is empty.")
    values = np.empty(len(lines))
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            raise ValueError(f"{path}:{number}: blank line; expected a count or probability.")
        try:
            value = float(fields[-1])
        except ValueError:
            value = np.nan
        if not (np.isfinite(value) and value >= 0):
            where = f" (last field of {line.strip()!r})" if len(fields) > 1 else ""
            raise ValueError(
                f"{path}:{number}: {fields[-1]!r}{where} is not a finite count or probability >= 0."
            )
        values[number - 1] = value
    if not values.any():
        raise ValueError(f"{path}: all {values.size} counts are zero.")
    return values
