r"""PAR's claim at the paper's depth (issue 29): a 32-block search against PAR's own rules, the
sandwich ordering and a standard Transformer-XL on WikiText-2; writes the comparison table
(JSON and Markdown), the goal check and the cost-quality front (`docs/par_claim_front.png`).

    python benchmarks/par_claim.py --run      # the series below first (~6 h; resumable)
    python benchmarks/par_claim.py            # the table, the goal and the front of the runs

The series (`--run`, `series()`, run by `benchmarks/series.py`): preset par32 (32 blocks of the
base width, T = M = 64, data built with `build_data.py --seq_len=64` in `--data_dir`), every
model EPOCHS = 2 epochs of 1,326 steps with the same schedules (warm-up WARMUP = 500 steps,
the architecture's start at its end), in this order:
    standard            AFAF...: Transformer-XL's 16 attention and 16 feed-forward blocks;
    search_sp_latency   the single-path search, the architecture optimizer's defaults, with a
                        latency cost (hinge, target COST_TARGET x the standard's forward latency
                        in `--latency_table`, measured first at the preset's shape if missing,
                        weight 1);
    derived_sp_latency  the architecture it derives, trained from scratch;
    par_rule_p5         PAR's rule, p = 5: 6 attention blocks spread over the first two-thirds;
    search_sp           the single-path search without a cost;
    derived_sp          its architecture, from scratch;
    late_rule_p5        the control: p5's 6 attention blocks spread over the last third;
    sandwich_k6         the sandwich ordering of the standard's 16 + 16 sublayers with k = 6,
                        the coefficient Press et al. found best on WikiText-103's development
                        set for n = 16 layers (32 sublayers, this depth; their 17.96 test
                        model); their advice is to tune k on the development set, which this
                        budget cannot;
    par_rule_p3         PAR's rule, p = 3: 11 attention blocks in the first two-thirds;
    ft_sp_latency, ft_sp   with `--fine_tune`: each derived architecture fine-tuned from its
                        search's weights for EPOCHS more epochs (twice the others' steps: shown,
                        outside the equal-steps comparison), and
    standard_long       the standard model trained for 2 x EPOCHS epochs: their reference.

The budget, about 6 hours of this 2-core machine for the nine runs, sets the epochs (2,652
steps a model; the warm-up about a fifth of them). Training FLOPs per step
(`par_xl.cost.flops`, batch 32 x 64): standard 57.2 G, par_rule_p5 55.1 G, all attention
60.7 G, the single-path search 38.9 G at uniform probabilities. The base supernet's 9.7 G per
step train in 118 ms on the idle machine (benchmarks/results/training_speed.md): 82 GFLOP/s,
so the standard model needs 0.70 s a step and 15.5 min an epoch. Budgeting every run at the
standard's rate or above (the searches and the derived models at all-attention's, 16.4 min):
2 x 15.5 (standard, sandwich) + 2 x 14.9 (p5, late) + 15.1 (p3) + 2 x 15.5 (searches) +
2 x 16.4 (derived) = 140 min an epoch, 4.7 h for two, 4.9 h with the evaluations (valid after
each epoch, test at the end: about 140 steps' worth a run). Attention runs at about half
feed-forward's FLOP rate (an attention block takes 2.2x a feed-forward block's evaluation time
for 1.13x its FLOPs; `par_xl/configs.py`'s par32), which puts the nine runs at 5.5-7 h; the
least needed run (p3) is last, so the series can stop before it if the standard model's
logged ms/step says so. Three epochs would take 7-10 h. `--fine_tune` adds two runs of two
epochs (about 1 h): only if time allows. The step times measured here (`nice -n 5`, the
machine under a load of 10-12, 3 interleaved rounds of 4 steps, `model.fit` without XLA as
train.py runs on a CPU) agree only in order: the standard model 3.9x the base supernet's step
(FLOPs: 5.9x), T = M = 128 3.6x the standard's T = 64 step (per epoch 1.8x: T = 64 affords
twice the steps).

Each finished run's records go to `--archive_dir`, committed, so that the series goes on in a
later session on another machine (`benchmarks/series.py`); the latency table and the inference
JSON live there too. The table and its Markdown go to
`benchmarks/results/par_claim_table.{json,md}`; what they say is in
`benchmarks/results/par_claim.md`.

Without `--run`, reads every finished run, under `--runs_dir` or in `--archive_dir`, and the
JSON of one interleaved `benchmarks/inference.py` run of all their architectures (`--inference`;
measured there, with `--measure_inference` or after `--run`, if missing): per model its valid
and test perplexity per token and per word, bits per character, parameters, MFLOP per token
(evaluation), evaluation tokens/s (batch 32) and batch-1 generation tokens/s, steps and the
training time of search plus training. The goal: a searched or rule-built model within GOAL's
1% of the standard's valid word perplexity and at least 1.3x its evaluation tokens/s; and each
searched model on or above the front of the fixed architectures (the rules, the sandwich and
the standard; `par_xl.reporting.cost_quality_front`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.series import REPO, Run, finished_runs, run_series  # noqa: E402
from par_xl.configs import PRESETS  # noqa: E402
from par_xl.files import atomic_write_text  # noqa: E402
from par_xl.models.rules import standard_architecture  # noqa: E402
from par_xl.reporting.cost_quality_front import dominated_by, draw_front, front  # noqa: E402
from par_xl.reporting.run_figures import run_figures  # noqa: E402

PRESET, SEQ_LEN = "par32", 64  # the preset's T = M
EPOCHS, WARMUP = 2, 500
COST_TARGET = 0.65
# The fixed architectures: run name -> --architecture.
FIXED = {"standard": "standard", "par_rule_p5": "par_rule:p=5", "late_rule_p5": "late_rule:p=5",
         "sandwich_k6": "sandwich:k=6", "par_rule_p3": "par_rule:p=3"}  # fmt: skip
SEARCHES = ("sp_latency", "sp")  # search_<s>, derived_<s> (from scratch), ft_<s>
GOAL = {"speed": 1.3, "word_perplexity": 1.01}  # x the standard's
ARCHIVE = "benchmarks/results/par_claim_runs"  # the finished runs' records, committed


def define_flags():
    """The script's flags, defined when it runs: importing the module (its tests) defines
    none, so that they cannot collide with train.py's in the same process."""
    flags.DEFINE_bool("run", False, "Run (or resume) the series first (module docstring).")
    flags.DEFINE_string("runs_dir", "runs/par32", "The directory holding the run directories.")
    flags.DEFINE_string("archive_dir", ARCHIVE,
                        "The committed records of the finished runs (benchmarks/series.py).")
    flags.DEFINE_string("data_dir", "data/tfrecords_t64", "--run: the splits built with T = 64.")
    flags.DEFINE_string("sp_model_prefix", "data/sp12k", "--run: their SentencePiece model.")
    flags.DEFINE_string("latency_table", f"{ARCHIVE}/latency_par32.json",
                        "latency_table.py's JSON at the preset's shape (--run measures it if "
                        "missing).")  # fmt: skip
    flags.DEFINE_integer("epochs", EPOCHS, "--run: epochs of every run (the docstring's budget).")
    flags.DEFINE_bool("fine_tune", False, "--run: also fine-tune each derived architecture.")
    flags.DEFINE_string("inference", f"{ARCHIVE}/inference.json",
                        "benchmarks/inference.py's JSON of every run's architecture.")
    flags.DEFINE_bool("measure_inference", False, "Measure --inference now (else: after --run).")
    flags.DEFINE_integer("inference_repeats", 3, "benchmarks/inference.py's rounds.")
    flags.DEFINE_string("output", "benchmarks/results/par_claim_table",
                        "The table goes to <output>.json and .md.")  # fmt: skip
    flags.DEFINE_string("figure", "docs/par_claim_front.png", "The cost-quality front's picture.")


