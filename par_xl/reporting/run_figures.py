"""A finished training run's figures, read back from its directory: what it trained, for how
many steps and how long, and how good it is. The comparisons of several runs
(`benchmarks/search_mechanics.py`, `benchmarks/par_claim.py`) read each run here.
"""

import json
from pathlib import Path

from par_xl.reporting.run_events import training_seconds
from par_xl.training.runs import read_run_config

QUALITY = ("perplexity", "word_perplexity", "bits_per_character")


def run_figures(run):
    """`{architecture, search, derived, steps, seconds, init_from, valid, test}` of the run
    directory `run` (one with a results.json):

        architecture    its letters, or "supernet" for a search;
        search          a supernet's search (all_branches, single_path), else None;
        derived         a supernet's argmax architecture at the end, else None;
        steps           the steps it trained;
        seconds         its training time (steps x ms/step of its log, evaluations excluded);
                        None for a run whose records kept no training events;
        init_from       the checkpoints it started from (a fine-tune), else None;
        valid, test     perplexity per token and per word, bits per character, of the splits
                        it was evaluated on (a supernet's: its argmax or expected branches).
    """
    run = Path(run)
    results = json.loads((run / "results.json").read_text())
    model_config, train_config, data = read_run_config(run / "checkpoints")
    tokens_per_step = data["train"]["batch_size"] * data["train"]["seq_len"]
    figures = {
        "architecture": model_config.architecture or "supernet",
        "search": model_config.search if model_config.architecture is None else None,
        "derived": results["architecture"] if model_config.architecture is None else None,
        "steps": results["step"],
        "seconds": round(training_seconds(run, tokens_per_step))
        if (run / "train").is_dir() else None,
        "init_from": train_config.init_from,
    }
    for split in ("valid", "test"):
        if split in results:
            figures[split] = {k: round(results[split][k], 3) for k in QUALITY}
    return figures
