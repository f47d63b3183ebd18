r"""Long documents (issue 31): bits per byte and loss by position within a document of trained
runs; JSON (and Markdown).

    python benchmarks/long_documents.py --run    # the series below first (hours; resumable)
    python benchmarks/long_documents.py --collect --markdown    # what it has evaluated so far
    python benchmarks/long_documents.py --runs=afafaf=runs/stdlib/afafaf/checkpoints,\
afafmf=runs/stdlib/afafmf/checkpoints --data_directory=data/stdlib_t128_b1 --markdown

For each run (a `train.py` checkpoint directory, `name=directory` or the directory alone) and
split (`--splits`, the run's own valid and test directories unless `--data_directory` holds
others): the split evaluated in order from an empty state, as `train.py --mode=evaluate` does
(`par_xl.training.document_positions`): loss, perplexity and bits per token, per character and
per byte (the split's `bytes_used`: data built since issue 31), the loss by position of the
predicted token within its document (`--edges`: 0-512, 512-2k, 2k-8k, 8k+ tokens; tokens of a
document that began before their batch row are not placed, `cut`), and evaluation tokens per
second after the first batch (which compiles). A fixed architecture with kNN memory (M) is
evaluated with stores of each of `--knn_memory_sizes` (its trained weights, `load_run`) and
each backend of `--knn_backends`: exact (XLA unless --nojit_compile), and ScaNN (on the host,
without XLA) on `--scann_splits` (test), the two compared: perplexity ratio and speed ratio;
a search with M at its own store size. A supernet's choice probabilities say where its
search put each letter.

The series (`--run`, `series()`, `benchmarks/series.py`), sized to the project's 2-core CPU
machine: the Python standard library without its tests (`build_data.py --corpus=python_stdlib`,
T = 128, B = 16, built into `--data_dir` if missing; valid and test again with B = 1 into
`--eval_data_dir`, so that no document is cut into rows), the base width with M = 128 (preset
base128), document boundaries, Adam at 5e-4 after 200 warm-up steps on the one-epoch cosine,
stopped at `STEPS` = 800 steps (1.6 M tokens, 0.46 of an epoch) for every model: AFAFAF;
AFAFMF with a 2,048-entry store; AFAFRF (S 16, W 32, the fixed gate); the single-path search
over `AFIMR`; then AFAFMF trained with a 16,384-entry store. Each run is evaluated (into
`<run>/long_documents.json`) as soon as it has finished, and the report written to `--output`.
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import par_xl.runtime.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from benchmarks.series import Run, run_series  # noqa: E402
from par_xl.files import atomic_write_text  # noqa: E402


def define_flags():
    """The script's flags, defined when it runs: importing the module (its tests) defines
    none, so that they cannot collide with other modules' in the same process."""
    flags.DEFINE_list("runs", None, "Checkpoint directories, each `name=directory` or a directory.")
    flags.DEFINE_list("splits", ["valid", "test"], "Splits to evaluate: valid, test.")
    flags.DEFINE_string(
        "data_directory", None, "Evaluate <data_directory>/<split> instead of the runs' own splits."
    )
    flags.DEFINE_list("knn_backends", ["exact", "scann"], "Backends for runs with kNN memory (M).")
    flags.DEFINE_list("scann_splits", ["test"], "The splits also evaluated with ScaNN.")
    flags.DEFINE_list(
        "knn_memory_sizes",
        ["2048", "16384", "65536"],
        "Store sizes for fixed architectures with M (entries per stream and head).",
    )
    flags.DEFINE_list("edges", ["0", "512", "2048", "8192"], "Starts of the position ranges.")
    flags.DEFINE_bool("jit_compile", True, "XLA for the exact evaluations (ScaNN never uses it).")
    flags.DEFINE_string("output", None, "JSON file to write (default: print only).")
    flags.DEFINE_bool("markdown", False, "Also print the results as markdown tables.")
    flags.DEFINE_bool("run", False, "Run (or resume) the series first, then evaluate its runs.")
    flags.DEFINE_bool("collect", False, "Report the series' runs evaluated so far; run nothing.")
    flags.DEFINE_string("runs_dir", "runs/stdlib", "--run: the directory of the series' runs.")
    flags.DEFINE_string("data_dir", "data/stdlib_t128", "--run: the corpus built at B 16, T 128.")
    flags.DEFINE_string("eval_data_dir", "data/stdlib_t128_b1", "--run: its valid and test at B 1.")


FLAGS = flags.FLAGS


