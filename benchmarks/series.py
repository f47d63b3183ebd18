"""A series of train.py runs for a long measurement, in order: a run resumes where it stopped
(`--resume` once it has a checkpoint) and is skipped once it has its results.json, so the
series can be stopped and started again at any point, in another session. A run may train
the architecture another run derived (`after`): `--architecture=<its results' architecture>`,
fine-tuned from that run's weights (`--init_from=<its checkpoints>`) or from scratch. Each
run's output goes to `<log_dir>/<name>.out`, the series' progress to `<log_dir>/series.log`.

A series outlives its machine through an archive (`archive`, a directory the repository
commits): each finished run's records, what the comparisons read (results.json, config.json,
the TensorBoard events; not the weights), are copied there, and a run found there is restored
into `log_dir` instead of trained again. Only the run in progress is lost with a machine (and a
fine-tune of a search whose weights were).
"""

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from par_xl.files import temporary_name

REPO = Path(__file__).resolve().parents[1]
# A run's records, relative to its directory: what `par_xl.reporting` reads back.
RECORDS = ("results.json", "checkpoints/config.json", "train/events.out.tfevents.*",
           "validation/events.out.tfevents.*")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Run:
    """One train.py run of a series: its `--model_name`, its own flags, the search whose
    derived architecture it trains (None: none; a cost search's is the most probable one
    within its target, `CostObjective.within_target`, else the argmax), and whether it trains
    that from scratch instead of fine-tuning the search's weights."""

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
        results = json.loads((source / "results.json").read_text())
        # a cost search's derived model is the most probable one within its target
        architecture = results.get("architecture_within_target") or results["architecture"]
        flags.append(f"--architecture={architecture}")
        if not run.from_scratch:
            flags.append(f"--init_from={source}/checkpoints")
    if any((Path(log_dir) / run.name / "checkpoints").glob("*.weights.h5")):
        flags.append("--resume")
    return flags


def archive_run(run_dir, archive):
    """Copies the records of the finished run `run_dir` to `<archive>/<its name>`, replacing
    any there; written under a temporary name and renamed when complete."""
    run_dir, target = Path(run_dir), Path(archive) / Path(run_dir).name
    partial = temporary_name(target)
    for pattern in RECORDS:
        for path in run_dir.glob(pattern):
            destination = partial / path.relative_to(run_dir)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def restore_run(name, archive, log_dir):
    """Copies the archived records of the run `name` into `<log_dir>/<name>` (it then counts as
    finished); False where the archive has none."""
    source = Path(archive) / name
    if not (source / "results.json").is_file():
        return False
    shutil.copytree(source, Path(log_dir) / name, dirs_exist_ok=True)
    return True


def finished_runs(log_dir, archive=None):
    """The directories of the finished runs (those with a results.json) in `log_dir` and, for
    the names it lacks, in `archive`; sorted by name."""
    runs = {p.parent.name: p.parent for p in Path(log_dir).glob("*/results.json")}
    if archive is not None:
        for path in Path(archive).glob("*/results.json"):
            runs.setdefault(path.parent.name, path.parent)
    return [runs[name] for name in sorted(runs)]


def run_series(runs, log_dir, common, archive=None, python=sys.executable):
    """Runs the `runs` that have no results yet, in order, each `train.py *common *flags`,
    archiving each finished one in `archive` (None: no archive; a finished one found missing
    there too) and restoring those archived there; stops at the first that fails (an interrupt
    included) and returns its name, else None."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for run in runs:
        if (log_dir / run.name / "results.json").is_file():
            if archive is not None and not (Path(archive) / run.name / "results.json").is_file():
                archive_run(log_dir / run.name, archive)  # stopped between results and archive
                _note(log_dir, f"archived {run.name}")
            continue
        if archive is not None and restore_run(run.name, archive, log_dir):
            _note(log_dir, f"restored {run.name} from {archive}")
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
        if archive is not None:
            archive_run(log_dir / run.name, archive)
    return None


def _note(log_dir, message):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(Path(log_dir) / "series.log", "a") as log:
        log.write(f"{stamp} {message}\n")