FLAGS = flags.FLAGS


def series(epochs, latency_table, fine_tune=False):
    """The runs of `--run`, in order (module docstring); every one trains `epochs` epochs."""
    each = (f"--epochs={epochs}",)
    search = ("--search=single_path", *each)
    cost = ("--cost=latency", f"--latency_table={latency_table}", "--cost_form=hinge",
            f"--cost_target={COST_TARGET}", "--cost_weight=1.0")  # fmt: skip
    fixed = {name: Run(name, (f"--architecture={rule}", *each)) for name, rule in FIXED.items()}
    searches = {"search_sp_latency": Run("search_sp_latency", (*search, *cost)),
                "search_sp": Run("search_sp", search)}  # fmt: skip
    derived = {f"derived_{s}": Run(f"derived_{s}", each, f"search_{s}", from_scratch=True)
               for s in SEARCHES}  # fmt: skip
    order = ("standard", "search_sp_latency", "derived_sp_latency", "par_rule_p5", "search_sp",
             "derived_sp", "late_rule_p5", "sandwich_k6", "par_rule_p3")  # fmt: skip
    runs = [{**fixed, **searches, **derived}[name] for name in order]
    if fine_tune:  # and the standard model for as many steps as a search and its fine-tune
        runs += [Run(f"ft_{s}", each, f"search_{s}") for s in SEARCHES]
        runs.append(Run("standard_long", ("--architecture=standard", f"--epochs={2 * epochs}")))
    return runs


