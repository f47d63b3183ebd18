r"""The search-mechanics runs side by side (issue 28): when the search moves, what it derives,
what that costs and how good it is after fine-tuning; prints JSON (or Markdown).

    python benchmarks/search_mechanics.py --run    # the series below first (hours; resumable)
    python benchmarks/search_mechanics.py --runs_dir=runs/t128 \
        --latency_table=runs/t128/latency_base128.json [--inference=inference.json] [--markdown]

The series (`--run`, `series()`, `benchmarks/series.py`): the base width at T = M = 128 (preset
base128, data built with `--seq_len=128` in `--data_dir`), 4 epochs per search with the weights'
warm-up and the architecture's start at step 1,000; the latency table first
(`latency_table.py`); for each search setting, single path and all branches: the architecture
optimizer's defaults; with a latency cost (hinge, target 0.84x the standard model, weight 1;
`s_sp_cost` ran on 2026-12-03 with 0.7x the blocks' latency, before the cost counted the whole
model, about 0.85x the whole on the tables of 2026-12-04);
joint updates with the weights' optimizer (par-xl before the architecture optimizer); a
bilevel fraction of 0.2. Then each derived architecture fine-tuned for 4 epochs from its
supernet, and the standard AFAFAF trained from scratch for 8 epochs: equal total steps.
In order of importance, which the first three runs (`s_sp_cost`, `std_AFAFAF`,
`ft_s_sp_cost`; their latency target was a fraction of the blocks' latency, before the cost
counted the whole model) set: the bound of the goal, the fastest one-attention models
trained from scratch like the standard (`bound_AFFFFF`; `bound_FFAFFF`, last) and with the
gated feed-forward (`bound_AGGGGG`: G was 3.2% better than F after 20 epochs at the base shape,
`benchmarks/results/block_types.md`, at F's cost); the cost search without identity
(`s_sp_cost_AF`, `--choices=AF`, PAR's trade, attention for feed-forward, where the first cost
search paid with identity blocks), fine-tuned; then the cost-free searches, single path and
all branches (do they agree?); LEAP's bounds (`bound_LFLFLF`, no softmax attention, and
`bound_ALFFFF`: whether L, 1.41x in `LFLFLF`, keeps enough of attention's quality to reach the
goal where one A block does not); the other settings, their fine-tunes. The cost target, 0.84x
the whole standard model, is the latency table's price of a model with one attention block
(AFFFFF 0.818, FFFFFF 0.727, AAFFFF 0.909 at T = M = 128 on the machine of 2026-12-04): the
goal's 1.25x needs one (measured: one-attention models evaluate at 1.32-1.39x, two-attention
ones under 1.25x), and a lower target would push every block to F.

Each finished run's records go to `--archive_dir`, committed, so that the series goes on in a
later session on another machine (`benchmarks/series.py`); the latency table lives there too.

Reads every finished run, under `--runs_dir` or in `--archive_dir`: a search (a supernet), a
fine-tune of a derived architecture (`ft_<search>`, trained with `--init_from` the search) or a
model trained from scratch. For a search:
    moved_at        the first logged step at which some block's choice probabilities are more
                    than `--moved` from uniform (1/K each), and the argmax architecture there;
    probabilities   each block's final probabilities, registry letters;
    derived         the argmax architecture at the end, its latency (the table's forward ms,
                    summed over blocks) and FLOPs per token as multiples of the standard
                    AFAF... model's;
    seconds         the training time (steps x ms/step of the log, evaluations excluded).
For every run its valid and test perplexity per token and per word, and for a fine-tune the
total steps and seconds of search plus fine-tune. With `--inference` (the JSON of
`benchmarks/inference.py --models <derived...>,AFAFAF --reference AFAFAF --shapes 128x128`),
each derived architecture's measured evaluation tokens/s and its speed-up over AFAFAF.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.series import Run, finished_runs, run_series  # noqa: E402
from par_xl.models.rules import standard_architecture  # noqa: E402
from par_xl.reporting.run_figures import run_figures  # noqa: E402
from par_xl.reporting.search_picture import NoSearchHistory, read_search_history  # noqa: E402
from par_xl.training.runs import read_run_config  # noqa: E402

ARCHIVE = "benchmarks/results/search_mechanics_runs"  # the finished runs' records, committed


def define_flags():
    """The script's flags, defined when it runs: importing the module (its tests) defines
    none, so that they cannot collide with train.py's in the same process."""
    flags.DEFINE_string("runs_dir", "runs/t128", "The directory holding the run directories.")
    flags.DEFINE_string("archive_dir", ARCHIVE,
                        "The committed records of the finished runs (benchmarks/series.py).")
    flags.DEFINE_string("latency_table", f"{ARCHIVE}/latency_base128.json",
                        "latency_table.py's JSON at the runs' shape (--run measures it if "
                        "missing).")  # fmt: skip
    flags.DEFINE_bool("run", False, "Run (or resume) the series of runs first.")
    flags.DEFINE_string("data_dir", "data/tfrecords_t128", "--run: the T = 128 splits.")
    flags.DEFINE_string("sp_model_prefix", "data/sp12k", "--run: their SentencePiece model.")
    flags.DEFINE_string("inference", None,
                        "benchmarks/inference.py's JSON for the derived models.")
    flags.DEFINE_float("moved", 0.05, "How far from uniform a probability must be to have moved.")
    flags.DEFINE_bool("markdown", False, "Print a Markdown table instead of JSON.")


