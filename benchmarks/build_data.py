"""Times the whole WikiText-2 data build (SentencePiece training included); prints JSON.

  .venv/bin/python benchmarks/build_data.py --input_text=data/wikitext-2 --runs=3

Builds with the original defaults (unigram 12000, lowercase, batch 32 x 32, 4 train shards) into
temporary directories. `runs` in-process builds give the phase breakdown (seconds: read, sp_train,
encode, write = batching and writing, total) and their median; `import_s` is the wall time of a
fresh process that only imports the pipeline (TensorFlow included); `cli_wall_s` is the wall time
of one `build_data.py` run as a user starts it.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as build_data.py does, before sentencepiece

from absl import app, flags  # noqa: E402

from par_xl.data import BuildConfig, build_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

flags.DEFINE_string(
    "input_text",
    os.environ.get("WIKITEXT2_DIR", str(REPO / "data" / "wikitext-2")),
    "WikiText-2 directory (train.txt, valid.txt, test.txt); default $WIKITEXT2_DIR.",
)
flags.DEFINE_integer("runs", 3, "In-process builds to time; the median is reported.")
flags.DEFINE_bool("cli", True, "Also time one build_data.py run in a fresh process.")
FLAGS = flags.FLAGS


def wall_seconds(command: list[str]) -> float:
    begin = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return round(time.perf_counter() - begin, 3)


def main(argv: list[str]) -> None:
    del argv
    runs = []
    for _ in range(FLAGS.runs):
        with tempfile.TemporaryDirectory() as tmp:
            config = BuildConfig(
                input_text=FLAGS.input_text,
                tfrecords_directory=f"{tmp}/tfrecords",
                sp_model_prefix=f"{tmp}/sp12k",
            )
            report = build_data(config)
            runs.append({phase: round(s, 3) for phase, s in report.seconds.items()})
    result = {
        "input_text": FLAGS.input_text,
        "cpus": len(os.sched_getaffinity(0)),
        "import_s": wall_seconds(
            [sys.executable, "-c", "from par_xl.data import build_data, load_dataset"]
        ),
        "runs": runs,
        "median": {phase: statistics.median(r[phase] for r in runs) for phase in runs[0]},
        "steps": {split: m.steps for split, m in report.splits.items()},
        "tokens_dropped": {split: m.tokens_dropped for split, m in report.splits.items()},
        "id_order_vs_frequency": report.frequency_order._asdict(),
    }
    if FLAGS.cli:
        with tempfile.TemporaryDirectory() as tmp:
            result["cli_wall_s"] = wall_seconds(
                [
                    sys.executable,
                    str(REPO / "build_data.py"),
                    f"--input_text={FLAGS.input_text}",
                    f"--tfrecords_directory={tmp}/tfrecords",
                    f"--sp_model_prefix={tmp}/sp12k",
                ]
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
