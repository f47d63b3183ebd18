"""kNN memory: add and search latency of the exact and ScaNN backends, ScaNN's recall; JSON.

    python benchmarks/knn_memory.py [--sizes 8192,32768,65536,262144] [--data isotropic]

One store of n keys (one stream and head, d = `--key_size`), searched by 1,024 queries (the
tokens of one 32 x 32 batch) for their 32 nearest keys, and given 1,024 new entries per add. The
store starts full: the exact one is assigned, the ScaNN one built from the same keys (its build
time reported apart). Figures are medians of `--repeats` runs; recall@32 is ScaNN's overlap with
the exact top 32, over all queries. Exact runs `ExactKNNMemory` compiled with XLA
(`tf.function(jit_compile=True)`) and as a plain `tf.function`; speed-ups are against the faster
of the two. ScaNN runs `ScannKNNMemory` eagerly, everything included (ScaNN on both cores,
mapping to slots, exact re-scoring and ordering). The backends are timed in turn within each
run, so that a change of load on the shared machine hits them alike; speed-ups are medians of
per-run ratios.

Data (`--data`): `isotropic`, unit vectors uniform on the sphere, the worst case for any
partitioning index (no structure to exploit); `clustered`, text-like keys: a unit vector per
token of a 12,000-token vocabulary drawn with Zipf frequencies (exponent 1.1), plus as much
Gaussian "context" noise (norm about 1), normalized.

The update policy (`--turnover_sizes`): a store is rewritten once by upserts (1,024 entries per
add, no rebuild), then its recall is measured against the exact top 32 before and after a
rebuild, with the new entries drawn from the same distribution and from a shifted one (a new
token table: keys that drifted), so the cost of upserts, of a rebuild, and what stale partitions
cost in recall are all measured.
"""

import functools
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import par_xl.runtime.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from benchmarks.common import median  # noqa: E402

flags.DEFINE_list("sizes", ["8192", "32768", "65536", "262144"], "Store sizes n (keys).")
flags.DEFINE_list("turnover_sizes", ["65536"], "Sizes at which the update policy is measured.")
flags.DEFINE_enum("data", "isotropic", ["isotropic", "clustered"], "Key distribution.")
flags.DEFINE_integer("key_size", 64, "d, the key size.")
flags.DEFINE_integer("queries", 1024, "Queries per search (and entries per add).")
flags.DEFINE_integer("neighbors", 32, "k.")
flags.DEFINE_integer("repeats", 5, "Timed runs of each add and search.")
flags.DEFINE_integer("build_repeats", 3, "Timed ScaNN builds per size.")
flags.DEFINE_integer("num_leaves", None, "ScaNN partitions; default round(sqrt(n)).")
flags.DEFINE_integer("leaves_to_search", 64, "Partitions searched per query.")
flags.DEFINE_integer("reorder", 256, "Candidates re-scored exactly.")
flags.DEFINE_integer("seed", 0, "Data seed.")
FLAGS = flags.FLAGS

VOCABULARY = 12000


class KeySource:
    """Draws unit keys (and queries) of one distribution; `shifted()` is a drifted one."""

    def __init__(self, kind, size, rng):
        self.kind, self.size, self.rng = kind, size, rng
        self.table = self._unit(rng.normal(size=(VOCABULARY, size)))
        weights = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.1
        self.weights = weights / weights.sum()

    @staticmethod
    def _unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype("float32")

    def draw(self, count):
        noise = self.rng.normal(size=(count, self.size))
        if self.kind == "isotropic":
            return self._unit(noise)
        tokens = self.rng.choice(VOCABULARY, size=count, p=self.weights)
        return self._unit(self.table[tokens] + noise / self.size**0.5)

    def shifted(self):
        source = KeySource(self.kind, self.size, self.rng)
        if self.kind == "isotropic":  # a drift of the mean: the partition no longer fits
            offset = self._unit(self.rng.normal(size=(1, self.size)))
            source.draw = lambda count: self._unit(self.draw(count) + 0.5 * offset)
        return source