FLAGS = flags.FLAGS


def series(latency_table):
    """The runs of `--run`, in order of importance (module docstring)."""
    cost = ("--cost=latency", f"--latency_table={latency_table}", "--cost_form=hinge",
            "--cost_target=0.84", "--cost_weight=1.0")  # fmt: skip
    settings = {"cost": cost, "arch": (), "joint": ("--arch_optimizer=none",),
                "frac": ("--arch_fraction=0.2",)}  # fmt: skip
    kinds = {"sp": ("--search=single_path",), "ab": ()}
    searches = {f"s_{kind}_{name}": Run(f"s_{kind}_{name}", (*flag, "--epochs=4", *extra))
                for kind, flag in kinds.items() for name, extra in settings.items()}  # fmt: skip
    searches["s_sp_cost_AF"] = Run("s_sp_cost_AF", ("--search=single_path", "--choices=AF",
                                                    "--epochs=4", *cost))  # fmt: skip
    fixed = {f"{kind}_{letters}": Run(f"{kind}_{letters}", (f"--architecture={letters}",
                                                            "--epochs=8"))
             for kind, letters in (("std", "AFAFAF"), ("bound", "AFFFFF"), ("bound", "AGGGGG"),
                                   ("bound", "LFLFLF"), ("bound", "ALFFFF"),
                                   ("bound", "FFAFFF"))}  # fmt: skip
    tuned = {f"ft_{name}": Run(f"ft_{name}", ("--epochs=4",), after=name) for name in searches}
    order = ("s_sp_cost", "std_AFAFAF", "ft_s_sp_cost", "bound_AFFFFF", "bound_AGGGGG",
             "s_sp_cost_AF", "ft_s_sp_cost_AF",
             # whether the two searches agree without a cost, LEAP's bounds, the other settings
             "s_sp_arch", "s_ab_arch", "bound_LFLFLF", "bound_ALFFFF", "s_sp_frac",
             "s_sp_joint", "s_ab_cost", "s_ab_frac",
             "s_ab_joint", "ft_s_sp_arch", "ft_s_ab_arch", "ft_s_sp_frac", "ft_s_sp_joint",
             "ft_s_ab_cost", "ft_s_ab_frac", "ft_s_ab_joint", "bound_FFAFFF")  # fmt: skip
    return [{**searches, **fixed, **tuned}[name] for name in order]


def run_all():
    """Measures the latency table if missing, then runs the series; a failed run stops it."""
    table = Path(FLAGS.latency_table)
    if not table.is_file():
        command = [sys.executable, "latency_table.py", "--preset=base128", "--seq_len=128",
                   f"--output={table}"]  # fmt: skip
        table.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).parents[1])
    common = [f"--train_directory={FLAGS.data_dir}/train",
              f"--valid_directory={FLAGS.data_dir}/valid",
              f"--test_directory={FLAGS.data_dir}/test",
              f"--sp_model_prefix={FLAGS.sp_model_prefix}",
              "--preset=base128", "--warmup_steps=1000", "--log_every=50",
              "--checkpoint_every=500"]  # fmt: skip
    failed = run_series(series(table), FLAGS.runs_dir, common, FLAGS.archive_dir)
    if failed is not None:
        raise SystemExit(f"search_mechanics.py: the run {failed} failed; see its .out file.")


def search_figures(run, moved):
    """When the search moved, its final probabilities and architecture, from its events."""
    history = read_search_history(run)
    offered = history.probabilities[0] > 0  # (L, C): the letters each block offers
    uniform = offered / offered.sum(axis=1, keepdims=True)
    distance = abs(history.probabilities - uniform).max(axis=(1, 2))  # (S,)
    first = next((i for i, d in enumerate(distance) if d > moved), None)
    return {
        "moved_at": None if first is None else int(history.steps[first]),
        "architecture_when_moved": None if first is None else "".join(
            history.letters[j] for j in history.probabilities[first].argmax(axis=1)),
        "probabilities": {
            f"block_{i}": {c: round(float(p), 3) for c, p in zip(history.letters, row) if p > 0}
            for i, row in enumerate(history.probabilities[-1])
        },
        "derived": history.architecture,
    }  # fmt: skip


def relative_costs(architecture, table, flops):
    """`architecture`'s latency (the table's) and FLOPs as multiples of the standard model's,
    whole models (the cost every architecture pays included)."""
    standard = standard_architecture(len(architecture))
    result = {}
    costs = {"latency": None if table is None else (table["forward_ms"],
                                                    table["fixed_ms"]["forward_ms"]),
             "flops": flops}  # fmt: skip
    for name, pair in costs.items():
        if pair is not None:
            per_letter, fixed = pair
            ratio = (fixed + sum(per_letter[c] for c in architecture)) / (
                fixed + sum(per_letter[c] for c in standard))
            result[f"{name}_x_standard"] = round(ratio, 3)
    return result


