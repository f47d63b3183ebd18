"""The block types side by side (issue 30): training and evaluation tokens/s and MFLOP per token
of fixed architectures, and the generation cost per token after a short and a long prompt;
prints JSON.

    python benchmarks/block_types.py                    # base shape and T = M = 128
    python benchmarks/block_types.py --parts=train --shapes=512x512 --architectures=AFAFAF,LFLFLF
    python benchmarks/block_types.py --parts=generation --architectures=LFLFLF,AFAFAF
    python benchmarks/block_types.py --smoke            # tiny settings: checks that it runs

Models: fixed architectures of the base preset (vocab 12000, d_model 128, 4 heads, d_ffn 512,
cutoffs 250/2500; `--architectures`, default AFAFAF, the standard Transformer-XL, beside
WFWFWF, LFLFLF and AGAGAG), untrained (speed does not depend on the weights), with `--window`
(W; default the segment length), `--position` (A's) and `--ffn_activation` (G's). Shapes `TxM`:
segment length T and XL memory M (`--batch_size` rows).

Train: `model.fit` steps (the real path: callbacks, progress off) of `--steps` per timed run
(`fit_seconds`: the steps, without the wait at the end of a `fit` call), after an untimed run of
as many (compilation, warm-up); `--jit_compile` as train.py (default
off: its CPU default). Evaluation: `par_xl.training.evaluation.evaluate_batches` (train.py's
validation) over `--eval_tokens` tokens per timed run. Generation: `read_prompt`, then the
timed `sample` loop of `--num_tokens` tokens at batch 1 with XLA, after a prompt of T tokens
(the first shape's) and after one of `--long_prompt` tokens; `--generation_mem_len` 0 (the
default) gives attention a memory of the whole context, so that every model sees all of it:
attention's cost per token then grows with the prompt, LEAP's (its O(1) state) must not
(`long_over_short`).

The models take turns within each of `--repeats` rounds, so that a change of the machine's load
touches all of them; figures are medians of the rounds, speed-ups over `--reference` medians of
the per-round ratios. FLOPs per token (`par_xl.cost.flops`, from the choice registry), the
parameters and the utilization of this machine's fp32 matmul peak (measured in the same run)
come with them.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import par_xl.runtime.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from benchmarks.common import (  # noqa: E402
    fit_seconds,
    matmul_peak_gflops,
    median,
    rounds,
    seconds,
    utilization,
    zipf_tokens,
)
from par_xl.configs import PRESETS  # noqa: E402
from par_xl.cost.parameters import count_parameters  # noqa: E402
from par_xl.layers.gated_feed_forward import FFN_ACTIVATIONS  # noqa: E402
from par_xl.layers.positions import POSITIONS  # noqa: E402

flags.DEFINE_list("architectures", ["AFAFAF", "WFWFWF", "LFLFLF", "AGAGAG"], "Fixed models.")
flags.DEFINE_string("reference", "AFAFAF", "The architecture the speed-ups are measured against.")
flags.DEFINE_list("shapes", ["32x16", "128x128"], "Segment x memory lengths, TxM.")
flags.DEFINE_list("parts", ["train", "evaluation", "generation"], "What to time.")
flags.DEFINE_integer("batch_size", 32, "Rows B of training and evaluation batches.")
flags.DEFINE_integer("window", None, "W of the W blocks (default: the segment length).")
flags.DEFINE_enum("position", "xl", list(POSITIONS), "A's position term.")
flags.DEFINE_enum("ffn_activation", "swiglu", list(FFN_ACTIVATIONS), "G's activation.")
flags.DEFINE_integer("repeats", 5, "Timed rounds; in each, every model runs once.")
flags.DEFINE_integer("steps", 20, "Training steps per timed run.")
flags.DEFINE_bool("jit_compile", False, "Train with XLA (train.py's CPU default: off).")
flags.DEFINE_integer("eval_tokens", 8192, "Tokens per timed evaluation (whole batches).")
flags.DEFINE_integer("num_tokens", 128, "Generated tokens per timed sample.")
flags.DEFINE_integer("long_prompt", 2048, "The long prompt's length in tokens.")
flags.DEFINE_integer(
    "generation_mem_len", 0, "XL memory while sampling (0: the whole context, prompt included)."
)
flags.DEFINE_bool("smoke", False, "Tiny settings (tiny preset, 2 rounds): a check that it runs.")
FLAGS = flags.FLAGS


def speedups(times):
    """Median over rounds of the reference's time / the model's, per other model."""
    if FLAGS.reference not in times:
        return {}
    return {
        name: round(median([a / b for a, b in zip(times[FLAGS.reference], own)]), 2)
        for name, own in times.items()
        if name != FLAGS.reference
    }


def preset():
    return PRESETS["tiny" if FLAGS.smoke else "base"]


def build(architecture, segment, mem_len, capacity=None):
    """A fixed model of the preset built for `(B, T)` batches with memory M."""
    import keras

    from par_xl.models import PARTransformerXL

    keras.utils.set_random_seed(0)
    config = preset().model_kwargs()
    config.update(mem_len=mem_len, architecture=architecture, num_layers=len(architecture),
                  window=FLAGS.window, position=FLAGS.position,
                  ffn_activation=FLAGS.ffn_activation)  # fmt: skip
    model = PARTransformerXL(**config, tail_capacities=capacity)
    model.build((FLAGS.batch_size, segment))
    return model


def batches(segment, count, seed):
    """`(inputs, labels, tail capacities)`: `count` batches of Zipf tokens and the most any
    batch's tails need (as train.py scores them)."""
    from par_xl.data.label_statistics import max_tail_labels_per_batch

    shape = (count, FLAGS.batch_size, segment)
    inputs = zipf_tokens(shape, preset().vocab_size, seed=seed)
    labels = zipf_tokens(shape, preset().vocab_size, seed=seed + 1)
    return inputs, labels, max_tail_labels_per_batch(labels, preset().cutoffs, preset().vocab_size)