def entries(keys):
    """`(count, d)` -> `(1, count, 1, d)`, the memory's `(B, T, N, H)`."""
    return keys[None, :, None, :]


def exact_slots(store, queries, k):
    """Brute force in numpy: `(Q, k)` slots of the k largest `queries @ store.T`."""
    found = []
    for chunk in range(0, len(queries), 256):  # bounded memory at 262k keys
        scores = queries[chunk : chunk + 256] @ store.T
        found.append(np.argpartition(-scores, k - 1, axis=1)[:, :k])
    return np.concatenate(found)


def recall(found, expected):
    """The fraction of `expected` `(Q, k)` that `found` `(Q, k)` holds, row by row."""
    return float(sum(len(set(a) & set(b)) for a, b in zip(found, expected)) / expected.size)


def timed(function, repeats):
    """Median seconds of `repeats` calls, and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return median(times), result


def scann_memory(size, **overrides):
    from par_xl.memory import ScannKNNMemory

    return ScannKNNMemory(
        batch_size=1,
        num_heads=1,
        capacity=size,
        key_size=FLAGS.key_size,
        num_neighbors=FLAGS.neighbors,
        min_index_size=min(4096, size),
        num_leaves=FLAGS.num_leaves,
        leaves_to_search=FLAGS.leaves_to_search,
        reorder=FLAGS.reorder,
        **overrides,
    )


def full_state(keys):
    return dict(
        keys=keys[None, None],
        values=np.zeros_like(keys)[None, None],
        position=np.zeros(1, "int64"),
        length=np.full(1, len(keys), "int64"),
    )


def interleaved(functions, repeats):
    """Seconds of each of `functions` (a dict), called in turn `repeats` times: a change of load
    on the shared machine then hits every one of them alike. Returns name -> list of seconds."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def exact_steps(keys, queries, new_keys, jit_compile):
    """`ExactKNNMemory` holding `keys`, and its compiled (search, add) as thunks."""
    import tensorflow as tf

    from par_xl.memory import ExactKNNMemory

    size = len(keys)
    queries, new_keys = tf.constant(entries(queries)), tf.constant(entries(new_keys))
    memory = ExactKNNMemory(1, 1, size, FLAGS.key_size, num_neighbors=FLAGS.neighbors)
    memory.key_store.assign(keys[None, None])
    memory.length.assign(np.full(1, size, "int32"))
    search = tf.function(memory.search, jit_compile=jit_compile)
    add = tf.function(memory.add, jit_compile=jit_compile)

    def run_search():
        return search(queries)[2].numpy()

    def run_add():
        add(new_keys, new_keys)
        return memory.position.numpy()

    run_search(), run_add()  # compile
    return run_search, run_add


def measure_size(keys, queries, new_keys):
    """Add and search latency of both backends at one store size, ScaNN's build and recall."""
    size = len(keys)
    builds = []
    for _ in range(FLAGS.build_repeats):
        memory = scann_memory(size)
        start = time.perf_counter()
        memory.set_state(full_state(keys))  # builds the searcher
        builds.append(time.perf_counter() - start)
    q, k = entries(queries), entries(new_keys)
    slots = memory.nearest(q)[0][0, :, 0]
    found_recall = recall(slots, exact_slots(keys, queries, FLAGS.neighbors))
    xla_search, xla_add = exact_steps(keys, queries, new_keys, jit_compile=True)
    graph_search, graph_add = exact_steps(keys, queries, new_keys, jit_compile=False)
    searches = interleaved(
        {"xla": xla_search, "graph": graph_search, "scann": lambda: memory.nearest(q)},
        FLAGS.repeats,
    )
    adds = interleaved(
        {"xla": xla_add, "graph": graph_add, "scann": lambda: memory.add(k, k)}, FLAGS.repeats
    )
    ms = {name: {"add_ms": round(1000 * median(adds[name]), 2),
                 "search_ms": round(1000 * median(searches[name]), 2)}
          for name in searches}  # fmt: skip
    leaves = FLAGS.num_leaves or max(1, round(size**0.5))
    # Speed-ups against the faster exact mode, per round (one load level), then the median.
    best = [min(a, b) for a, b in zip(searches["xla"], searches["graph"])]
    best_step = [
        min(a + b, c + d)
        for a, b, c, d in zip(searches["xla"], adds["xla"], searches["graph"], adds["graph"])
    ]
    scann_step = [a + b for a, b in zip(searches["scann"], adds["scann"])]
    return {
        "size": size,
        "exact": {"xla": ms["xla"], "graph": ms["graph"]},
        "scann": {
            **ms["scann"],
            "build_s": round(median(builds), 3),
            "recall_at_k": round(found_recall, 4),
            "num_leaves": leaves,
            "leaves_searched": min(FLAGS.leaves_to_search, leaves),
            "reorder": max(FLAGS.reorder, FLAGS.neighbors),
        },
        "search_speedup": round(median([e / s for e, s in zip(best, searches["scann"])]), 2),
        "add_and_search_speedup": round(median([e / s for e, s in zip(best_step, scann_step)]), 2),
    }


