"""Optimal adaptive-softmax cutoffs under the GPU time model of Grave et al. (2017).

Given the unigram distribution of a frequency-ordered vocabulary, `optimal_cutoffs` finds the
cutoffs that minimize the modelled time of the adaptive softmax (`CostModel`), exactly, in
O(K N log N) instead of the O(K N^2) dynamic programme: the cost of a tail cluster satisfies the
quadrangle inequality, so the best end of a cluster never moves left when its start moves
right, and divide and conquer over the rows never drops an optimum. The cost model, its
defaults and the proof are in `docs/cutoffs.md`.

The module also owns the two rules every user of cutoffs shares: which cutoffs are valid
(`validate_cutoffs`) and how wide each tail cluster is (`tail_width`).
"""

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

BASE_CUTOFFS = (250, 2500)  # base_model.sh's cutoffs, reported for comparison
TIE_BREAK = 1e-12  # weight of the arithmetic in the searched objective (docs/cutoffs.md)


def validate_cutoffs(cutoffs: Sequence[int], vocab_size: int) -> list[int]:
    """The cutoffs as ints, checked strictly increasing and within `(0, vocab_size)`.

    Raises:
        ValueError: naming the rule, the vocabulary size and the cutoffs received.
    """
    cutoffs = [int(c) for c in cutoffs]
    if any(b <= a for a, b in itertools.pairwise(cutoffs)) or (
        cutoffs and not 0 < cutoffs[0] <= cutoffs[-1] < vocab_size
    ):
        raise ValueError(
            f"cutoffs must be strictly increasing and between 0 and the vocabulary size "
            f"{vocab_size} (exclusive), received {cutoffs}."
        )
    return cutoffs