def train(segment, mem_len):
    import keras
    import tensorflow as tf

    from par_xl.cost.flops import training_flops_per_token

    inputs, labels, capacity = batches(segment, FLAGS.steps, seed=1)
    data = tf.data.Dataset.from_tensor_slices((inputs, labels)).repeat()
    functions, figures = {}, {}
    for architecture in FLAGS.architectures:
        model = build(architecture, segment, mem_len, capacity)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), jit_compile=FLAGS.jit_compile)
        functions[architecture] = lambda m=model: fit_seconds(m, data, FLAGS.steps)
        warmup = seconds(functions[architecture])
        figures[architecture] = {
            "compile_and_warmup_seconds": round(warmup, 1),
            "mflop_per_token": training_flops_per_token(model, segment, FLAGS.batch_size) / 1e6,
            "parameters": count_parameters(model),
        }
    times = rounds(functions, FLAGS.repeats, timer=lambda function: function())
    tokens = FLAGS.steps * FLAGS.batch_size * segment
    for architecture, figure in figures.items():
        figure["tokens_per_second"] = round(tokens / median(times[architecture]))
        figure["ms_per_step"] = round(1000 * median(times[architecture]) / FLAGS.steps, 2)
        figure["runs_tokens_per_second"] = [round(tokens / s) for s in times[architecture]]
    return figures, speedups(times)


