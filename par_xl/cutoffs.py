"""Optimal adaptive-softmax cutoffs under the GPU time model of Grave et al. (2017).

Given the unigram distribution of a frequency-ordered vocabulary, find the cutoffs that minimize
the modelled time of the adaptive softmax, exactly, in O(K N log N) instead of O(K N^2).

Cost model (Grave et al. 2017, "Efficient softmax approximation for GPUs", arXiv:1609.04309)
----------------------------------------------------------------------------------------------
Sec. 4.1 models the time of a (B x d) @ (d x k) matrix product on a GPU as

    g(k, B) = max(c + lam k0 B0, c + lam k B)

a fixed cost c, flat while the product has fewer than k0 B0 outputs (the device is not full),
then linear in the number of outputs k B. The paper holds d fixed; here the inner dimension
varies (tails are projected to d_i), so lam is a time per multiply-add and a product with inner
dimension d costs

    g_d(k, B) = c + lam d max(k0 B0, k B)         (the paper's g with its lam = lam d).

The adaptive softmax with K clusters has J = K - 1 tails; cutoffs 0 < t_1 < ... < t_J < N and
t_{J+1} = N; tail i holds ids [t_i, t_{i+1}): k_i = t_{i+1} - t_i entries of total probability
p_i, so p_i B of the B rows reach it. As in Sec. 4.2 (two clusters) and Sec. 4.3 (C_h for the head
and C_i for tail i, the cost of cluster i computed on its p_i B rows):

    C   = C_h + sum_{i=1..J} C_i
    C_h = g_d(t_1 + J, B)                             short-list plus one logit per tail
    C_i = g_d(d_i, p_i B) + g_{d_i}(k_i, p_i B)       projection d -> d_i, then the logits
    d_i = max(1, d // proj_factor**i)                 the reduced capacity of rare clusters
    K = 1 (plain softmax): C = g_d(N, B)

as built by `par_xl.layers.adaptive_softmax` (every tail has its projection). Costs are in
microseconds of the model.

Defaults (`CostModel`): B = 1024 tokens (base_model.sh's 32 x 32 batch), d = 128, factor 4.
k0 = 50, B0 = 2560: the paper's inflection point, measured on 2560 x 2048 hidden states (Sec. 4.1,
Fig. 2). c = 5 us and 200 TFLOP/s (lam = 0.01 ps per multiply-add): a modern accelerator (H100
class: a few microseconds to launch a GEMM; a fraction of its dense peak on such thin products).
With K fixed the number of products is fixed (2 J + 1), so c and lam change the reported costs and
speed-ups but never the argmin; only B, d, proj_factor, k0 B0 and the distribution do.

Why the fast search is exact
----------------------------
Write C_i(a, b) for the cost of tail i holding ids [a, b). Let F_J(a) = C_J(a, N) and
F_i(a) = min_{b > a} C_i(a, b) + F_{i+1}(b), the best cost of tails i..J when tail i starts at a;
the optimum is min_{t_1} C_h(t_1) + F_1(t_1). The head depends only on t_1 (J is fixed), so it
enters once, in that last O(N) scan. Each F_i is a row-minima problem of the matrix
M(a, b) = C_i(a, b) + F_{i+1}(b); divide and conquer solves it in O(N log N) evaluations if the
leftmost argmin opt(a) is nondecreasing in a, which holds when C_i satisfies the quadrangle
inequality (QI) for all a <= b <= c <= e:

    C_i(a, c) + C_i(b, e) <= C_i(a, e) + C_i(b, c).

1. S(a, b) = sum of p over [a, b) and L(a, b) = b - a are modular (QI with equality); both are
   nondecreasing under interval inclusion. Their product f = L S satisfies the QI: splitting
   [a, e) into X = [a, b), Y = [b, c), Z = [c, e), f(a,e) + f(b,c) - f(a,c) - f(b,e) =
   L_X S_Z + L_Z S_X >= 0.
2. If u satisfies the QI and is nondecreasing under inclusion, so does phi(u) for phi convex and
   nondecreasing: x1 = u(a,e) >= y1 = u(a,c), y2 = u(b,e) >= x2 = u(b,c) and x1 + x2 >= y1 + y2;
   with x1' = y1 + y2 - x2 in [max(y1, y2), x1], convexity gives phi(y1) + phi(y2) <=
   phi(x1') + phi(x2) <= phi(x1) + phi(x2).
3. C_i is a sum of two such terms, phi(x) = c + lam d' max(k0 B0, x) (convex, nondecreasing) of
   u = B d_i S (projection) and u = B f (logits); the cluster index i only changes constants, so
   each layer's C_i satisfies the QI, whatever the max(...) regime.
4. Adding F_{i+1}(b), a function of the column only, keeps the QI for M. If a1 < a2 had
   b2 = opt(a2) < b1 = opt(a1), then a1 < a2 < b2 < b1 and the QI gives M(a1, b2) + M(a2, b1) <=
   M(a1, b1) + M(a2, b2); b1 being the leftmost argmin of row a1, M(a1, b2) > M(a1, b1), hence
   M(a2, b1) < M(a2, b2), contradicting b2 = opt(a2). So opt is monotone: solving the middle row
   over its whole column range and recursing on each half with the column range cut at its
   argmin never drops an optimum. Feasibility (b > a, later tails non-empty) only bounds columns
   by the row from below and by a constant from above, which keeps the argument.

Ties: when products sit in the flat regime many cutoffs cost the same, and the leftmost argmin
would pick arbitrary ones (say 1, 2, ...). The search therefore minimizes C + 1e-12 lam W, W the
multiply-adds (C with c = 0 and k0 B0 = 0, divided by lam): W satisfies the QI too (step 3 with
phi linear), so the search is exact for this objective, and as lam W <= C its optimum is optimal
for C to a relative 1e-12, the ties going to the least arithmetic.

`tests/test_cutoffs.py` checks the QI numerically and the result against brute force. Floating
point makes near-ties ambiguous, not the cost: costs agree to rounding.
"""

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

