r"""par-xl's train.py against the original PAR Transformer-XL, side by side; prints JSON.

  .venv/bin/python benchmarks/original_side_by_side.py \
      --original_dir=/tmp/original --original_python=/tmp/original-venv/bin/python \
      [--runs=3] [--warmup=100] [--steps=500] [--log_every=50]

The original is never part of par-xl: this script takes the path of a checkout of it and the
Python of a separate environment that runs it. `../shared/ORIGINAL-BASELINE.md` says how to
prepare both: fetch the public repository Jmkernes/PAR-Transformer-XL into a scratch sparse
checkout, make its four small edits there, give it a Python 3.11 venv with tensorflow,
tensorflow-text and tf-keras 2.20, sentencepiece and matplotlib, point its
`data/wikitext-2/*.txt` at WikiText-2 and build its data with its own `build_data.py` (its
TFRecords in `data/wikitext2_bsz32_seqlen32_tfrecords_{train,valid,test}`, its tokenizer
`tokenizer/wiki2_12k`). This script checks that they are there and builds nothing of it.

par-xl's data (`<data_dir>/tfrecords`, `<data_dir>/sp12k`, the layout of create_tfrecords.sh)
is reused when built, else built from `--wikitext2_dir` with build_data.py's defaults (the
original's settings: lowercase unigram SentencePiece 12000, batches 32 x 32). Each program thus
reads its own build of the same WikiText-2 text.

Both run the configuration of the original's base_model.sh, each as a fresh process (a fresh
run directory, nothing restored), `--runs` rounds interleaved (original, par-xl, original, ...),
`--warmup` + `--steps` training steps each. Measured: whole training-loop time per step
over the `--steps` steps after warm-up (data, step, metrics, logging and summaries included).
- The original: a driver written to the run directory imports its `train` module with its
  per-step progress-bar function (`utils.print_bar`, called once per loop iteration after the
  step's loss has been read back) replaced by a timestamp, and stops the loop after the last
  timed step. Its own code runs unchanged.
- par-xl: `train.py --max_steps`, the ms/step of its `training_log.log` interval lines after
  warm-up (`--log_every` must divide both step counts).
Also per process: peak resident memory (`os.wait4`) and wall time (start-up, data, validation
included). Reported: tokens/s of every run, medians, par-xl / original of the medians and of
each round, par-xl's training FLOPs per token (`par_xl/cost/flops.py`, with the tail capacity its
train.py computes) and the utilization of this machine's fp32 matmul peak, measured before and
after the rounds (the higher is used). The original does the same matmuls for the same
configuration (plus tails scored for every position), so its figure uses par-xl's count too.
"""

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import median, utilization  # noqa: E402  (numpy only, no TensorFlow)

REPO = Path(__file__).resolve().parents[1]
BASELINE_DOC = "../shared/ORIGINAL-BASELINE.md"

# The original's base_model.sh; par-xl's train.py takes the same flag names.
BASE_CONFIG = {
    "d_model": 128,
    "num_heads": 4,
    "d_ffn": 512,
    "num_layers": 6,
    "mem_len": 16,
    "dropout_rate": 0.1,
    "cutoffs": [250, 2500],
    "proj_factor": 4,
    "straight_through": False,
    "max_lr": 1e-4,
    "warmup_steps": 4000,
    "tau_start": 1.0,
    "tau_end": 0.1,
    "epochs": 20,
    "tau_is_trainable": False,
    "opt_name": "adam",
}
ORIGINAL_DATA = "data/wikitext2_bsz32_seqlen32_tfrecords_{}"
ORIGINAL_TOKENIZER = "tokenizer/wiki2_12k"
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")