def kind(name):
    """A run's part in the comparison: "search", "searched" (what a search derived, trained
    from scratch), "fixed" (a rule or the standard), "fine-tuned" (a derived architecture
    trained on from its search's weights), "long" (the fine-tunes' reference), or "other"."""
    if name in FIXED:
        return "fixed"
    if name == "standard_long":
        return "long"
    prefix, _, search = name.partition("_")
    if search in SEARCHES:
        return {"search": "search", "derived": "searched", "ft": "fine-tuned"}.get(prefix, "other")
    return "other"


def run_all():
    """Measures the latency table if missing, then runs the series; a failed run stops it."""
    table = Path(FLAGS.latency_table)
    if not table.is_file():
        command = [sys.executable, "latency_table.py", f"--preset={PRESET}",
                   f"--seq_len={SEQ_LEN}", f"--output={table}"]  # fmt: skip
        table.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    common = [f"--train_directory={FLAGS.data_dir}/train",
              f"--valid_directory={FLAGS.data_dir}/valid",
              f"--test_directory={FLAGS.data_dir}/test",
              f"--sp_model_prefix={FLAGS.sp_model_prefix}",
              f"--preset={PRESET}", f"--warmup_steps={WARMUP}", "--log_every=50",
              "--checkpoint_every=500"]  # fmt: skip
    runs = series(FLAGS.epochs, table, FLAGS.fine_tune)
    failed = run_series(runs, FLAGS.runs_dir, common, FLAGS.archive_dir)
    if failed is not None:
        raise SystemExit(f"par_claim.py: the run {failed} failed; see its .out file.")


def measure_inference(table, path):
    """One interleaved `benchmarks/inference.py` run of every architecture of `table` and the
    standard's, the reference; its JSON goes to `path`."""
    reference = standard_architecture(PRESETS[PRESET].num_layers)
    architectures = list(dict.fromkeys([reference, *(r["architecture"] for r in table.values())]))
    command = [sys.executable, "benchmarks/inference.py", f"--preset={PRESET}",
               f"--models={','.join(architectures)}", f"--reference={reference}",
               f"--shapes={SEQ_LEN}x{SEQ_LEN}", f"--repeats={FLAGS.inference_repeats}"]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, done.stdout[done.stdout.index("{"):])


def speed_figures(architecture, inference):
    """A model's parameters, MFLOP per token and speeds in `inference`'s JSON (at the preset's
    shape), or {} where it has none."""
    shape = inference.get(f"T{SEQ_LEN}_M{SEQ_LEN}", {})
    evaluation = shape.get("evaluation", {}).get(architecture)
    if evaluation is None:
        return {}
    speedups = next((v for k, v in shape.items() if k.startswith("evaluation_speedup_over_")),
                    {})  # fmt: skip
    return {
        "parameters": shape["parameters"][architecture],
        "mflop_per_token": round(evaluation["flops_per_token"] / 1e6, 2),
        "eval_tokens_per_second": evaluation["tokens_per_second"],
        "eval_speedup_over_standard": speedups.get(architecture, 1.0),
        "generation_tokens_per_second": shape.get("generation", {}).get(architecture, {}).get(
            "tokens_per_second"),
    }  # fmt: skip


def collect(runs_dir, inference, archive=None):
    """`{run name: row}` of every finished run under `runs_dir` or archived in `archive`
    (module docstring)."""
    table = {}
    for run in finished_runs(runs_dir, archive):
        figures = run_figures(run)
        architecture = figures["derived"] or figures["architecture"]
        table[run.name] = {
            "kind": kind(run.name),
            "architecture": architecture,
            "attention": architecture.count("A"),
            **{k: figures[k] for k in ("steps", "seconds", "valid", "test") if k in figures},
            **speed_figures(architecture, inference),
        }
    for name, row in table.items():
        search = table.get(f"search_{name.partition('_')[2]}")
        own = row["kind"] not in ("searched", "fine-tuned") or search is None
        row["total_steps"] = row["steps"] + (0 if own else search["steps"])
        row["total_seconds"] = row["seconds"] + (0 if own else search["seconds"])
    return table


def points(table, kinds):
    """`{name: (eval tokens/s, valid word perplexity)}` of the rows of `kinds` that have both."""
    return {name: (row["eval_tokens_per_second"], row["valid"]["word_perplexity"])
            for name, row in table.items()
            if row["kind"] in kinds and {"eval_tokens_per_second", "valid"} <= row.keys()}


