"""Long documents: bits per byte and loss by position within a document of trained runs; JSON.

    python benchmarks/long_documents.py --runs=afafaf=runs/stdlib_afafaf/checkpoints,\
afafmf_65k=runs/stdlib_afafmf_65k/checkpoints --output=benchmarks/results/long_documents.json

For each run (a `train.py` checkpoint directory, `name=directory` or the directory alone) and
split (`--splits`, the run's own valid and test directories unless `--data_directory` holds
others): the split evaluated in order from an empty state, as `train.py --mode=evaluate` does
(`par_xl.training.document_positions`): loss, perplexity and bits per token, per character and
per byte (the split's `bytes_used`: data built since issue 31), the loss by position of the
predicted token within its document (`--edges`: 0-512, 512-2k, 2k-8k, 8k+ tokens; tokens of a
document that began before their batch row are not placed, `cut`), and evaluation tokens per
second after the first batch (which compiles). A run with kNN memory (M) is evaluated with each
backend of `--knn_backends`, exact (XLA unless --nojit_compile) and ScaNN (on the host, without
XLA), and the two compared: perplexity ratio and speed ratio. A supernet's choice probabilities
say where its search put each letter (the letters and probabilities per block).

`--markdown` also prints the tables of `benchmarks/results/long_documents.md`.
"""

import json
import os
import platform
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import par_xl.runtime.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from par_xl.files import atomic_write_text  # noqa: E402

flags.DEFINE_list("runs", None, "Checkpoint directories, each `name=directory` or a directory.")
flags.DEFINE_list("splits", ["valid", "test"], "Splits to evaluate: valid, test.")
flags.DEFINE_string(
    "data_directory", None, "Evaluate <data_directory>/<split> instead of the runs' own splits."
)
flags.DEFINE_list("knn_backends", ["exact", "scann"], "Backends for runs with kNN memory (M).")
flags.DEFINE_list("edges", ["0", "512", "2048", "8192"], "Starts of the position ranges.")
flags.DEFINE_bool("jit_compile", True, "XLA for the exact evaluations (ScaNN never uses it).")
flags.DEFINE_string("output", None, "JSON file to write (default: print only).")
flags.DEFINE_bool("markdown", False, "Also print the results as markdown tables.")
FLAGS = flags.FLAGS


def evaluate_run(name, checkpoint_dir, splits, backends, edges, jit_compile, data_directory):
    """One run's figures: its configuration, step, search state, and per split and backend the
    `split_report`, with the backends compared."""
    import numpy as np

    from par_xl.training.document_positions import split_report
    from par_xl.training.runs import load_run, read_run_config

    model_config, train_config, _ = read_run_config(checkpoint_dir)
    run = {
        "name": name,
        "checkpoint_dir": str(checkpoint_dir),
        "model": {key: getattr(model_config, key) for key in (
            "architecture", "choices", "search", "num_layers", "d_model", "mem_len",
            "knn_memory_size", "knn_neighbors", "recurrent_states", "recurrent_block_size",
            "recurrent_gate", "document_boundaries")},  # fmt: skip
    }
    results = os.path.join(os.path.dirname(os.path.abspath(checkpoint_dir)), "results.json")
    if os.path.isfile(results):
        with open(results) as file:
            run["step"] = json.load(file).get("step")
    has_knn = model_config.knn_layers or "M" in (model_config.architecture or "") or (
        model_config.architecture is None and "M" in model_config.choices)  # fmt: skip
    backends = backends if has_knn else ["exact"]
    run["splits"] = {}
    for backend in backends:
        model = load_run(checkpoint_dir, jit_compile=jit_compile and backend == "exact",
                         knn_backend=backend)[0]  # fmt: skip
        if "parameters" not in run:
            run["parameters"] = int(sum(np.prod(w.shape) for w in model.trainable_weights))
            probabilities, architecture = model.choice_probabilities()
            run["derived_architecture"] = architecture
            if model_config.architecture is None:  # a search: where it put each letter
                letters = model.choice_letters
                run["choice_probabilities"] = [
                    {letter: round(float(p), 4) for letter, p in zip(letters, row)}
                    for row in probabilities
                ]
        for split in splits:
            directory = (os.path.join(data_directory, split) if data_directory
                         else getattr(train_config, f"{split}_directory"))  # fmt: skip
            if not directory:
                continue
            start = time.perf_counter()
            report = split_report(model, directory, edges)
            report["wall_seconds"] = time.perf_counter() - start
            report["directory"] = str(directory)
            run["splits"].setdefault(split, {})[backend] = report
            print(f"{name} {split} {backend}: bits/byte {report['bits_per_byte']}, "
                  f"perplexity {report['perplexity']:.3f}, "
                  f"{report['tokens_per_second'] or 0:,.0f} tokens/s", flush=True)  # fmt: skip
    for by_backend in run["splits"].values():
        if {"exact", "scann"} <= set(by_backend):
            exact, scann = by_backend["exact"], by_backend["scann"]
            by_backend["scann_vs_exact"] = {
                "perplexity_ratio": scann["perplexity"] / exact["perplexity"],
                "bits_per_byte_difference": (
                    None if exact["bits_per_byte"] is None
                    else scann["bits_per_byte"] - exact["bits_per_byte"]),
                "speed_ratio": (scann["tokens_per_second"] / exact["tokens_per_second"]
                                if exact["tokens_per_second"] and scann["tokens_per_second"]
                                else None),
            }  # fmt: skip
    return run


def markdown(report):
    """The tables: per split, one row per run and backend."""
    lines = []
    edges = None
    for split in report["splits"]:
        rows = []
        for run in report["runs"]:
            for backend, figures in run["splits"].get(split, {}).items():
                if backend == "scann_vs_exact":
                    continue
                edges = [b["range"] for b in figures["by_position"]]
                positions = " | ".join(
                    "-" if b["bits_per_token"] is None else f"{b['bits_per_token']:.3f}"
                    for b in figures["by_position"]
                )
                bpb = figures["bits_per_byte"]
                rows.append(
                    f"| {run['name']} | {run['derived_architecture']} | {backend} | "
                    f"{'-' if bpb is None else f'{bpb:.4f}'} | {figures['perplexity']:.3f} | "
                    f"{positions} | {figures['tokens_per_second'] or 0:,.0f} |"
                )
        if rows:
            lines += [f"\n{split}: bits per byte, per-token perplexity, bits per token by "
                      "position in the document, evaluation tokens/s\n",
                      f"| run | architecture | kNN search | bits/byte | perplexity | "
                      f"{' | '.join(edges)} | tokens/s |",
                      "|" + "---|" * (6 + len(edges)), *rows]  # fmt: skip
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.runs:
        raise app.UsageError("--runs is required")
    edges = tuple(int(edge) for edge in FLAGS.edges)
    report = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} cores",
        "splits": FLAGS.splits,
        "edges": list(edges),
        "runs": [],
    }
    for entry in FLAGS.runs:
        name, _, directory = entry.rpartition("=")
        directory = directory.rstrip("/")
        name = name or os.path.basename(os.path.dirname(os.path.abspath(directory)))
        report["runs"].append(evaluate_run(name, directory, FLAGS.splits, FLAGS.knn_backends,
                                           edges, FLAGS.jit_compile, FLAGS.data_directory))
    text = json.dumps(report, indent=2)
    if FLAGS.output:
        atomic_write_text(FLAGS.output, text + "\n")
    else:
        print(text)
    if FLAGS.markdown:
        print(markdown(report))


if __name__ == "__main__":
    app.run(main)