def scann_slots(memory, queries):
    """`(Q, k)` slots ScaNN finds for `(Q, d)` queries."""
    return memory.nearest(entries(queries))[0][0, :, 0]


def measure_turnover(size, source):
    """Recall after the store is rewritten by upserts, then after a rebuild."""
    report = {}
    for name, new_source in (("same_distribution", source), ("shifted", source.shifted())):
        memory = scann_memory(size, rebuild_ratio=1e9)  # upserts only
        memory.set_state(full_state(source.draw(size)))
        queries = new_source.draw(FLAGS.queries)
        upserts = []
        for _ in range(size // FLAGS.queries):
            k = entries(new_source.draw(FLAGS.queries))
            start = time.perf_counter()
            memory.add(k, k)
            upserts.append(time.perf_counter() - start)
        store = memory.get_state()["keys"][0, 0]
        expected = exact_slots(store, queries, FLAGS.neighbors)
        search = functools.partial(scann_slots, memory, queries)
        stale_seconds, found = timed(search, FLAGS.repeats)
        stale = recall(found, expected)
        start = time.perf_counter()
        memory.set_state(memory.get_state())  # rebuild from the same store
        rebuild = time.perf_counter() - start
        fresh_seconds, found = timed(search, FLAGS.repeats)
        report[name] = {
            "add_ms_median": round(1000 * median(upserts), 2),
            "adds": len(upserts),
            "after_upserts": {
                "recall_at_k": round(stale, 4),
                "search_ms": round(1000 * stale_seconds, 2),
            },
            "after_rebuild": {
                "recall_at_k": round(recall(found, expected), 4),
                "search_ms": round(1000 * fresh_seconds, 2),
            },
            "rebuild_s": round(rebuild, 3),
        }
    return report


def main(_):
    import tensorflow as tf

    rng = np.random.default_rng(FLAGS.seed)
    source = KeySource(FLAGS.data, FLAGS.key_size, rng)
    results = []
    for size in (int(s) for s in FLAGS.sizes):
        keys, queries, new_keys = (source.draw(n) for n in (size, FLAGS.queries, FLAGS.queries))
        results.append(measure_size(keys, queries, new_keys))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    turnover = {
        size: measure_turnover(size, source) for size in (int(s) for s in FLAGS.turnover_sizes)
    }
    report = {
        "benchmark": "knn_memory",
        "data": FLAGS.data,
        "key_size": FLAGS.key_size,
        "queries_per_search": FLAGS.queries,
        "entries_per_add": FLAGS.queries,
        "k": FLAGS.neighbors,
        "scann_settings": {
            "num_leaves": FLAGS.num_leaves or "round(sqrt(n))",
            "leaves_to_search": FLAGS.leaves_to_search,
            "reorder": FLAGS.reorder,
            "hashing": "asymmetric, 2 dimensions per block, anisotropic threshold 0.2",
            "training": "k-means, 8 iterations, up to 65,536 sampled keys",
        },
        "tensorflow": tf.__version__,
        "cpu_threads": os.cpu_count(),
        "results": results,
        "update_policy": turnover,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