flags.DEFINE_string("original_dir", None, f"Checkout of the original, prepared as {BASELINE_DOC}.")
flags.DEFINE_string("original_python", None, "Python of the original's venv (tf-keras 2.20).")
flags.DEFINE_string("data_dir", str(REPO / "data"), "par-xl data: <dir>/tfrecords, <dir>/sp12k.")
flags.DEFINE_string(
    "wikitext2_dir",
    os.environ.get("WIKITEXT2_DIR", str(REPO.parent / "shared" / "data" / "wikitext-2")),
    "WikiText-2 text, to build par-xl's data when --data_dir has none (default $WIKITEXT2_DIR).",
)
flags.DEFINE_list(
    "searches",
    ["all_branches", "single_path"],
    "par-xl's supernet searches to time (train.py --search), each in every round.",
)
flags.DEFINE_enum(
    "arch_optimizer", "adam", ["adam", "sgd", "none"], "par-xl's --arch_optimizer (issue 28)."
)
flags.DEFINE_integer(
    "arch_start_step",
    0,
    "par-xl's --arch_start_step: 0 (default) updates the choice logits with the architecture "
    "optimizer on every timed step, so that its cost is in the figures.",
    lower_bound=0,
)
flags.DEFINE_integer("runs", 3, "Rounds; each runs the original, then par-xl.", lower_bound=1)
flags.DEFINE_integer("warmup", 100, "Untimed steps first (tracing, caches).", lower_bound=1)
flags.DEFINE_integer("steps", 500, "Timed steps per run.", lower_bound=1)
flags.DEFINE_integer("log_every", 50, "par-xl's log interval; divides both step counts.")
flags.DEFINE_integer("batch_size", 32, "B of both programs' data (checked against par-xl's).")
flags.DEFINE_integer("seq_len", 32, "T of both programs' data (checked against par-xl's).")
flags.DEFINE_string(
    "work_dir", None, "Keep the run directories there (default: a temp dir, removed after)."
)
FLAGS = flags.FLAGS

# Runs the original's training loop unchanged, with its per-step progress bar replaced by a
# timestamp; stops after warmup + steps iterations and writes the timestamps as JSON.
ORIGINAL_DRIVER = """\
import json, sys, time
original_dir, out_path, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, original_dir)
import utils
stamps, losses, epoch_steps = [], [], []

class Done(Exception):
    pass

def stamp(step, tot, diff, loss):
    stamps.append(time.perf_counter())
    losses.append(float(loss))
    epoch_steps[:] = [int(tot)]
    if len(stamps) >= total:
        raise Done

utils.print_bar = stamp
import tensorflow as tf
import tf_keras
import train
from absl import app

def main(argv):
    try:
        train.main(argv)
    except Done:
        pass
    with open(out_path, "w") as f:
        json.dump({"stamps": stamps, "losses": losses, "steps_per_epoch": epoch_steps,
                   "tensorflow": tf.__version__, "tf_keras": tf_keras.__version__}, f)

app.run(main, argv=[sys.argv[0]] + sys.argv[4:])
"""

# par-xl's FLOPs per token and the matmul peak, in a process of their own (none of TensorFlow
# in this one while the runs are timed).
PROBE = """\
import dataclasses, json, sys
from benchmarks.common import matmul_peak_gflops
result = {"matmul_peak_gflops": matmul_peak_gflops()}
if len(sys.argv) > 1:
    import tensorflow as tf
    from par_xl.configs import PRESETS, ModelConfig
    from par_xl.data import load_dataset, read_metadata
    from par_xl.cost.flops import training_flops_per_token
    from par_xl.data.label_statistics import max_tail_labels_per_batch
    from par_xl.models import PARTransformerXL
    train_dir, flag_values = sys.argv[1], json.loads(sys.argv[2])
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in flag_values.items()}
    overrides = {k: v for k, v in overrides.items() if k in fields}
    meta = read_metadata(train_dir)
    config = dataclasses.replace(PRESETS["base"], **overrides, vocab_size=meta.vocab_size)
    labels = (y for _, y in load_dataset(train_dir).as_numpy_iterator())
    capacity = max_tail_labels_per_batch(labels, config.cutoffs, config.vocab_size)
    model = PARTransformerXL(**config.model_kwargs(), tail_capacities=capacity)
    model.build((meta.batch_size, meta.seq_len))
    flops = training_flops_per_token(model, meta.seq_len, meta.batch_size)
    result.update(flops_per_token=flops, tail_capacity=capacity, tensorflow=tf.__version__)
print(json.dumps(result))
"""

PAR_XL_LINE = re.compile(r"\bstep (\d+) \|.* \| ([\d.]+) ms/step \|")


def command_flags(config):
    """`--name=value` flags; a list value repeats the flag (absl multi flags)."""
    out = []
    for name, value in config.items():
        for item in value if isinstance(value, list) else [value]:
            out.append(f"--{name}={item}")
    return out