def goal_check(table):
    """The issue's goal (module docstring) on `table`: which models meet it, the fixed
    architectures' front, and for each searched model the fixed ones that dominate it. Each
    model is measured against the standard trained as long: the fixed and the searched ones
    against "standard", the fine-tunes (a search's steps and as many again) against
    "standard_long"."""
    fixed = points(table, ("fixed",))
    if "standard" not in fixed:
        return {"standard": None, "note": "the standard model has no valid perplexity and speed"}
    comparisons = [(("fixed", "searched"), "standard", fixed)]
    long = points(table, ("long",))
    if "standard_long" in long:
        comparisons.append((("fine-tuned",), "standard_long", long))
    ratios, verdicts = {}, {}
    for kinds, reference, rivals in comparisons:
        speed, perplexity = rivals[reference]
        for name, (s, p) in points(table, kinds).items():
            if name != reference:
                ratios[name] = {"reference": reference,
                                "speed_x_standard": round(s / speed, 3),
                                "word_perplexity_x_standard": round(p / perplexity, 4)}
        for name, point in points(table, kinds[-1:]).items():
            better = dominated_by(point, rivals)
            verdicts[name] = {"dominated_by": better, "on_or_above_fixed_front": not better}
    meets = [name for name, r in ratios.items() if r["speed_x_standard"] >= GOAL["speed"]
             and r["word_perplexity_x_standard"] <= GOAL["word_perplexity"]]  # fmt: skip
    speed, perplexity = fixed["standard"]
    return {
        "goal": GOAL,
        "standard": {"eval_tokens_per_second": speed, "valid_word_perplexity": perplexity},
        "x_standard": ratios,
        "meets_goal": meets,
        "fixed_front": front(fixed),
        "searched": verdicts,
    }


def markdown(table, goal):
    lines = ["| model | kind | architecture | A | valid ppl token / word | test ppl token / word | "
             "test bpc | parameters | MFLOP/token | eval tokens/s (x std) | generation tokens/s "
             "| steps | training h (search + training) |", "|" + "---|" * 13]  # fmt: skip
    for name, row in table.items():
        valid, test = row.get("valid", {}), row.get("test", {})
        lines.append(
            f"| {name} | {row['kind']} | `{row['architecture']}` | {row['attention']} | "
            f"{valid.get('perplexity', '-')} / {valid.get('word_perplexity', '-')} | "
            f"{test.get('perplexity', '-')} / {test.get('word_perplexity', '-')} | "
            f"{test.get('bits_per_character', '-')} | {row.get('parameters', '-')} | "
            f"{row.get('mflop_per_token', '-')} | {row.get('eval_tokens_per_second', '-')} "
            f"({row.get('eval_speedup_over_standard', '-')}) | "
            f"{row.get('generation_tokens_per_second', '-')} | {row['total_steps']} | "
            f"{row['total_seconds'] / 3600:.2f} |"
        )
    if goal.get("standard") is None:
        return "\n".join([*lines, "", f"Goal: not checked: {goal['note']}."])
    lines += ["", f"Goal (>= {GOAL['speed']}x the evaluation tokens/s of the standard trained "
              f"as long, <= {GOAL['word_perplexity']}x its valid word perplexity; the fine-tunes "
              "against standard_long): "
              + (", ".join(goal["meets_goal"]) or "no model meets it") + ".",
              f"Front of the fixed architectures: {', '.join(goal['fixed_front'])}."]  # fmt: skip
    for name, verdict in goal["searched"].items():
        rivals = "it" if goal["x_standard"][name]["reference"] == "standard" else "standard_long"
        where = (f"on or above {rivals}" if verdict["on_or_above_fixed_front"]
                 else f"below {rivals}, dominated by {', '.join(verdict['dominated_by'])}")
        lines.append(f"{name}: {where}.")
    return "\n".join(lines)


def main(argv):
    if FLAGS.run:
        run_all()
    inference_path = Path(FLAGS.inference)
    table = collect(FLAGS.runs_dir, {}, FLAGS.archive_dir)
    if (FLAGS.measure_inference or FLAGS.run and not inference_path.is_file()) and table:
        measure_inference(table, inference_path)
    if inference_path.is_file():
        table = collect(FLAGS.runs_dir, json.loads(inference_path.read_text()), FLAGS.archive_dir)
    goal = goal_check(table)
    report = markdown(table, goal)
    atomic_write_text(f"{FLAGS.output}.json", json.dumps({"runs": table, "goal": goal}, indent=2))
    atomic_write_text(f"{FLAGS.output}.md", report + "\n")
    groups = {"fixed architectures": points(table, ("fixed",)),
              "searched, from scratch": points(table, ("searched",)),
              "twice the steps: fine-tuned, standard_long":
                  points(table, ("fine-tuned", "long"))}  # fmt: skip
    draw_front(groups, FLAGS.figure, ("standard", "standard_long"),
               (GOAL["speed"], GOAL["word_perplexity"]),
               xlabel=f"evaluation tokens/s (batch 32, T = M = {SEQ_LEN})",
               ylabel="valid word perplexity",
               title=f"{PRESET}: cost and quality, WikiText-2")  # fmt: skip
    print(report)


if __name__ == "__main__":
    define_flags()
    app.run(main)
