"""The exported SavedModel against generate.py's library path: generation latency and scoring
throughput, in one run; prints JSON.

    python benchmarks/export.py [--architecture AAAAAA] [--batch_sizes 1,8]
        [--new_tokens 32,256] [--repeats 5] [--sp_model data/sp12k.model]

The model: the base shape (vocab 12000, d_model 128, 4 heads, d_ffn 512, 6 blocks, M 16,
cutoffs 250/2500) as the fixed `--architecture` (default AAAAAA, what the main job's search
derived), untrained (speed does not depend on the weights), or a run's (`--checkpoint_dir`).
It is exported (`par_xl.serving.saved_model`, XLA on, as export.py does) and loaded back with
`tf.saved_model.load` in this process.

Generation: B copies of `--prompt`, `--new_tokens` sampled tokens (plain sampling: T 1, no
top-k / top-p), the text returned. Through the SavedModel: its `generate` signature (tokenizer,
prompt reading, sampling loop and decoding, all in the graph). Through the library:
generate.py's path, `tokenizer.encode` + `par_xl.models.generation.generate` +
`decode_lines`, with XLA (`generate.py --jit_compile`) and without (generate.py's default).
Scoring: `--score_texts` texts of ~`--score_tokens` tokens each in one call, through the
SavedModel's `score` and through `TextModel.score` (XLA). Every configuration is compiled and
run once before timing; then the paths take turns in each of `--repeats` rounds, figures are
medians of the rounds, ratios medians of the per-round ratios (each round's listed). FLOPs
per token (`par_xl.cost.flops`: a sampled token; a scored one, as evaluation) and the
utilization of this machine's fp32 matmul peak, measured in the same run before and after (the
higher of the two).
"""

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import par_xl.runtime.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from benchmarks.common import (  # noqa: E402
    matmul_peak_gflops,
    median,
    rounds,
    seconds,
    utilization,
)
from par_xl.configs import PRESETS  # noqa: E402

flags.DEFINE_string("architecture", "AAAAAA", "The fixed architecture of the untrained model.")
flags.DEFINE_string("checkpoint_dir", None, "A run to export instead of an untrained model.")
flags.DEFINE_string("sp_model", "data/sp12k.model", "SentencePiece model (untrained model).")
flags.DEFINE_list("batch_sizes", ["1", "8"], "Generation batch sizes B.")
flags.DEFINE_list("new_tokens", ["32", "256"], "Tokens sampled per call.")
flags.DEFINE_string(
    "prompt", "the meaning of life is a question that people have asked for", "The prompt."
)
flags.DEFINE_integer("score_texts", 8, "Texts per `score` call.")
flags.DEFINE_integer("score_tokens", 512, "Tokens per scored text (about).")
flags.DEFINE_integer("repeats", 5, "Timed rounds.")
FLAGS = flags.FLAGS

# Scored text: WikiText-like sentences, repeated to length.
PARAGRAPH = (
    "the game 's development began in 2010 , carrying over a large portion of the work done on "
    "its predecessor . while it retained the standard features of the series , it also "
    "underwent multiple adjustments , such as making the game more forgiving for series "
    "newcomers . the music was composed by a veteran of the series , who worked on it together "
    "with a second composer ."
)


def text_model():
    """The model to export: a run's, or the untrained base shape as `--architecture`."""
    import keras

    from par_xl.data import load_tokenizer
    from par_xl.models import PARTransformerXL
    from par_xl.serving.text_model import TextModel

    if FLAGS.checkpoint_dir:
        return TextModel.from_run(FLAGS.checkpoint_dir, knn_backend="exact")
    keras.utils.set_random_seed(0)
    base = PRESETS["base"]
    config = {**base.model_kwargs(), "architecture": FLAGS.architecture}
    model = PARTransformerXL(**config)
    model.build((1, 32))
    return TextModel(model, load_tokenizer(FLAGS.sp_model), Path(FLAGS.sp_model), 32)