def tail_width(width: int, proj_factor: int, cluster: int) -> int:
    """d_i: the width tail cluster `cluster` (1-based) is projected to, `width // proj_factor**i`
    but at least 1. Rarer clusters get narrower projections, so they cost less."""
    return max(1, width // proj_factor**cluster)


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Modelled time of an adaptive softmax, in microseconds (formula in docs/cutoffs.md).

    Args:
        batch_tokens: B, rows (tokens) per batch.
        d_model: d, the hidden size entering the softmax.
        proj_factor: tail cluster i is projected to `tail_width(d_model, proj_factor, i)`.
        c_us: c, fixed time of one matrix product.
        tflops: effective throughput of a matrix product; lam = 2 / tflops (1e-12 s per FLOP).
        k0: output columns at which a product stops being flat (with `b0` rows).
        b0: rows of the product at which `k0` was measured.

    Example:
        >>> model = CostModel(batch_tokens=32 * 32, d_model=128)
        >>> round(model.cost(np.ones(4), ()), 3)  # a tiny plain softmax: c + lam d k0 B0
        5.164
    """

    batch_tokens: float = 1024.0
    d_model: int = 128
    proj_factor: int = 4
    c_us: float = 5.0
    tflops: float = 200.0
    k0: float = 50.0
    b0: float = 2560.0

    def __post_init__(self):
        for name in ("batch_tokens", "tflops"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, received {value}.")
        for name in ("c_us", "k0", "b0"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, received {value}.")
        for name in ("d_model", "proj_factor"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, received {value}.")

    @property
    def lam_us(self) -> float:
        """lam: microseconds per multiply-add (2 FLOPs)."""
        return 2.0 / (self.tflops * 1e6)

    def matmul_time(self, rows, cols, inner):
        """g_inner(cols, rows) = c + lam inner max(k0 B0, cols rows); broadcasts over arrays."""
        return self.c_us + self.lam_us * inner * np.maximum(self.k0 * self.b0, cols * rows)

    def head_time(self, head_size, num_tails: int):
        """C_h: the head's `head_size` entries plus one logit per tail, on all B rows."""
        return self.matmul_time(self.batch_tokens, head_size + num_tails, self.d_model)

    def tail_time(self, cluster: int, size, mass):
        """C_i of tail `cluster` holding `size` entries of total probability `mass`."""
        rows = mass * self.batch_tokens
        dim = tail_width(self.d_model, self.proj_factor, cluster)
        return self.matmul_time(rows, dim, self.d_model) + self.matmul_time(rows, size, dim)

    def cluster_times(self, probs_sorted: np.ndarray, cutoffs: Sequence[int]) -> list[float]:
        """Per-cluster times, head first, for `probs_sorted` (id order = frequency order)."""
        probs = _normalized(probs_sorted)
        n = probs.size
        cutoffs = validate_cutoffs(cutoffs, n)
        if not cutoffs:
            return [float(self.matmul_time(self.batch_tokens, n, self.d_model))]
        bounds = [*cutoffs, n]
        times = [float(self.head_time(cutoffs[0], len(cutoffs)))]
        for i, (low, high) in enumerate(itertools.pairwise(bounds), start=1):
            times.append(float(self.tail_time(i, high - low, probs[low:high].sum())))
        return times

    def cost(self, probs_sorted: np.ndarray, cutoffs: Sequence[int]) -> float:
        """C: modelled time of the adaptive softmax with `cutoffs` (empty: plain softmax)."""
        return float(sum(self.cluster_times(probs_sorted, cutoffs)))


def optimal_cutoffs(
    probs: np.ndarray, num_clusters: int, cost_model: CostModel = CostModel()
) -> tuple[tuple[int, ...], float]:
    """Exact minimum of `cost_model.cost` over all cutoffs for `num_clusters` clusters.

    Args:
        probs: `(N,)` counts or probabilities, any order; they are normalized and sorted by
            decreasing frequency (the cutoffs are positions in that order).
        num_clusters: K, head included (K - 1 cutoffs); 1 <= K <= N.
        cost_model: the time model.

    Returns:
        `(cutoffs, cost)`: strictly increasing cutoffs in `(0, N)` and their modelled cost.
    """
    sorted_probs = np.sort(_normalized(probs))[::-1]
    n = sorted_probs.size
    if int(num_clusters) != num_clusters or num_clusters < 1:
        raise ValueError(f"num_clusters must be an integer >= 1, received {num_clusters}.")
    if num_clusters > n:
        raise ValueError(
            f"cannot split a vocabulary of {n} entries into {num_clusters} non-empty clusters."
        )
    tails = num_clusters - 1
    if tails == 0:
        return (), cost_model.cost(sorted_probs, ())
    # suffix[a] = sum(p[a:]): accurate for the small masses of the rare tail clusters.
    suffix = np.append(np.cumsum(sorted_probs[::-1])[::-1], 0.0)
    work = dataclasses.replace(cost_model, c_us=0.0, k0=0.0)  # its times are lam W

    def tail(i, size, mass):  # the searched objective, C + TIE_BREAK lam W (docs/cutoffs.md)
        return cost_model.tail_time(i, size, mass) + TIE_BREAK * work.tail_time(i, size, mass)

    starts = np.arange(tails, n)
    best = np.full(n + 1, np.inf)  # best[a] = F_i(a); the last tail runs to N
    best[starts] = tail(tails, n - starts, suffix[starts])
    choices = []  # choices[-i][a] = end of tail i when it starts at a, for i = J - 1 .. 1
    for i in range(tails - 1, 0, -1):
        last_end = n - (tails - i)  # tails i+1..J need one entry each

        def cost(a, b, i=i, following=best):
            return tail(i, b - a, suffix[a] - suffix[b]) + following[b]

        best, choice = _monotone_row_minima(cost, i, last_end - 1, last_end, n + 1)
        choices.append(choice)
    first = np.arange(1, n - tails + 1)
    head = cost_model.head_time(first, tails) + TIE_BREAK * work.head_time(first, tails)
    cut = int(first[np.argmin(head + best[first])])
    cutoffs = [cut]
    for choice in reversed(choices):
        cutoffs.append(int(choice[cutoffs[-1]]))
    cutoffs = tuple(cutoffs)
    return cutoffs, cost_model.cost(sorted_probs, cutoffs)


@dataclasses.dataclass(frozen=True)
class CutoffsComparison:
    """The optimal cutoffs of a distribution, against a plain softmax and the base cutoffs.

    `optimal_cuts.py` prints it; every time is `CostModel` microseconds per batch.
    """

    probs: np.ndarray  # (N,) normalized, sorted by decreasing frequency
    cutoffs: tuple[int, ...]  # the optimum for the number of clusters asked
    cost: float  # its modelled time
    cluster_times: list[float]  # its time per cluster, head first
    plain_cost: float  # a plain softmax (no cutoffs)
    base_cost: float | None  # BASE_CUTOFFS, or None where they do not fit (other K, N too small)

    @property
    def faster_than_plain(self) -> bool:
        """Whether the optimal adaptive softmax beats the plain softmax in the model."""
        return self.cost < self.plain_cost

    @property
    def recommended_cutoffs(self) -> tuple[int, ...]:
        """The optimal cutoffs where they beat a plain softmax, else none (a plain softmax)."""
        return self.cutoffs if self.faster_than_plain else ()


def compare_cutoffs(
    frequencies: np.ndarray, num_clusters: int, cost_model: CostModel = CostModel()
) -> CutoffsComparison:
    """`optimal_cutoffs` of `frequencies` (counts or probabilities, any order), compared with a
    plain softmax and, for 3 clusters of a vocabulary larger than 2500, with `BASE_CUTOFFS`."""
    probs = np.sort(_normalized(frequencies))[::-1]
    cutoffs, cost = optimal_cutoffs(probs, num_clusters, cost_model)
    base_fits = num_clusters == len(BASE_CUTOFFS) + 1 and BASE_CUTOFFS[-1] < probs.size
    return CutoffsComparison(
        probs=probs,
        cutoffs=cutoffs,
        cost=cost,
        cluster_times=cost_model.cluster_times(probs, cutoffs),
        plain_cost=cost_model.cost(probs, ()),
        base_cost=cost_model.cost(probs, BASE_CUTOFFS) if base_fits else None,
    )


def _normalized(values) -> np.ndarray:
    """Probabilities from finite, non-negative values of positive sum: (N,) -> (N,) float64."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of frequencies, shape {values.shape}.")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("frequencies must be finite and >= 0.")
    peak = values.max()
    if peak == 0:
        raise ValueError("frequencies are all zero.")
    values = values / peak  # no overflow in the sum below
    return values / values.sum()


def _monotone_row_minima(
    cost: Callable[[np.ndarray, np.ndarray], np.ndarray],
    row_lo: int,
    row_hi: int,
    col_hi: int,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Row minima of cost(a, b) over b in (a, col_hi], rows a in [row_lo, row_hi].

    Divide and conquer, valid when the leftmost argmin is nondecreasing in a (docs/cutoffs.md),
    run breadth-first: each level solves the middle rows of all pending row ranges in one
    vectorized call over at most N + (number of ranges) entries, so log2(N) calls in all.

    Returns:
        `(value, argmin)`, both `(size,)`: inf and -1 outside the rows.
    """
    value = np.full(size, np.inf)
    argmin = np.full(size, -1, dtype=np.int64)
    lo, hi = np.array([row_lo]), np.array([row_hi])  # pending row ranges, inclusive
    col_lo, col_top = np.array([row_lo + 1]), np.array([col_hi])  # their column ranges
    while lo.size:
        mid = (lo + hi) // 2
        start = np.maximum(col_lo, mid + 1)
        count = col_top - start + 1
        offset = np.cumsum(count) - count
        segment = np.repeat(np.arange(mid.size), count)
        cols = np.arange(count.sum()) - offset[segment] + start[segment]
        values = cost(mid[segment], cols)
        minima = np.minimum.reduceat(values, offset)
        hits = np.flatnonzero(values == minima[segment])
        best = cols[hits[np.searchsorted(hits, offset)]]  # leftmost argmin of each segment
        value[mid], argmin[mid] = minima, best
        left, right = lo < mid, mid < hi
        lo, hi, col_lo, col_top = (
            np.concatenate(parts)
            for parts in (
                (lo[left], mid[right] + 1),
                (mid[left] - 1, hi[right]),
                (col_lo[left], best[right]),
                (best[left], col_top[right]),
            )
        )
    return value, argmin
