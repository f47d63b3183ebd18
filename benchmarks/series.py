"""A series of train.py runs for a long measurement, in order: a run resumes where it stopped
(`--resume` once it has a checkpoint) and is skipped once it has its results.json, so the
series can be stopped and started again at any point, in another session. A run may train
the architecture another run derived (`after`): `--architecture=<its results' architecture>`,
fine-tuned from that run's weights (`--init_from=<its checkpoints>`) or from scratch. Each
run's output goes to `<log_dir>/<name>.out`, the series' progress to `<log_dir>/series.log`.
"""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Run:
    """One train.py run of a series: its `--model_name`, its own flags, the search whose
    derived architecture it trains (None: none), and whether it trains that from scratch
    instead of fine-tuning the search's weights."""

    name: str
    flags: tuple[str, ...] = ()
    after: str | None = None
    from_scratch: bool = False


def run_flags(run, log_dir):
    """The flags of `run` beyond the series' common ones, or None while the search it
    fine-tunes has no results yet."""
    flags = [f"--log_dir={log_dir}", f"--model_name={run.name}", *run.flags]
    if run.after is not None:
        source = Path(log_dir) / run.after
        if not (source / "results.json").is_file():
            return None
        architecture = json.loads((source / "results.json").read_text())["architecture"]
        flags.append(f"--architecture={architecture}")
        if not run.from_scratch:
            flags.append(f"--init_from={source}/checkpoints")
    if any((Path(log_dir) / run.name / "checkpoints").glob("*.weights.h5")):
        flags.append("--resume")
    return flags


def run_series(runs, log_dir, common, python=sys.executable):
    """Runs the `runs` that have no results yet, in order, each `train.py *common *flags`;
    stops at the first that fails (an interrupt included) and returns its name, else None."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        if (log_dir / run.name / "results.json").is_file():
            continue
        flags = run_flags(run, log_dir)
        if flags is None:
            _note(log_dir, f"skip {run.name}: {run.after} has no results yet")
            continue
        _note(log_dir, f"start {run.name} {' '.join(flags)}")
        with open(log_dir / f"{run.name}.out", "a") as out:
            command = [python, str(REPO / "train.py"), *common, *flags]
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        code = code.returncode
        _note(log_dir, f"end {run.name} exit {code}")
        if code != 0:
            return run.name
    return None


def _note(log_dir, message):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(Path(log_dir) / "series.log", "a") as log:
        log.write(f"{stamp} {message}\n")