def generation(loaded, model, batch, new_tokens):
    """`{path: seconds of each round}` for B prompts and N new tokens."""
    import tensorflow as tf

    from par_xl.data import decode_lines
    from par_xl.models.generation import generate

    prompts = [FLAGS.prompt] * batch
    signature = loaded.signatures["generate"]
    inputs = dict(
        prompt=tf.constant(prompts), max_new_tokens=tf.constant(new_tokens),
        temperature=tf.constant(1.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
        seed=tf.constant(0, tf.int64),
    )  # fmt: skip

    def library(jit_compile):
        def run():
            ids = [model.tokenizer.encode(p) for p in prompts]
            new, _ = generate(model.model, ids, new_tokens, seed=0, jit_compile=jit_compile)
            return [decode_lines(model.tokenizer, [*p, *n.tolist()]) for p, n in zip(ids, new)]

        return run

    paths = {
        "saved_model": lambda: signature(**inputs)["text"].numpy(),
        "library_xla": library(True),
        "library_no_xla": library(False),
    }
    warmup = {name: round(seconds(path), 1) for name, path in paths.items()}
    return rounds(paths, FLAGS.repeats), warmup


def scoring(loaded, model):
    import tensorflow as tf

    words = PARAGRAPH.split()
    tokens_per_word = len(model.tokenizer.encode(PARAGRAPH)) / len(words)
    length = round(FLAGS.score_tokens / tokens_per_word)
    texts = [" ".join(words[(i + j) % len(words)] for j in range(length))
             for i in range(FLAGS.score_texts)]  # fmt: skip
    tokens = sum(result["tokens"] for result in model.score(texts))
    signature = loaded.signatures["score"]
    paths = {
        "saved_model": lambda: signature(text=tf.constant(texts))["total_log_prob"].numpy(),
        "library_xla": lambda: model.score(texts, jit_compile=True),
    }
    for path in paths.values():
        path()
    return tokens, rounds(paths, FLAGS.repeats)


def main(argv):
    del argv
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the SentencePiece ops of the loaded SavedModel)

    from par_xl.cost.flops import evaluation_flops_per_token, generation_flops_per_token
    from par_xl.serving.saved_model import export_saved_model

    load_start = os.getloadavg()[0]
    peak_before = matmul_peak_gflops()
    model = text_model()
    with tempfile.TemporaryDirectory(prefix="par_xl_export_") as directory:
        output = Path(directory) / "model"
        export_seconds = seconds(lambda: export_saved_model(model, output))
        start = time.perf_counter()
        loaded = tf.saved_model.load(str(output))
        load_seconds = time.perf_counter() - start
        results = {
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_average_start": load_start, "tensorflow": tf.__version__,
            "architecture": model.model.architecture, "export_seconds": round(export_seconds, 1),
            "load_seconds": round(load_seconds, 1), "generation": [],
        }  # fmt: skip
        for batch in map(int, FLAGS.batch_sizes):
            for new_tokens in map(int, FLAGS.new_tokens):
                times, warmup = generation(loaded, model, batch, new_tokens)
                row = {"batch": batch, "new_tokens": new_tokens, "warmup_seconds": warmup}
                for name, runs in times.items():
                    row[f"{name}_ms"] = round(1000 * median(runs), 1)
                    row[f"{name}_tokens_per_second"] = round(batch * new_tokens / median(runs))
                for name in ("library_xla", "library_no_xla"):
                    ratios = [a / b for a, b in zip(times[name], times["saved_model"])]
                    row[f"saved_model_speed_over_{name}"] = round(median(ratios), 3)
                    row[f"saved_model_speed_over_{name}_rounds"] = [round(r, 2) for r in ratios]
                results["generation"].append(row)
                print(json.dumps(row), file=sys.stderr)
        tokens, times = scoring(loaded, model)
        results["score"] = {
            "texts": FLAGS.score_texts, "tokens": tokens,
            **{f"{name}_tokens_per_second": round(tokens / median(runs))
               for name, runs in times.items()},
            "saved_model_speed_over_library": round(median(
                [a / b for a, b in zip(times["library_xla"], times["saved_model"])]), 3),
        }  # fmt: skip
        results["load_average_end"] = os.getloadavg()[0]
    peak_after = matmul_peak_gflops()
    peak = max(peak_before, peak_after)  # the less disturbed of the two
    results["matmul_peak_gflops_before_after"] = [round(peak_before, 1), round(peak_after, 1)]
    flops = {
        "generation": generation_flops_per_token(model.model),
        "score": evaluation_flops_per_token(model.model, model.segment_length, FLAGS.score_texts),
    }
    results["flops_per_token"] = {name: round(value) for name, value in flops.items()}
    for row in results["generation"]:
        for name in ("saved_model", "library_xla", "library_no_xla"):
            figures = utilization(row[f"{name}_tokens_per_second"], flops["generation"], peak, 4)
            row[f"{name}_utilization_of_peak"] = figures["utilization_of_peak"]
    score = results["score"]
    for name in ("saved_model", "library_xla"):
        figures = utilization(score[f"{name}_tokens_per_second"], flops["score"], peak, 4)
        score[f"{name}_utilization_of_peak"] = figures["utilization_of_peak"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
