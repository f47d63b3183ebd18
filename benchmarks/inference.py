"""Inference throughput: evaluation (batch 32) and generation (batch 1); prints JSON.

    python benchmarks/inference.py [--models supernet,AAFFFF,AFAFAF,supernet_argmax]
        [--reference AFAFAF] [--shapes 32x16,128x128] [--parts evaluation,generation]
        [--notail_capacity] [--repeats 5] [--preset base]

Models: the base supernet (every block computes attention and feed-forward, weighted by its
choice probabilities), a derived architecture (`derive("AAFFFF")`: each block holds only its
chosen sublayer), a standard Transformer-XL with as many sublayers (`derive("AFAFAF")`) and,
if asked for, the supernet with `choice_at_inference="argmax"` (each block computes only its
preferred branch, behind a switch), all of the base shape (vocab 12000, d_model 128,
4 heads, d_ffn 512, 6 blocks, cutoffs 250/2500; or `--preset`'s, e.g. par32's 32 blocks) with
untrained weights (speed does not depend on them) but the supernet's choices set to prefer
`--preferred`, as after a search. Shapes `TxM`: segment length T and memory length M; the
long-context one gives attention a larger share of the cost.

Evaluation: `par_xl.training.evaluation.evaluate_batches` (what train.py's validation and
`--mode=evaluate` run: `test_on_batch` per batch, compiled, memory carried) over batches of
32 x T synthetic Zipf tokens held as NumPy arrays, `--eval_tokens` per timed run. With
`--tail_capacity` (the default) the loss scores each tail cluster only for the positions whose
label is in it, as in train.py's validation; without, every tail for every position, as
`--mode=evaluate` does.
Generation: `read_prompt`, then `sample` (`par_xl.models.generation`) at batch 1, the XL memory
at M, XLA on; the sampling loop is timed alone, after a prompt of T tokens and after one of
`--long_prompt` tokens (its cost per token must not depend on the prompt), and the reading of
the long prompt on its own.

Models take turns within each of `--repeats` rounds, so that a change of the machine's load
touches all of them; figures are medians of the rounds, speed-ups (over `--reference`, by
default the supernet) medians of the per-round ratios. FLOPs per token (`par_xl.cost.flops`),
the utilization of this machine's fp32 matmul peak (measured in the same run, before and after)
and the load average come with them.
"""

import json
import os
import platform
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import par_xl.runtime.quiet  # noqa: E402, F401  (before TensorFlow: quiets its C++ start-up logs)
from benchmarks.common import (  # noqa: E402
    matmul_peak_gflops,
    median,
    rounds,
    seconds,
    utilization,
    zipf_tokens,
)
from par_xl.configs import PRESETS  # noqa: E402
from par_xl.cost.parameters import count_parameters  # noqa: E402

flags.DEFINE_enum("preset", "base", sorted(PRESETS), "The models' shape (its mem_len: --shapes').")
flags.DEFINE_list(
    "models",
    ["supernet", "AAFFFF", "AFAFAF"],
    "supernet, supernet_argmax and/or derived architectures (supernet_argmax's generation loop "
    "takes minutes to compile with XLA).",
)
flags.DEFINE_string("preferred", "AAFFFF", "The architecture the supernet's choices prefer.")
flags.DEFINE_string("choices", None, "The supernet's letters (default: the preset's, plus any "
                    "other letter of the derived --models).")
flags.DEFINE_string(
    "reference", "supernet", "The model of --models the others' speed-ups are measured against."
)
flags.DEFINE_list("shapes", ["32x16", "128x128"], "Segment x memory lengths, TxM.")
flags.DEFINE_list("parts", ["evaluation", "generation"], "Which of evaluation, generation.")
flags.DEFINE_integer("repeats", 5, "Timed rounds; in each, every model runs once.")
flags.DEFINE_integer("eval_batch_size", 32, "Evaluation batch size B.")
flags.DEFINE_integer("eval_tokens", 8192, "Tokens per timed evaluation (whole batches).")
flags.DEFINE_bool("tail_capacity", True, "Evaluation loss scores tails sparsely (validation).")
flags.DEFINE_bool("eval_jit_compile", False, "Evaluate with XLA (train.py's CPU default: off).")
flags.DEFINE_integer("num_tokens", 256, "Tokens per timed sample.")
flags.DEFINE_integer("long_prompt", 2048, "The long prompt's length in tokens.")
flags.DEFINE_integer("top_k", 0, "Sampling: top-k (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sampling: nucleus mass (1: all).")
FLAGS = flags.FLAGS