def evaluate_run(name, checkpoint_dir, splits, backends, sizes, edges, jit_compile,
                 data_directory, scann_splits, partial=None):  # fmt: skip
    """One run's figures: its configuration, step, search state, and per split and evaluation
    (`<backend>`, or `<backend> C=<size>` for a fixed architecture with M) the `split_report`,
    with the backends compared at each size (`scann_vs_exact[ C=<size>]`). With `partial` (a
    path), the figures so far are written there after each evaluation, and those found there
    are not evaluated again."""
    from par_xl.cost.parameters import count_parameters
    from par_xl.training.document_positions import split_report
    from par_xl.training.runs import load_run, read_run_config

    model_config, train_config, _ = read_run_config(checkpoint_dir)
    run = {
        "name": name,
        "checkpoint_dir": str(checkpoint_dir),
        "model": {
            key: getattr(model_config, key)
            for key in (
                "architecture",
                "choices",
                "search",
                "num_layers",
                "d_model",
                "mem_len",
                "knn_memory_size",
                "knn_neighbors",
                "recurrent_states",
                "recurrent_block_size",
                "recurrent_gate",
                "document_boundaries",
            )
        },  # fmt: skip
    }
    results = os.path.join(os.path.dirname(os.path.abspath(checkpoint_dir)), "results.json")
    if os.path.isfile(results):
        with open(results) as file:
            run["step"] = json.load(file).get("step")
    searched = model_config.architecture is None
    has_knn = model_config.knn_layers or "M" in (model_config.architecture or "") or (
        searched and "M" in model_config.choices)  # fmt: skip
    backends = backends if has_knn else ["exact"]
    sizes = [None] if searched or not has_knn else sizes
    run["splits"] = {}
    if partial is not None and Path(partial).is_file():
        run["splits"] = json.loads(Path(partial).read_text())["splits"]
    for size in sizes:
        suffix = "" if size is None else f" C={size}"
        for backend in backends:
            todo = [split for split in (splits if backend != "scann" else scann_splits)
                    if backend + suffix not in run["splits"].get(split, {})]  # fmt: skip
            if not todo and "parameters" in run:
                continue
            model = load_run(checkpoint_dir, jit_compile=jit_compile and backend == "exact",
                             knn_backend=backend, knn_memory_size=size)[0]  # fmt: skip
            if "parameters" not in run:
                run["parameters"] = count_parameters(model)
                probabilities, architecture = model.choice_probabilities()
                run["derived_architecture"] = architecture
                run["gates"] = gates(model)
                if searched:  # where the search put each letter
                    run["choice_probabilities"] = [
                        {letter: round(float(p), 4) for letter, p in zip(model.choice_letters, row)}
                        for row in probabilities
                    ]  # fmt: skip
            for split in todo:
                directory = (os.path.join(data_directory, split) if data_directory
                             else getattr(train_config, f"{split}_directory"))  # fmt: skip
                if not directory:
                    continue
                start = time.perf_counter()
                report = split_report(model, directory, edges)
                report.update(
                    wall_seconds=time.perf_counter() - start,
                    directory=str(directory),
                    knn_backend=backend,
                    knn_memory_size=model.knn_memory_size,
                )
                run["splits"].setdefault(split, {})[backend + suffix] = report
                if partial is not None:
                    atomic_write_text(partial, json.dumps(run, indent=2) + "\n")
                print(f"{name} {split} {backend}{suffix}: bits/byte {report['bits_per_byte']}, "
                      f"perplexity {report['perplexity']:.3f}, "
                      f"{report['tokens_per_second'] or 0:,.0f} tokens/s", flush=True)  # fmt: skip
        for by_backend in run["splits"].values():
            exact, scann = by_backend.get("exact" + suffix), by_backend.get("scann" + suffix)
            if exact and scann:
                by_backend["scann_vs_exact" + suffix] = compared(exact, scann)
    return run


def gates(model):
    """What the memories' gates learned, per block: an M block's share of the retrieved
    attention per head (`sigmoid(gate_bias)`, 0 to 1) and an R block's fixed gate, the share of
    the old state kept at an update (mean and range over the channels)."""
    from keras import ops

    result = {}
    for i, block in enumerate(model.blocks):
        if hasattr(block, "memorizing_attention"):
            values = ops.convert_to_numpy(ops.sigmoid(block.memorizing_attention.gate_bias))
            result[f"block_{i}_M_retrieved_share"] = [round(float(v), 4) for v in values]
        layer = getattr(block, "block_recurrent_attention", None)
        if layer is not None and layer.gate == "fixed":
            keep = ops.convert_to_numpy(ops.sigmoid(layer.gate_bias))
            result[f"block_{i}_R_state_kept"] = {
                "mean": round(float(keep.mean()), 4),
                "min": round(float(keep.min()), 4),
                "max": round(float(keep.max()), 4),
            }
    return result


