"""Steady-state training throughput of the base PAR supernet, XLA on and off, for each
supernet search (all branches, single path); prints JSON.

    python benchmarks/train_step.py [--repeats 5] [--steps 40] [--searches=single_path]
    python benchmarks/train_step.py --modes=no_xla --knn_layers=3   # one memorizing block

Each configuration is compiled, warmed up, then timed over `--repeats` runs of `--steps`
training steps through `model.fit` (the real path: callbacks, progress off); the figures are
medians. FLOPs per token and the utilization of this machine's fp32 matmul peak (measured in
the same run) come with them.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import par_xl.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from benchmarks.common import matmul_peak_gflops, median, zipf_tokens  # noqa: E402
from par_xl.configs import PRESETS  # noqa: E402

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


def measure(jit_compile, search):
    import keras
    import tensorflow as tf

    from par_xl.data.label_statistics import max_tail_labels_per_batch
    from par_xl.flops import training_flops_per_token
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
    base["knn_layers"] = tuple(FLAGS.knn_layers)
    base["knn_memory_size"] = FLAGS.knn_memory_size
    base["search"] = search
    model = PARTransformerXL(**base, tail_capacities=capacity)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=jit_compile)
    data = tf.data.Dataset.from_tensor_slices((inputs, labels)).repeat()
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=FLAGS.warmup, epochs=1, verbose=0)
    warmup_seconds = time.perf_counter() - start
    rates = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
        rates.append(FLAGS.steps * FLAGS.batch_size * FLAGS.seq_len / (time.perf_counter() - start))
    tokens_per_second = median(rates)
    return {
        "tokens_per_second": round(tokens_per_second),
        "ms_per_step": round(1000 * FLAGS.batch_size * FLAGS.seq_len / tokens_per_second, 2),
        "runs_tokens_per_second": [round(r) for r in rates],
        "compile_and_warmup_seconds": round(warmup_seconds, 1),
        # For a single path: the expected FLOPs at the choice probabilities of the timed steps
        # (still uniform here, as at the start of a search).
        "flops_per_token": training_flops_per_token(model, FLAGS.seq_len, FLAGS.batch_size),
        "parameters": model.count_params(),
        "tail_capacities": capacity,
    }


def main(_):
    import tensorflow as tf

    searches = ["fixed"] if FLAGS.architecture else FLAGS.searches
    results = {
        f"{search}_{mode}": measure(mode == "xla", search if search != "fixed" else "all_branches")
        for search in searches
        for mode in FLAGS.modes
    }
    peak = matmul_peak_gflops()
    for result in results.values():
        achieved = result["tokens_per_second"] * result["flops_per_token"] / 1e9
        result["achieved_gflops"] = round(achieved, 1)
        result["utilization_of_peak"] = round(achieved / peak, 3)
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
    for search in searches:
        if {f"{search}_xla", f"{search}_no_xla"} <= results.keys():
            xla, no_xla = results[f"{search}_xla"], results[f"{search}_no_xla"]
            report[f"{search}_xla_speedup"] = round(
                xla["tokens_per_second"] / no_xla["tokens_per_second"], 2
            )
    for mode in FLAGS.modes:
        if {f"all_branches_{mode}", f"single_path_{mode}"} <= results.keys():
            single, every = results[f"single_path_{mode}"], results[f"all_branches_{mode}"]
            report[f"single_path_speedup_{mode}"] = round(
                single["tokens_per_second"] / every["tokens_per_second"], 2
            )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