def evaluation(segment, mem_len):
    from par_xl.cost.flops import evaluation_flops_per_token
    from par_xl.training.evaluation import evaluate_batches

    count = max(1, FLAGS.eval_tokens // (FLAGS.batch_size * segment))
    inputs, labels, capacity = batches(segment, count, seed=3)
    data = list(zip(inputs, labels))  # NumPy batches: no tf.data iterator in the timed runs
    functions, figures = {}, {}
    for architecture in FLAGS.architectures:
        model = build(architecture, segment, mem_len, capacity)
        model.compile(jit_compile=FLAGS.jit_compile)
        functions[architecture] = lambda m=model: evaluate_batches(m, data)
        warmup = seconds(functions[architecture])
        figures[architecture] = {
            "compile_and_warmup_seconds": round(warmup, 1),
            "mflop_per_token": evaluation_flops_per_token(model, segment, FLAGS.batch_size) / 1e6,
        }
    times = rounds(functions, FLAGS.repeats)
    for architecture, figure in figures.items():
        figure["tokens_per_second"] = round(inputs.size / median(times[architecture]))
        figure["runs_tokens_per_second"] = [round(inputs.size / s) for s in times[architecture]]
    return figures, speedups(times)


def generation(segment):
    """Per model: ms per sampled token after a prompt of T tokens and of `--long_prompt`."""
    from par_xl.cost.flops import generation_flops_per_token
    from par_xl.models.generation import read_prompt, sample

    vocab_size, n = preset().vocab_size, FLAGS.num_tokens
    prompts = {
        "short": zipf_tokens((segment,), vocab_size, seed=5).tolist(),
        "long": zipf_tokens((FLAGS.long_prompt,), vocab_size, seed=6).tolist(),
    }
    functions, figures = {}, {}
    for architecture in FLAGS.architectures:
        model = build(architecture, segment, preset().mem_len)
        start = time.perf_counter()
        states = {kind: read_prompt(model, prompt, FLAGS.generation_mem_len)
                  for kind, prompt in prompts.items()}  # fmt: skip
        for state in states.values():  # compiled for both memory shapes
            sample(model, state, n, seed=0)
        warmup = time.perf_counter() - start
        figures[architecture] = {"compile_and_warmup_seconds": round(warmup, 1)}
        for kind, state in states.items():
            functions[architecture, kind] = lambda m=model, s=state: sample(m, s, n, seed=1)
            # The memory a step attends to: M, or the whole context and the sample's room.
            memory = FLAGS.generation_mem_len or len(prompts[kind]) - 1 + n
            flops = generation_flops_per_token(model, memory)
            figures[architecture][f"mflop_per_token_{kind}_prompt"] = flops / 1e6
    times = rounds(functions, FLAGS.repeats)
    for architecture, figure in figures.items():
        short = [1000 * s / n for s in times[architecture, "short"]]
        long = [1000 * s / n for s in times[architecture, "long"]]
        figure.update(
            tokens_per_second=round(1000 / median(short)),
            ms_per_token_short_prompt=round(median(short), 3),
            ms_per_token_long_prompt=round(median(long), 3),
            long_over_short=round(median([b / a for a, b in zip(short, long)]), 3),
            runs_ms_per_token_short_prompt=[round(t, 3) for t in short],
            runs_ms_per_token_long_prompt=[round(t, 3) for t in long],
        )
    return figures


def main(_):
    import keras
    import tensorflow as tf

    if FLAGS.smoke:
        FLAGS.shapes, FLAGS.batch_size, FLAGS.repeats = ["8x8"], 2, 2
        FLAGS.steps, FLAGS.eval_tokens = 2, 32
        FLAGS.num_tokens, FLAGS.long_prompt = 4, 40
    load_before = os.getloadavg()
    peak = matmul_peak_gflops(512 if FLAGS.smoke else 2048)
    results = {}
    for shape in FLAGS.shapes:
        segment, mem_len = (int(x) for x in shape.split("x"))
        result = results[f"T{segment}_M{mem_len}"] = {}
        for part, measure in (("train", train), ("evaluation", evaluation)):
            if part in FLAGS.parts:
                figures, ratios = measure(segment, mem_len)
                for figure in figures.values():
                    flops = 1e6 * figure["mflop_per_token"]
                    figure.update(utilization(figure["tokens_per_second"], flops, peak, 4))
                result[part] = figures
                result[f"{part}_speedup_over_{FLAGS.reference}"] = ratios
    if "generation" in FLAGS.parts:
        segment = int(FLAGS.shapes[0].split("x")[0])
        results["generation"] = generation(segment)
    report = {
        "benchmark": "block_types",
        "config": {
            **preset().model_kwargs(),
            "batch_size": FLAGS.batch_size,
            "window": FLAGS.window,
            "position": FLAGS.position,
            "ffn_activation": FLAGS.ffn_activation,
            "jit_compile": FLAGS.jit_compile,
            "steps": FLAGS.steps,
            "generation_batch_size": 1,
            "generation_mem_len": FLAGS.generation_mem_len,
            "num_tokens": FLAGS.num_tokens,
            "long_prompt": FLAGS.long_prompt,
            "repeats": FLAGS.repeats,
        },
        "command": " ".join(sys.argv),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpu_threads": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "matmul_peak_gflops": round(peak, 1),
        **results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