def compared(exact, scann):
    """ScaNN's evaluation against the exact one's: perplexity ratio, bits per byte difference,
    speed ratio."""
    return {
        "perplexity_ratio": scann["perplexity"] / exact["perplexity"],
        "bits_per_byte_difference": (None if exact["bits_per_byte"] is None
                                     else scann["bits_per_byte"] - exact["bits_per_byte"]),
        "speed_ratio": (scann["tokens_per_second"] / exact["tokens_per_second"]
                        if exact["tokens_per_second"] and scann["tokens_per_second"] else None),
    }  # fmt: skip


def markdown(report):
    """The tables: per split, one row per run and backend."""
    lines = []
    edges = None
    for split in report["splits"]:
        rows = []
        for run in report["runs"]:
            for backend, figures in run["splits"].get(split, {}).items():
                if backend.startswith("scann_vs_exact"):
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
    for split in report["splits"]:
        lines += gains(report, split)
    compared_rows = [
        f"| {run['name']} | {split} | {key.removeprefix('scann_vs_exact').strip() or '-'} | "
        f"{c['perplexity_ratio']:.4f} | {c['speed_ratio'] or 0:.2f} |"
        for run in report["runs"] for split, by_backend in run["splits"].items()
        for key, c in by_backend.items() if key.startswith("scann_vs_exact")
    ]  # fmt: skip
    if compared_rows:
        lines += ["\nScaNN against the exact search: perplexity ratio, speed ratio\n",
                  "| run | split | store | perplexity ScaNN / exact | tokens/s ScaNN / exact |",
                  "|---|---|---|---|---|", *compared_rows]  # fmt: skip
    return "\n".join(lines)


def gains(report, split):
    """Markdown lines: each evaluation's gain over the first run's exact one on `split`, in
    percent of its bits (positive: fewer bits), per byte and per range of positions, with the
    tokens of each range."""
    if not report["runs"] or "exact" not in report["runs"][0]["splits"].get(split, {}):
        return []
    reference = report["runs"][0]["splits"][split]["exact"]

    def gain(ours, theirs):
        return "-" if ours is None or theirs is None else f"{100 * (1 - ours / theirs):+.2f}%"

    ranges = [b["range"] for b in reference["by_position"]]
    lines = [f"\n{split}: gain over {report['runs'][0]['name']} (bits per byte, bits per token "
             "by position; tokens per range: "
             + ", ".join(f"{b['range']} {b['tokens']:,}" for b in reference["by_position"])
             + ")\n",
             f"| run | kNN search | bits/byte | {' | '.join(ranges)} |",
             "|" + "---|" * (3 + len(ranges))]  # fmt: skip
    for run in report["runs"][1:]:
        for backend, figures in run["splits"].get(split, {}).items():
            if backend.startswith("scann_vs_exact"):
                continue
            pairs = zip(figures["by_position"], reference["by_position"])
            by_range = " | ".join(gain(b["bits_per_token"], r["bits_per_token"]) for b, r in pairs)
            lines.append(f"| {run['name']} | {backend} | "
                         f"{gain(figures['bits_per_byte'], reference['bits_per_byte'])} | "
                         f"{by_range} |")  # fmt: skip
    return lines


# --run: the series (module docstring), its steps and its common flags.
STEPS = 800
TRAINING = (
    "--preset=base128",
    "--document_boundaries",
    "--epochs=1",
    f"--max_steps={STEPS}",
    "--warmup_steps=200",
    "--max_lr=5e-4",
    "--log_every=50",
    "--checkpoint_every=100",
)
RECURRENT = ("--recurrent_states=16", "--recurrent_block_size=32", "--recurrent_gate=fixed")


def series():
    """The runs of `--run`, in order of importance."""
    return [
        Run("afafaf", ("--architecture=AFAFAF",)),
        Run("afafmf", ("--architecture=AFAFMF", "--knn_memory_size=2048")),
        Run("afafrf", ("--architecture=AFAFRF", *RECURRENT)),
        Run(
            "search_afimr",
            ("--choices=AFIMR", "--search=single_path", "--knn_memory_size=2048", *RECURRENT),
        ),  # fmt: skip
        Run("afafmf_16k", ("--architecture=AFAFMF", "--knn_memory_size=16384")),
    ]