def run_process(command, directory, env=None):
    """Runs `command` in `directory`, output to `<directory>/output.log`; returns (wall seconds,
    peak RSS MiB). Raises with the output's tail when it fails."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "output.log"
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=directory, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(
            f"exit status {process.returncode}: {shlex.join(map(str, command))}\n{tail}"
        )
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def run_original(directory, total_steps):
    root = Path(FLAGS.original_dir).resolve()
    driver = directory / "original_driver.py"
    directory.mkdir(parents=True)
    driver.write_text(ORIGINAL_DRIVER)
    out = directory / "timing.json"
    data = {split: root / ORIGINAL_DATA.format(split) for split in ("train", "valid", "test")}
    command = [
        FLAGS.original_python,
        str(driver),
        str(root),
        str(out),
        str(total_steps),
        *[f"--{split}_directory={path}" for split, path in data.items()],
        f"--sp_model_prefix={root / ORIGINAL_TOKENIZER}",
        "--model_name=side_by_side",
        *command_flags(BASE_CONFIG),
    ]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}  # its variables are not tracked by Keras 3
    wall, rss = run_process(command, directory, env)
    timing = json.loads(out.read_text())
    stamps = timing["stamps"]
    if len(stamps) != total_steps:
        raise RuntimeError(f"the original ran {len(stamps)} steps, not {total_steps}")
    seconds = (stamps[-1] - stamps[FLAGS.warmup - 1]) / FLAGS.steps
    return {
        "ms_per_step": 1000 * seconds,
        "wall_s": wall,
        "peak_rss_mib": rss,
        "train_loss": timing["losses"][-1],
        "steps_per_epoch": timing["steps_per_epoch"][0],
        "versions": {"tensorflow": timing["tensorflow"], "tf_keras": timing["tf_keras"]},
    }


def run_par_xl(directory, total_steps, data, search):
    command = [
        sys.executable,
        str(REPO / "train.py"),
        f"--train_directory={data / 'tfrecords' / 'train'}",
        f"--valid_directory={data / 'tfrecords' / 'valid'}",
        f"--sp_model_prefix={data / 'sp12k'}",
        f"--log_dir={directory}",
        "--model_name=side_by_side",
        "--noresume",
        f"--max_steps={total_steps}",
        f"--log_every={FLAGS.log_every}",
        *command_flags(BASE_CONFIG),
        f"--search={search}",
        f"--arch_optimizer={FLAGS.arch_optimizer}",
        f"--arch_start_step={FLAGS.arch_start_step}",
    ]
    wall, rss = run_process(command, directory)
    log_text = (directory / "side_by_side" / "training_log.log").read_text()
    intervals = {int(s): float(ms) for s, ms in PAR_XL_LINE.findall(log_text)}
    timed = [ms for step, ms in intervals.items() if step > FLAGS.warmup]
    if len(timed) != FLAGS.steps // FLAGS.log_every:
        raise RuntimeError(
            f"expected {FLAGS.steps // FLAGS.log_every} timed log lines, read "
            f"{len(timed)} in {directory}"
        )
    return {"ms_per_step": sum(timed) / len(timed), "wall_s": wall, "peak_rss_mib": rss}


def par_xl_data():
    """par-xl's data directory, built first when it is not complete."""
    data = Path(FLAGS.data_dir).resolve()
    splits = [data / "tfrecords" / split / "metadata.json" for split in ("train", "valid")]
    if not all(path.is_file() for path in splits):
        subprocess.run(
            [
                sys.executable,
                str(REPO / "build_data.py"),
                f"--input_text={FLAGS.wikitext2_dir}",
                f"--tfrecords_directory={data / 'tfrecords'}",
                f"--sp_model_prefix={data / 'sp12k'}",
                "--overwrite",
            ],
            check=True,
            cwd=REPO,
            stdout=sys.stderr,  # stdout is the report's
        )
    for path in splits:
        meta = json.loads(path.read_text())
        shape = (meta["batch_size"], meta["seq_len"])
        if shape != (FLAGS.batch_size, FLAGS.seq_len):
            raise app.UsageError(
                f"{path}: batches {shape}, expected "
                f"{(FLAGS.batch_size, FLAGS.seq_len)} (--batch_size, --seq_len)"
            )
    return data


def check_original():
    if not FLAGS.original_dir or not FLAGS.original_python:
        raise app.UsageError(f"--original_dir and --original_python are required ({BASELINE_DOC}).")
    root = Path(FLAGS.original_dir)
    needed = [root / "train.py", root / (ORIGINAL_TOKENIZER + ".model")]
    needed += [root / ORIGINAL_DATA.format(split) for split in ("train", "valid", "test")]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise app.UsageError(
            f"the original checkout lacks {', '.join(missing)}: prepare it and "
            f"build its data as {BASELINE_DOC} says."
        )


