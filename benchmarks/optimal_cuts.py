"""Times the exact cutoff search against the plain O(K N^2) dynamic programme; prints JSON.

    python benchmarks/optimal_cuts.py [--sizes=1000,3000,12000,267735] [--clusters=4,5]

Vocabularies are Zipf-like (count of rank r ~ r^-1.1 times log-normal noise, shuffled). The
reference runs only up to --reference_max_n (it is quadratic); where both run, their optimal
costs must agree. Times are medians of --repeats runs after one warm-up run.
"""

import json
import platform
import statistics
import time

import numpy as np
from absl import app, flags

from par_xl.cutoffs import CostModel, optimal_cutoffs

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["1000", "3000", "12000", "50000", "267735"], "Vocabulary sizes N.")
flags.DEFINE_list("clusters", ["4", "5"], "Numbers of clusters K, head included.")
flags.DEFINE_integer("reference_max_n", 12000, "Largest N the O(K N^2) reference is run at.")
flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (the median is reported).")
flags.DEFINE_integer("reference_repeats", 3, "Timed runs of the reference.")
flags.DEFINE_float("zipf_exponent", 1.1, "Counts fall as rank**-exponent.")
flags.DEFINE_integer("seed", 0, "Seed of the noise and the shuffle.")


def zipf_counts(n, exponent, seed):
    """Shuffled Zipf-like integer counts (at least 1), about 1e9 tokens in all."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 0.3, n) / np.arange(1, n + 1) ** exponent
    return rng.permutation(np.maximum(1, np.round(1e9 * weights / weights.sum())))


def reference_optimal(probs, num_clusters, model, chunk=256):
    """The plain programme: every (start, end) pair of every tail, O(K N^2), rows in chunks."""
    p = np.sort(probs / probs.sum())[::-1]
    n, tails = p.size, num_clusters - 1
    prefix = np.append(0.0, np.cumsum(p))
    best = np.full(n + 1, np.inf)  # best[a]: cost of tails i..J when tail i starts at a
    starts = np.arange(tails, n)
    best[starts] = model.tail_time(tails, n - starts, prefix[n] - prefix[starts])
    ends = []
    for i in range(tails - 1, 0, -1):
        last_end = n - (tails - i)
        row_best, row_end = np.full(n + 1, np.inf), np.full(n + 1, -1)
        for low in range(i, last_end, chunk):
            a = np.arange(low, min(low + chunk, last_end))[:, None]
            b = np.arange(low + 1, last_end + 1)[None, :]
            total = model.tail_time(i, b - a, prefix[b] - prefix[a]) + best[b]
            total = np.where(b > a, total, np.inf)
            row_end[a[:, 0]] = low + 1 + np.argmin(total, axis=1)
            row_best[a[:, 0]] = np.min(total, axis=1)
        best = row_best
        ends.append(row_end)
    first = np.arange(1, n - tails + 1)
    cut = int(first[np.argmin(model.head_time(first, tails) + best[first])])
    cutoffs = [cut]
    for row_end in reversed(ends):
        cutoffs.append(int(row_end[cutoffs[-1]]))
    return tuple(cutoffs), model.cost(p, cutoffs)


def median_seconds(repeats, fn, *args):
    """Median wall time of `repeats` calls fn(*args) after a warm-up call; all times; a result."""
    result = fn(*args)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - began)
    return statistics.median(times), times, result


def main(argv):
    del argv  # unused
    model = CostModel()
    rows = []
    for n in map(int, FLAGS.sizes):
        counts = zipf_counts(n, FLAGS.zipf_exponent, FLAGS.seed)
        for k in map(int, FLAGS.clusters):
            seconds, runs, (cuts, cost) = median_seconds(
                FLAGS.repeats, optimal_cutoffs, counts, k, model
            )
            row = {
                "n": n,
                "clusters": k,
                "ours_s": round(seconds, 4),
                "ours_runs_s": [round(t, 4) for t in runs],
                "cutoffs": list(cuts),
                "cost_us": cost,
            }
            if n <= FLAGS.reference_max_n:
                ref_seconds, _, (ref_cuts, ref_cost) = median_seconds(
                    FLAGS.reference_repeats, reference_optimal, counts, k, model
                )
                row.update(
                    reference_s=round(ref_seconds, 4),
                    reference_cutoffs=list(ref_cuts),
                    reference_cost_us=ref_cost,
                    same_cost=bool(np.isclose(cost, ref_cost, rtol=1e-9, atol=0)),
                    speedup=round(ref_seconds / seconds, 1),
                )
            rows.append(row)
    report = {
        "benchmark": "optimal_cuts",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "numpy": np.__version__,
        "cost_model": vars(model),
        "zipf_exponent": FLAGS.zipf_exponent,
        "reference_largest_n": max(
            (n for n in map(int, FLAGS.sizes) if n <= FLAGS.reference_max_n), default=None
        ),
        "results": rows,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