def build(*flags):
    """build_data.py with `flags`; its output beside the data (`<tfrecords_directory>.log`)."""
    directory = next(f.split("=", 1)[1] for f in flags if f.startswith("--tfrecords_directory"))
    Path(directory).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{directory}.log", "a") as log:
        subprocess.run([sys.executable, "build_data.py", *flags], check=True, stdout=log,
                       stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])  # fmt: skip


def prepare_data(data_dir, eval_data_dir):
    """The corpus at B 16 (and its tokenizer), then its valid and test at B 1, if missing."""
    if not Path(data_dir, "test", "metadata.json").is_file():
        build("--corpus=python_stdlib", f"--tfrecords_directory={data_dir}",
              f"--sp_model_prefix={data_dir}/sp12k", "--seq_len=128",
              "--batch_size=16")  # fmt: skip
    for split in ("valid", "test"):
        if not Path(eval_data_dir, split, "metadata.json").is_file():
            build(f"--input_text={data_dir}/text/{split}.txt",
                  f"--tfrecords_directory={eval_data_dir}", f"--sp_model={data_dir}/sp12k.model",
                  "--notrain_tokenizer", "--batch_size=1", "--seq_len=128", "--nolowercase",
                  "--keep_whitespace", "--unk_marker=", "--document_start=#@ file: .+",
                  "--nodocument_start_isolated")  # fmt: skip


def run_all(edges, collect=False):
    """Builds the data if missing, then trains (or resumes) each run of the series and
    evaluates it once it has finished (`<run>/long_documents.json`; each evaluation kept in
    `long_documents.partial.json` until then, so an interrupted one resumes); returns the
    evaluations of the runs that have one. A failed run stops the series. With `collect`, only
    the evaluations there are."""
    data, runs_dir = FLAGS.data_dir, Path(FLAGS.runs_dir)
    if collect:
        paths = (runs_dir / run.name / "long_documents.json" for run in series())
        return [json.loads(path.read_text()) for path in paths if path.is_file()]
    prepare_data(data, FLAGS.eval_data_dir)
    common = [
        f"--train_directory={data}/train",
        f"--valid_directory={data}/valid",
        f"--test_directory={data}/test",
        f"--sp_model_prefix={data}/sp12k",
        *TRAINING,
    ]
    evaluations = []
    for run in series():
        failed = run_series([run], runs_dir, common)
        if failed is not None:
            raise SystemExit(f"long_documents.py: the run {failed} failed; see its .out file.")
        path = runs_dir / run.name / "long_documents.json"
        if not path.is_file():
            partial = path.with_suffix(".partial.json")
            figures = evaluate_run(run.name, runs_dir / run.name / "checkpoints", FLAGS.splits,
                                   FLAGS.knn_backends, [int(c) for c in FLAGS.knn_memory_sizes],
                                   edges, FLAGS.jit_compile, FLAGS.eval_data_dir,
                                   FLAGS.scann_splits, partial)  # fmt: skip
            atomic_write_text(path, json.dumps(figures, indent=2) + "\n")
            partial.unlink(missing_ok=True)
        evaluations.append(json.loads(path.read_text()))
    return evaluations


def main(argv):
    del argv
    if not (FLAGS.runs or FLAGS.run or FLAGS.collect):
        raise app.UsageError("--runs, --run or --collect is required")
    edges = tuple(int(edge) for edge in FLAGS.edges)
    report = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} cores",
        "splits": FLAGS.splits,
        "edges": list(edges),
        "runs": run_all(edges, FLAGS.collect) if FLAGS.run or FLAGS.collect else [],
    }
    for entry in FLAGS.runs or ():
        name, _, directory = entry.rpartition("=")
        directory = directory.rstrip("/")
        name = name or os.path.basename(os.path.dirname(os.path.abspath(directory)))
        report["runs"].append(evaluate_run(
            name, directory, FLAGS.splits, FLAGS.knn_backends,
            [int(c) for c in FLAGS.knn_memory_sizes], edges, FLAGS.jit_compile,
            FLAGS.data_directory, FLAGS.scann_splits))  # fmt: skip
    text = json.dumps(report, indent=2)
    if FLAGS.output:
        atomic_write_text(FLAGS.output, text + "\n")
    else:
        print(text)
    if FLAGS.markdown:
        print(markdown(report))


if __name__ == "__main__":
    define_flags()
    app.run(main)
