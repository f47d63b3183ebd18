r"""The main job (`make train`, runs/base) beside the original's published table; prints JSON.

    python benchmarks/main_job.py [--run_dir=runs/base] [--markdown]

The original's README reports a GPU run of the same configuration (20 epochs, 56.5k steps):
train and valid perplexity, the latter the mean over batches of exp(batch loss), and wall time
at 2.7k, 8.5k, 14.1k, 28.3k, 48.1k and 56.5k steps. `base_model.sh` evaluates par-xl's run at
the same steps (`--eval_steps`); its 20 epochs end at step 53,060 (its own tokenization of
WikiText-2), which stands beside 56.5k. For each row, par-xl's valid perplexity in the
original's definition (`perplexity_batch_mean`), per token (exp of the mean token loss) and per
WikiText word (comparable across tokenizers), its train perplexity (exp of the mean training
loss over the `--log_every` steps before), and its training time (`run_events.training_seconds`).
Everything is read from the run's TensorBoard events, so a run still training gives the rows
it has reached.

Per-token perplexities of two tokenizers do not compare; per word they do. The original's rows
are converted with its own tokenizer's count on WikiText-2 valid: its `wiki2_12k.model` (lowercase
12k unigram, built as `../shared/ORIGINAL-BASELINE.md` says), each line encoded as its
`DataManager` does, gives 292,265 tokens for WikiText's 217,646 words, so word perplexity =
ppl ** (292,265 / 217,646). Its figure is a batch mean, which overstates the per-token one a
little, so its converted row is, if anything, slightly high.
"""

import json
import math
import os
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from par_xl.reporting.run_events import read_scalars, training_seconds  # noqa: E402
from par_xl.training.runs import read_run_config  # noqa: E402


def define_flags():
    """The script's flags, defined when it runs: importing the module (its tests) defines
    none, so that they cannot collide with other modules' in the same process."""
    flags.DEFINE_string("run_dir", "runs/base", "The run directory: <log_dir>/<model_name>.")
    flags.DEFINE_bool("markdown", False, "Print a Markdown table instead of JSON.")


FLAGS = flags.FLAGS

# The original's README, "Training and Benchmarks": step, train ppl, valid ppl (batch mean), time.
ORIGINAL = [
    (2_700, 163.9, 114.4, "1m 58s"),
    (8_500, 78.56, 62.33, "5m 37s"),
    (14_100, 65.71, 51.88, "9m 28s"),
    (28_300, 48.52, 42.61, "18m 40s"),
    (48_100, 41.85, 39.57, "31m 51s"),
    (56_500, 42.12, 39.41, "37m 14s"),
]
VALID = ("perplexity_batch_mean", "perplexity", "word_perplexity")
ORIGINAL_TOKENS_PER_WORD = 292_265 / 217_646  # its tokenizer on WikiText-2 valid (docstring)


def rows(run_dir):
    """One dict per row of the original's table, with par-xl's figures where the run has them
    (the last row: the run's last evaluation, if it is at its final step)."""
    run = Path(run_dir)
    _, train_config, data = read_run_config(run / "checkpoints")
    tokens_per_step = data["train"]["batch_size"] * data["train"]["seq_len"]
    final_step = data["train"]["steps"] * train_config.epochs
    valid = read_scalars(run / "validation", lambda tag: tag in VALID)
    loss = read_scalars(run / "train", lambda tag: tag == "loss").get("loss", {})
    evaluated = valid.get("perplexity", {})
    table = []
    for i, (step, train_ppl, valid_ppl, time) in enumerate(ORIGINAL):
        ours = step if i < len(ORIGINAL) - 1 else final_step
        row = {"original": {"step": step, "train_perplexity": train_ppl,
                            "valid_perplexity_batch_mean": valid_ppl,
                            "valid_word_perplexity": round(valid_ppl**ORIGINAL_TOKENS_PER_WORD, 1),
                            "time": time}}  # fmt: skip
        if ours in evaluated:
            logged = [s for s in loss if s <= ours]
            row["par_xl"] = {
                "step": ours,
                **{f"valid_{name}": round(valid[name][ours], 2) for name in VALID},
                "train_perplexity": round(math.exp(loss[logged[-1]]), 2) if logged else None,
                "training_minutes": round(training_seconds(run, tokens_per_step, ours) / 60, 1),
            }
        table.append(row)
    return table


def markdown(table):
    lines = [
        "| step (original / par-xl) | original: train ppl | original: valid ppl (batch mean) "
        "| original: valid ppl, word (converted) | original: time (GPU) | par-xl: train ppl "
        "| par-xl: valid ppl (batch mean) | par-xl: valid ppl, token | par-xl: valid ppl, word "
        "| par-xl: training time (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        o, p = row["original"], row.get("par_xl")
        ours = [f"{p['step']:,}", f"{p['train_perplexity']:.2f}",
                f"{p['valid_perplexity_batch_mean']:.2f}", f"{p['valid_perplexity']:.2f}",
                f"**{p['valid_word_perplexity']:.2f}**",
                f"{p['training_minutes'] // 60:.0f} h {p['training_minutes'] % 60:.0f} min"
                ] if p else ["not reached"] + [""] * 5  # fmt: skip
        lines.append(
            f"| {o['step']:,} / {ours[0]} | {o['train_perplexity']} | "
            f"{o['valid_perplexity_batch_mean']} | **{o['valid_word_perplexity']:,}** | "
            f"{o['time']} | " + " | ".join(ours[1:]) + " |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    table = rows(FLAGS.run_dir)
    if FLAGS.markdown:
        print(markdown(table))
    else:
        print(json.dumps({"benchmark": "main_job", "run_dir": FLAGS.run_dir, "rows": table},
                         indent=2))  # fmt: skip


if __name__ == "__main__":
    define_flags()
    app.run(main)
