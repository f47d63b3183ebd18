"""Steady-state training throughput of the base PAR supernet, XLA on and off, for each
supernet search (all branches, single path; the single path without XLA only, as train.py
trains it on TensorFlow); prints JSON.

    python benchmarks/train_step.py [--repeats 5] [--steps 40] [--searches=single_path]
    python benchmarks/train_step.py --modes=no_xla --knn_layers=3   # one memorizing block

Each configuration is compiled and warmed up, then timed over `--repeats` runs of `--steps`
training steps through `model.fit` (the real path: callbacks, progress off), the
configurations taking turns; the figures are medians, the ratios medians of per-turn ratios.
With `--knn_layers`, each configuration is also timed without them, in the same turns. FLOPs
per token and the utilization of this machine's fp32 matmul peak (measured in the same run)
come with them.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import par_xl.runtime.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from benchmarks.common import (  # noqa: E402
    fit_seconds,
    matmul_peak_gflops,
    median,
    utilization,
    zipf_tokens,
)
from par_xl.configs import PRESETS  # noqa: E402
from par_xl.cost.parameters import count_parameters  # noqa: E402

FLAGS = flags.DEFINE_integer("repeats", 5, "Timed runs per configuration.")
flags.DEFINE_integer("steps", 40, "Training steps per timed run.")
flags.DEFINE_integer("warmup", 10, "Untimed steps after compilation.")
flags.DEFINE_integer("batch_size", 32, "Batch size B.")
flags.DEFINE_integer("seq_len", 32, "Segment length T.")
flags.DEFINE_string("architecture", None, "Fixed architecture (e.g. AAFAFF); default supernet.")
flags.DEFINE_list("modes", ["xla", "no_xla"], "Which of xla, no_xla to run.")
flags.DEFINE_list(
    "searches", ["all_branches", "single_path"], "Supernet searches to time (--search of train.py)."
)
flags.DEFINE_bool("tail_capacity", True, "Score tail clusters sparsely (as train.py does).")
flags.DEFINE_multi_integer(
    "knn_layers", [], "Blocks with memorizing attention (M in place of A; see train.py)."
)
flags.DEFINE_integer("knn_memory_size", 2048, "kNN store entries per stream and head (C).")
FLAGS = flags.FLAGS


def prepare(jit_compile, search, knn_layers):
    """Builds, compiles and warms up one configuration; returns `(run, info)`: `run()` trains
    `--steps` steps and returns their tokens/s, `info` the configuration's fixed figures."""
    import keras
    import tensorflow as tf

    from par_xl.cost.flops import training_flops_per_token
    from par_xl.data.label_statistics import max_tail_labels_per_batch
    from par_xl.models import PARTransformerXL

    keras.utils.set_random_seed(0)
    base = PRESETS["base"].model_kwargs()
    shape = (FLAGS.steps, FLAGS.batch_size, FLAGS.seq_len)
    inputs = zipf_tokens(shape, base["vocab_size"], seed=1)
    labels = zipf_tokens(shape, base["vocab_size"], seed=2)
    capacity = None
    if FLAGS.tail_capacity:  # as train.py does: the most any batch needs
        capacity = max_tail_labels_per_batch(labels, base["cutoffs"], base["vocab_size"])
    base["architecture"] = FLAGS.architecture
    base["knn_layers"] = knn_layers
    base["knn_memory_size"] = FLAGS.knn_memory_size
    base["search"] = search
    model = PARTransformerXL(**base, tail_capacities=capacity)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit_compile)
    data = tf.data.Dataset.from_tensor_slices((inputs, labels)).repeat()
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=FLAGS.warmup, epochs=1, verbose=0)
    warmup_seconds = time.perf_counter() - start

    def run():
        tokens = FLAGS.steps * FLAGS.batch_size * FLAGS.seq_len
        return tokens / fit_seconds(model, data, FLAGS.steps)

    return run, {
        "compile_and_warmup_seconds": round(warmup_seconds, 1),
        # For a single path: the expected FLOPs at the choice probabilities of the timed steps
        # (still uniform here, as at the start of a search).
        "flops_per_token": training_flops_per_token(model, FLAGS.seq_len, FLAGS.batch_size),
        "parameters": count_parameters(model),
        "tail_capacities": capacity,
    }


def main(_):
    import tensorflow as tf

    searches = ["fixed"] if FLAGS.architecture else FLAGS.searches
    # With --knn_layers, every configuration also without them: the cost of the kNN memory.
    knn_variants = {"": ()}
    if FLAGS.knn_layers:
        knn_variants["_knn"] = tuple(FLAGS.knn_layers)
    prepared = {
        f"{search}_{mode}{suffix}": prepare(
            mode == "xla", search if search != "fixed" else "all_branches", knn_layers
        )
        for search in searches
        for mode in FLAGS.modes
        for suffix, knn_layers in knn_variants.items()
        # train.py refuses XLA for the single path on TensorFlow (it did not compile in 15 min)
        if not (search == "single_path" and mode == "xla")
    }
    rates = {name: [] for name in prepared}
    for _ in range(FLAGS.repeats):  # the configurations take turns: ratios within one run
        for name, (run, _) in prepared.items():
            rates[name].append(run())
    results = {}
    for name, (_, info) in prepared.items():
        tokens_per_second = median(rates[name])
        results[name] = {
            "tokens_per_second": round(tokens_per_second),
            "ms_per_step": round(1000 * FLAGS.batch_size * FLAGS.seq_len / tokens_per_second, 2),
            "runs_tokens_per_second": [round(r) for r in rates[name]],
            **info,
        }
    peak = matmul_peak_gflops()
    for result in results.values():
        result.update(utilization(result["tokens_per_second"], result["flops_per_token"], peak))
    report = {
        "benchmark": "train_step",
        "config": {
            **PRESETS["base"].model_kwargs(),
            "batch_size": FLAGS.batch_size,
            "seq_len": FLAGS.seq_len,
            "architecture": FLAGS.architecture or "supernet",
            "knn_layers": FLAGS.knn_layers,
            "knn_memory_size": FLAGS.knn_memory_size,
        },
        "tensorflow": tf.__version__,
        "cpu_threads": os.cpu_count(),
        "matmul_peak_gflops": round(peak, 1),
        **results,
    }

    def ratios(a, b):  # a over b: the median of the per-turn ratios
        return round(median([x / y for x, y in zip(rates[a], rates[b])]), 2)

    for search in searches:
        for suffix in knn_variants:
            xla, no_xla = f"{search}_xla{suffix}", f"{search}_no_xla{suffix}"
            if {xla, no_xla} <= results.keys():
                report[f"{search}{suffix}_xla_speedup"] = ratios(xla, no_xla)
        for mode in FLAGS.modes:
            if FLAGS.knn_layers:
                name = f"{search}_{mode}"
                report[f"{name}_knn_over_without"] = ratios(f"{name}_knn", name)
    for mode in FLAGS.modes:
        for suffix in knn_variants:
            single, every = f"single_path_{mode}{suffix}", f"all_branches_{mode}{suffix}"
            if {single, every} <= results.keys():
                report[f"single_path_speedup_{mode}{suffix}"] = ratios(single, every)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