def probe(*args):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], check=True, cwd=REPO, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine():
    """CPU model, cores this process may use, the CPU flags that matter for fp32/bf16 matmuls."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    cpu_flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    present = set(cpu_flags.group(1).split()) if cpu_flags else set()
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    memory = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in present],
        "memory_gib": round(int(memory.group(1)) / 2**20, 1) if memory else None,
        "python": platform.python_version(),
    }


def summary(runs, tokens_per_step, flops_per_token, peak):
    rates = [tokens_per_step / (run["ms_per_step"] / 1000) for run in runs]
    rate = median(rates)
    return {
        "tokens_per_second": round(rate),
        "ms_per_step": round(1000 * tokens_per_step / rate, 2),
        "runs_tokens_per_second": [round(r) for r in rates],
        "runs_wall_s": [round(run["wall_s"], 1) for run in runs],
        "peak_rss_mib": round(median([run["peak_rss_mib"] for run in runs])),
        "runs_peak_rss_mib": [round(run["peak_rss_mib"]) for run in runs],
        **utilization(rate, flops_per_token, peak),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    check_original()
    if FLAGS.warmup % FLAGS.log_every or FLAGS.steps % FLAGS.log_every:
        raise app.UsageError("--log_every must divide --warmup and --steps.")
    data = par_xl_data()
    total = FLAGS.warmup + FLAGS.steps
    train_directory = str(data / "tfrecords" / "train")
    before = probe(train_directory, json.dumps(BASE_CONFIG))
    flops = {
        search: probe(train_directory, json.dumps({**BASE_CONFIG, "search": search}))[
            "flops_per_token"
        ]
        for search in FLAGS.searches
    }
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        work = Path(FLAGS.work_dir or tmp).resolve()
        original, par_xl = [], {search: [] for search in FLAGS.searches}
        for i in range(FLAGS.runs):
            original.append(run_original(work / f"round{i}" / "original", total))
            for search in FLAGS.searches:
                directory = work / f"round{i}" / f"par_xl_{search}"
                par_xl[search].append(run_par_xl(directory, total, data, search))
            timings = ", ".join(f"par-xl {s} {r[-1]['ms_per_step']:.1f}" for s, r in par_xl.items())
            print(
                f"round {i + 1}/{FLAGS.runs} (ms/step): original {original[-1]['ms_per_step']:.1f}"
                f", {timings}",
                file=sys.stderr,
            )
    load_after = os.getloadavg()
    after = probe()
    peak = max(before["matmul_peak_gflops"], after["matmul_peak_gflops"])
    tokens_per_step = FLAGS.batch_size * FLAGS.seq_len
    report = {
        "benchmark": "original_side_by_side",
        "machine": machine(),
        "config": {**BASE_CONFIG, "batch_size": FLAGS.batch_size, "seq_len": FLAGS.seq_len},
        "par_xl_architecture_optimizer": {
            "arch_optimizer": FLAGS.arch_optimizer,
            "arch_start_step": FLAGS.arch_start_step,
        },
        "warmup": FLAGS.warmup,
        "timed_steps": FLAGS.steps,
        "runs": FLAGS.runs,
        "original": {
            # At the all-branches supernet's FLOP count: the original computes every branch.
            **summary(original, tokens_per_step, before["flops_per_token"], peak),
            "steps_per_epoch": original[0]["steps_per_epoch"],
            "train_loss_running_mean": [round(run["train_loss"], 4) for run in original],
            **original[0]["versions"],
        },
        "par_xl": {
            search: {
                **summary(runs, tokens_per_step, flops[search], peak),
                # A single-path step's FLOPs follow the choice probabilities: these are at
                # initialization (uniform), where the timed steps still are.
                "flops_per_token": round(flops[search]),
            }
            for search, runs in par_xl.items()
        },
        "tail_capacity": before["tail_capacity"],
        "tensorflow": before["tensorflow"],
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_gflops_before_after": [
            round(before["matmul_peak_gflops"], 1),
            round(after["matmul_peak_gflops"], 1),
        ],
        "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "work_dir": FLAGS.work_dir,
    }
    original_rate = report["original"]["tokens_per_second"]
    report["ratio_par_xl_over_original"] = {
        search: round(result["tokens_per_second"] / original_rate, 3)
        for search, result in report["par_xl"].items()
    }
    report["round_ratios"] = {
        search: [round(o["ms_per_step"] / p["ms_per_step"], 3) for o, p in zip(original, runs)]
        for search, runs in par_xl.items()
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