def build_models(segment, mem_len, capacity):
    """The base supernet for (B, T) batches with memory M, its choices preferring
    `--preferred` (as after a search), and the models asked for: `(supernet, {name: model})`
    (the supernet is the source of every derived model, asked for or not)."""
    import keras
    import numpy as np

    from par_xl.models import PARTransformerXL

    keras.utils.set_random_seed(0)
    config = {**PRESETS[FLAGS.preset].model_kwargs(), "mem_len": mem_len}
    letters = "".join(m for m in FLAGS.models if not m.startswith("supernet"))
    config["choices"] = FLAGS.choices or "".join(dict.fromkeys(config["choices"] + letters))
    supernet = PARTransformerXL(**config, tail_capacities=capacity)
    supernet.build((FLAGS.eval_batch_size, segment))
    for block, choice in zip(supernet.blocks, FLAGS.preferred):
        block.gumbel.logits.assign(np.where(np.array(list(block.choices)) == choice, 2.0, 0.0))
    models = {}
    for name in FLAGS.models:
        if name == "supernet":
            models[name] = supernet
        elif name == "supernet_argmax":  # the same weights, only the preferred branches
            argmax = {**supernet.get_config(), "choice_at_inference": "argmax"}
            models[name] = PARTransformerXL.from_config(argmax)
            models[name].build((FLAGS.eval_batch_size, segment))
            models[name].set_weights(supernet.get_weights())
        else:
            models[name] = supernet.derive(name)
    return supernet, models


def evaluation(models, segment, data, tokens):
    from par_xl.cost.flops import evaluation_flops_per_token
    from par_xl.training.evaluation import evaluate_batches

    warmup, functions = {}, {}
    for name, model in models.items():
        model.compile(jit_compile=FLAGS.eval_jit_compile)
        functions[name] = lambda model=model: evaluate_batches(model, data)
        warmup[name] = seconds(functions[name])
    times = rounds(functions, FLAGS.repeats)
    figures = {}
    for name, model in models.items():
        figures[name] = {
            "tokens_per_second": round(tokens / median(times[name])),
            "runs_tokens_per_second": [round(tokens / s) for s in times[name]],
            "compile_and_warmup_seconds": round(warmup[name], 1),
            "flops_per_token": evaluation_flops_per_token(model, segment, FLAGS.eval_batch_size),
        }
    return figures, times


def ready(prompt):
    """Waits for a read prompt's state (JAX dispatches asynchronously: its arrays, outputs of
    the same compiled call, are ready together)."""
    from keras import ops

    ops.convert_to_numpy(prompt.state.valid_length)
    return prompt


def generation(models, segment):
    from par_xl.cost.flops import generation_flops_per_token
    from par_xl.models.generation import read_prompt, sample

    n, settings = FLAGS.num_tokens, dict(top_k=FLAGS.top_k, top_p=FLAGS.top_p)
    vocab_size = PRESETS[FLAGS.preset].vocab_size
    prompts = {
        "short": zipf_tokens((segment,), vocab_size, seed=3).tolist(),
        "long": zipf_tokens((FLAGS.long_prompt,), vocab_size, seed=4).tolist(),
    }
    warmup, functions = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        states = {kind: ready(read_prompt(model, prompt)) for kind, prompt in prompts.items()}
        sample(model, states["short"], n, seed=0, **settings)
        warmup[name] = time.perf_counter() - start
        for length, state in states.items():
            functions[name, length] = lambda m=model, s=state: sample(m, s, n, seed=1, **settings)
        functions[name, "read"] = lambda m=model: ready(read_prompt(m, prompts["long"]))
    times = rounds(functions, FLAGS.repeats)
    figures = {}
    for name, model in models.items():
        short = [1000 * s / n for s in times[name, "short"]]
        long = [1000 * s / n for s in times[name, "long"]]
        figures[name] = {
            "tokens_per_second": round(1000 / median(short)),
            "ms_per_token_short_prompt": round(median(short), 3),
            "ms_per_token_long_prompt": round(median(long), 3),
            "long_over_short": round(median([b / a for a, b in zip(short, long)]), 3),
            "runs_ms_per_token_short_prompt": [round(t, 3) for t in short],
            "runs_ms_per_token_long_prompt": [round(t, 3) for t in long],
            "long_prompt_read_seconds": round(median(times[name, "read"]), 3),
            "compile_and_warmup_seconds": round(warmup[name], 1),
            "flops_per_token": generation_flops_per_token(model),
        }
    return figures, {name: times[name, "short"] for name in models}