def settings(run):
    """A search's settings: the architecture optimizer's and the cost's."""
    _, train_config, _ = read_run_config(run / "checkpoints")
    names = ("arch_optimizer", "arch_lr", "arch_start_step", "arch_fraction", "cost",
             "cost_weight", "cost_target", "cost_form")  # fmt: skip
    values = {name: getattr(train_config, name) for name in names}
    return {**values, "arch_start_step": train_config.architecture_start}


def flops_table(run):
    """FLOPs per token of each letter and of the rest of the model at the run's shape (from
    its model): `flops_costs`'s pair."""
    from par_xl.cost.objective import flops_costs
    from par_xl.models import PARTransformerXL

    model_config, _, data = read_run_config(run / "checkpoints")
    model = PARTransformerXL(**model_config.model_kwargs())
    batch, segment = data["train"]["batch_size"], data["train"]["seq_len"]
    model.build((batch, segment))
    return flops_costs(model, segment, model_config.mem_len, batch)


def collect(runs_dir, table, inference, moved, archive=None):
    """`{run name: figures}` of every finished run under `runs_dir` or archived in `archive`
    (module docstring)."""
    report, flops = {}, None
    for run in finished_runs(runs_dir, archive):
        figures = run_figures(run)
        if figures["architecture"] == "supernet":
            figures["settings"] = settings(run)
            flops = flops or flops_table(run)
            try:
                figures.update(search_figures(run, moved))
            except NoSearchHistory:
                pass
            figures.update(relative_costs(figures["derived"], table, flops))
        report[run.name] = figures
    for name, figures in report.items():
        search = report.get(name.removeprefix("ft_")) if name.startswith("ft_") else None
        if search is not None:
            figures["total_steps"] = search["steps"] + figures["steps"]
            seconds = (search["seconds"], figures["seconds"])
            figures["total_seconds"] = None if None in seconds else sum(seconds)
    if inference is not None:
        for shape in (v for k, v in inference.items() if k.startswith("T")):  # e.g. T128_M128
            speedups = shape.get("evaluation_speedup_over_AFAFAF", {})
            for figures in report.values():
                architecture = figures.get("derived") or figures["architecture"]
                if architecture in shape.get("evaluation", {}):
                    figures["eval_tokens_per_second"] = shape["evaluation"][architecture][
                        "tokens_per_second"]
                    figures["eval_speedup_over_AFAFAF"] = speedups.get(architecture, 1.0)
    return report


def short_settings(figures):
    """A search's settings in a few words (the cost ones only with a cost), or the
    architecture of a fixed model."""
    settings = figures.get("settings")
    if settings is None:
        return figures["architecture"] + (" (fine-tuned)" if figures["init_from"] else "")
    if settings["arch_optimizer"] == "none":
        words = ["joint (weights' optimizer)"]
    else:
        words = [f"{settings['arch_optimizer']} {settings['arch_lr']:g} from "
                 f"{settings['arch_start_step']}"]  # fmt: skip
    if settings["arch_fraction"]:
        words.append(f"fraction {settings['arch_fraction']:g}")
    if settings["cost"] != "none":
        words.append(f"{settings['cost']} {settings['cost_form']} w {settings['cost_weight']:g} "
                     f"T {settings['cost_target']:g}")  # fmt: skip
    return ", ".join(words)


def _or_dash(value):
    return "-" if value is None else value


def markdown(report):
    lines = ["| run | search | settings | moved at | derived | latency / FLOPs x std | eval tok/s "
             "x std | valid word ppl | test word ppl | steps | seconds |",
             "|" + "---|" * 11]  # fmt: skip
    for name, f in report.items():
        ppl = [f.get(split, {}).get("word_perplexity") for split in ("valid", "test")]
        lines.append(
            f"| {name} | {f.get('search') or '-'} | {short_settings(f)}"
            + f" | {f.get('moved_at', '-')} | {f['derived'] or f['architecture']} | "
            f"{f.get('latency_x_standard', '-')} / {f.get('flops_x_standard', '-')} | "
            f"{f.get('eval_speedup_over_AFAFAF', '-')} | "
            + " | ".join("-" if p is None else f"{p:.1f}" for p in ppl)
            + f" | {f.get('total_steps', f['steps'])} | "
            f"{_or_dash(f.get('total_seconds', f['seconds']))} |"
        )
    return "\n".join(lines)


def main(argv):
    if FLAGS.run:
        run_all()
    table = json.loads(Path(FLAGS.latency_table).read_text()) if FLAGS.latency_table else None
    inference = json.loads(Path(FLAGS.inference).read_text()) if FLAGS.inference else None
    report = collect(FLAGS.runs_dir, table, inference, FLAGS.moved, FLAGS.archive_dir)
    print(markdown(report) if FLAGS.markdown else json.dumps(report, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