BASE_CUTOFFS = (250, 2500)  # base_model.sh's cutoffs, reported for comparison
TIE_BREAK = 1e-12  # weight of the arithmetic in the searched objective (module docstring)


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Modelled time of an adaptive softmax, in microseconds (formula in the module docstring).

    Args:
        batch_tokens: B, rows (tokens) per batch.
        d_model: d, the hidden size entering the softmax.
        proj_factor: tail cluster i is projected to `max(1, d_model // proj_factor**i)`.
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

    def tail_dim(self, cluster: int) -> int:
        """d_i of tail cluster `cluster` (1-based)."""
        return max(1, self.d_model // self.proj_factor**cluster)

    def matmul_time(self, rows, cols, inner):
        """g_inner(cols, rows) = c + lam inner max(k0 B0, cols rows); broadcasts over arrays."""
        return self.c_us + self.lam_us * inner * np.maximum(self.k0 * self.b0, cols * rows)

    def head_time(self, head_size, num_tails: int):
        """C_h: the head's `head_size` entries plus one logit per tail, on all B rows."""
        return self.matmul_time(self.batch_tokens, head_size + num_tails, self.d_model)

    def tail_time(self, cluster: int, size, mass):
        """C_i of tail `cluster` holding `size` entries of total probability `mass`."""
        rows = mass * self.batch_tokens
        dim = self.tail_dim(cluster)
        return self.matmul_time(rows, dim, self.d_model) + self.matmul_time(rows, size, dim)

    def cluster_times(self, probs_sorted: np.ndarray, cutoffs: Sequence[int]) -> list[float]:
        """Per-cluster times, head first, for `probs_sorted` (id order = frequency order)."""
        probs = _normalized(probs_sorted)
        n = probs.size
        cutoffs = _validated_cutoffs(cutoffs, n)
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


def read_unigram_file(path: str | os.PathLike) -> np.ndarray:
    """Reads one frequency per line (the last whitespace-separated field), in file order.

    Accepts build_data.py's `<id>\\t<piece>\\t<count>\\t<probability>` lines as well as plain
    counts or probabilities, one per line. Trailing blank lines are ignored.

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
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            where = f" (last field of {line.strip()!r})" if len(fields) > 1 else ""
            raise ValueError(
                f"{path}:{number}: {fields[-1]!r}{where} is not a finite count or probability >= 0."
            )
        values[number - 1] = value
    if not values.any():
        raise ValueError(f"{path}: all {values.size} counts are zero.")
    return values


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

    def tail(i, size, mass):  # the searched objective, C + TIE_BREAK lam W (module docstring)
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


def optimal_cuts_report(
    filename: str | os.PathLike,
    num_clusters: int,
    cost_model: CostModel = CostModel(),
    verbose: bool = True,
) -> str:
    """Reads a unigram file and describes the optimal cutoffs, as `optimal_cuts.py` prints it.

    The last line holds the cutoffs as repeatable `--cutoffs=` flags, ready for base_model.sh.
    """
    values = read_unigram_file(filename)
    probs = np.sort(values / values.sum())[::-1]
    n = probs.size
    began = time.perf_counter()
    cutoffs, cost = optimal_cutoffs(probs, num_clusters, cost_model)
    seconds = time.perf_counter() - began
    plain = cost_model.cost(probs, ())
    m = cost_model
    lines = [
        f"Vocabulary: {n} entries from {filename}, sorted by frequency.",
        f"Cost model (Grave et al. 2017): B={m.batch_tokens:g} tokens, d_model={m.d_model}, "
        f"proj_factor={m.proj_factor}, c={m.c_us:g} us, {m.tflops:g} TFLOP/s, "
        f"k0*B0={m.k0:g}*{m.b0:g}.",
        f"Optimal cutoffs for {num_clusters} cluster(s): {list(cutoffs)} "
        f"(exact search, {seconds:.2f} s).",
    ]
    if verbose:
        lines.append(f"  {'cluster':<8}{'ids':>17}{'mass':>10}{'dim':>6}{'time (us)':>12}")
        bounds = [0, *cutoffs, n]
        times = m.cluster_times(probs, cutoffs)
        for i, ((low, high), t) in enumerate(zip(itertools.pairwise(bounds), times, strict=True)):
            name = f"tail {i}" if i else "head"
            dim = m.tail_dim(i) if i else m.d_model
            ids = f"{low}-{high - 1}"
            mass = probs[low:high].sum()
            lines.append(f"  {name:<8}{ids:>17}{mass:>10.4f}{dim:>6}{t:>12.3f}")
    lines.append("Modelled time per batch, microseconds (speed-up = plain softmax / time):")
    lines.append(f"  optimal          {cost:12.3f}   speed-up {plain / cost:.2f}x")
    if num_clusters == len(BASE_CUTOFFS) + 1 and BASE_CUTOFFS[-1] < n:
        base = m.cost(probs, BASE_CUTOFFS)
        lines.append(
            f"  base 250/2500    {base:12.3f}   speed-up {plain / base:.2f}x "
            f"(optimal is {base / cost:.2f}x faster)"
        )
    else:
        lines.append(
            f"  base 250/2500    does not apply ({len(BASE_CUTOFFS) + 1} clusters and "
            f"N > {BASE_CUTOFFS[-1]} needed; here {num_clusters} clusters, N = {n})"
        )
    lines.append(f"  plain softmax    {plain:12.3f}")
    spaced = " ".join(str(c) for c in cutoffs) or "0"
    lines.append(f'train.py flags (base_model.sh: CUTOFFS="{spaced}"; 0 is a plain softmax):')
    lines.append(" ".join(f"--cutoffs={c}" for c in cutoffs) or "--cutoffs=0")
    return "\n".join(lines)


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


def _validated_cutoffs(cutoffs: Sequence[int], n: int) -> tuple[int, ...]:
    """Cutoffs as ints, checked strictly increasing in (0, n)."""
    cutoffs = tuple(int(c) for c in cutoffs)
    if any(b <= a for a, b in itertools.pairwise(cutoffs)) or (
        cutoffs and not 0 < cutoffs[0] <= cutoffs[-1] < n
    ):
        raise ValueError(f"cutoffs must be strictly increasing within (0, {n}), got {cutoffs}.")
    return cutoffs


def _monotone_row_minima(
    cost: Callable[[np.ndarray, np.ndarray], np.ndarray],
    row_lo: int,
    row_hi: int,
    col_hi: int,
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Row minima of cost(a, b) over b in (a, col_hi], rows a in [row_lo, row_hi].

    Divide and conquer, valid when the leftmost argmin is nondecreasing in a (module docstring),
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