def speedups(times):
    """Median over rounds of the `--reference` model's time / model time, per other model."""
    return {
        name: round(median([a / b for a, b in zip(times[FLAGS.reference], own)]), 2)
        for name, own in times.items()
        if name != FLAGS.reference
    }


def measure_shape(segment, mem_len):
    from par_xl.cost.flops import evaluation_flops_per_token
    from par_xl.data.label_statistics import max_tail_labels_per_batch

    batches = max(1, FLAGS.eval_tokens // (FLAGS.eval_batch_size * segment))
    shape = (batches, FLAGS.eval_batch_size, segment)
    vocab_size, cutoffs = PRESETS[FLAGS.preset].vocab_size, PRESETS[FLAGS.preset].cutoffs
    inputs = zipf_tokens(shape, vocab_size, seed=1)
    labels = zipf_tokens(shape, vocab_size, seed=2)
    capacity = None
    if FLAGS.tail_capacity:  # as train.py's validation: the most any batch needs
        capacity = max_tail_labels_per_batch(labels, cutoffs, vocab_size)
    supernet, models = build_models(segment, mem_len, capacity)
    result = {"parameters": {name: count_parameters(model) for name, model in models.items()}}
    if "evaluation" in FLAGS.parts:  # what every model computes alike: embedding and softmax
        shared = supernet.derive("I" * PRESETS[FLAGS.preset].num_layers)
        result["evaluation_softmax_flops_per_token"] = evaluation_flops_per_token(
            shared, segment, FLAGS.eval_batch_size
        )
    if "evaluation" in FLAGS.parts:
        # NumPy batches: a new tf.data iterator sometimes costs ~0.6 s here (once per
        # evaluation, nothing in a real split's hundreds of batches, but half a timed run).
        data = list(zip(inputs, labels))
        tokens = inputs.size
        result["evaluation"], times = evaluation(models, segment, data, tokens)
        result["evaluation_batches"] = batches
        result["tail_capacities"] = capacity
        if FLAGS.reference in models:
            result[f"evaluation_speedup_over_{FLAGS.reference}"] = speedups(times)
    if "generation" in FLAGS.parts:
        result["generation"], times = generation(models, segment)
        if FLAGS.reference in models:
            result[f"generation_speedup_over_{FLAGS.reference}"] = speedups(times)
    return result


def cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(_):
    import keras
    import tensorflow as tf

    load_before = os.getloadavg()
    peak_before = matmul_peak_gflops()
    results = {}
    for shape in FLAGS.shapes:
        segment, mem_len = (int(x) for x in shape.split("x"))
        results[f"T{segment}_M{mem_len}"] = measure_shape(segment, mem_len)
    peak_after = matmul_peak_gflops()
    peak = max(peak_before, peak_after)  # the less disturbed of the two
    for result in results.values():
        for part in ("evaluation", "generation"):
            for figure in result.get(part, {}).values():
                figure.update(
                    utilization(figure["tokens_per_second"], figure["flops_per_token"], peak, 4)
                )
    report = {
        "benchmark": "inference",
        "config": {
            **PRESETS[FLAGS.preset].model_kwargs(),
            "eval_batch_size": FLAGS.eval_batch_size,
            "tail_capacity": FLAGS.tail_capacity,
            "eval_jit_compile": FLAGS.eval_jit_compile,
            "generation_batch_size": 1,
            "generation_jit_compile": True,
            "num_tokens": FLAGS.num_tokens,
            "long_prompt": FLAGS.long_prompt,
            "top_k": FLAGS.top_k,
            "top_p": FLAGS.top_p,
            "repeats": FLAGS.repeats,
        },
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpu": cpu_name(),
        "cpu_threads": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_gflops_before_after": [round(peak_before, 1), round(peak_after, 1)],
        **results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
