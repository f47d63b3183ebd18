r"""Measures a latency table for the architecture search's cost (`train.py --cost=latency`).

  python latency_table.py --preset=base128 --seq_len=128 --output=runs/latency_base128.json
  python train.py ... --cost=latency --latency_table=runs/latency_base128.json --cost_target=0.7

Times one block of each letter of `--choices` (and the identity) at the model's shape on this
device, and the rest of the model (its embedding and output layer, at `--vocab_size` and
`--cutoffs`, which a run's table must match): the compiled forward pass and its loss over a
(B, T) batch with M memory positions, and a training step; prints the table and writes it as
JSON. Run it on the device the model will serve on (a
GPU machine's table differs from a CPU's). The work is `par_xl.cost.latency`.
"""

import dataclasses
import json
import sys

from absl import app, flags

import par_xl.runtime.quiet  # noqa: F401  (before TensorFlow: quiets its C++ start-up logs)
from par_xl.configs import PRESETS, ConfigError
from par_xl.layers.choices import CHOICES, legend

flags.DEFINE_enum("preset", "base", sorted(PRESETS), "Model preset; the flags below override it.")
flags.DEFINE_integer("d_model", None, "Model width D.")
flags.DEFINE_integer("num_heads", None, "Attention heads.")
flags.DEFINE_integer("d_ffn", None, "Feed-forward inner width.")
flags.DEFINE_integer("mem_len", None, "XL memory length M (default: the preset's).")
flags.DEFINE_integer("knn_memory_size", None, "C, the M letter's kNN store per stream and head.")
flags.DEFINE_integer("vocab_size", None, "The data's vocabulary (default the preset's, 12,000: "
                     "the base data's); with --cutoffs, the output layer's shape.")
flags.DEFINE_multi_integer("cutoffs", None, "Adaptive-softmax cutoffs (default: the preset's).")
flags.DEFINE_string("choices", "AFI", f"The letters to time, of {legend()}.")
flags.DEFINE_integer("seq_len", 32, "Segment length T: the data's (build_data.py --seq_len).")
flags.DEFINE_integer("batch_size", 32, "Batch size B: the data's.")
flags.DEFINE_integer("repeats", 20, "Timed calls per letter and round.")
flags.DEFINE_integer("rounds", 3, "Rounds in which the letters take turns.")
flags.DEFINE_bool("jit_compile", False, "XLA (as training on a GPU or TPU, or on JAX, uses it).")
flags.DEFINE_string("output", None, "Where the JSON table goes.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from par_xl.cost.latency import measure_latency_table, write_latency_table

    overrides = {name: getattr(FLAGS, name) for name in
                 ("d_model", "num_heads", "d_ffn", "mem_len", "knn_memory_size", "vocab_size")
                 if getattr(FLAGS, name) is not None}  # fmt: skip
    if FLAGS.cutoffs is not None:
        overrides["cutoffs"] = tuple(FLAGS.cutoffs)
    config = dataclasses.replace(PRESETS[FLAGS.preset], **overrides)
    try:
        config.validate()
        unknown = sorted(set(FLAGS.choices) - set(CHOICES))
        if unknown or not FLAGS.choices:
            raise ConfigError(
                f"--choices must be letters of {legend()}, received {FLAGS.choices!r}."
            )
        for name in ("seq_len", "batch_size", "repeats", "rounds"):
            if getattr(FLAGS, name) < 1:
                raise ConfigError(f"--{name} must be positive, received {getattr(FLAGS, name)}.")
        if not FLAGS.output:
            raise ConfigError("--output is required: where the JSON table goes.")
    except ConfigError as error:
        print(f"latency_table.py: error: {error}", file=sys.stderr)
        return 2
    table = measure_latency_table(
        config.model_kwargs(), FLAGS.choices, FLAGS.seq_len, config.mem_len, FLAGS.batch_size,
        FLAGS.repeats, FLAGS.rounds, FLAGS.jit_compile,
    )  # fmt: skip
    write_latency_table(FLAGS.output, table)
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main)
