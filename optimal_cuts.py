"""Prints the adaptive-softmax cutoffs that minimize the modelled softmax time.

    python optimal_cuts.py --filename=data/tfrecords/train/unigram.txt --clusters=3

The cost model and the exact search are described in `par_xl/cutoffs.py`. The last line printed
is the cutoffs as `--cutoffs=` flags for base_model.sh.
"""

import sys

from absl import app, flags

from par_xl import cutoffs

_DEFAULTS = cutoffs.CostModel()

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "filename",
    None,
    "Unigram file: build_data.py's <tfrecords>/train/unigram.txt, or any file with one count or "
    "probability per vocabulary entry as the last whitespace-separated field of each line. "
    "Need not be sorted.",
)
flags.DEFINE_integer(
    "clusters",
    3,
    "Total number of clusters, head included (cutoffs = clusters - 1).",
    lower_bound=1,
)
flags.DEFINE_boolean("verbose", True, "Also print each cluster's ids, mass, width and time.")
flags.DEFINE_integer("d_model", _DEFAULTS.d_model, "Hidden size d entering the softmax.")
flags.DEFINE_integer(
    "proj_factor",
    _DEFAULTS.proj_factor,
    "Tail cluster i (1-based) is projected to max(1, d_model // proj_factor**i) dimensions.",
)
flags.DEFINE_float(
    "batch_tokens", _DEFAULTS.batch_tokens, "B: tokens per batch (batch size x segment length)."
)
flags.DEFINE_float(
    "c_us",
    _DEFAULTS.c_us,
    "c: fixed time of one matrix product, microseconds (default: a modern GPU's launch cost).",
)
flags.DEFINE_float(
    "tflops",
    _DEFAULTS.tflops,
    "Effective matrix-product throughput in TFLOP/s; lambda = 2 / tflops per multiply-add "
    "(default: an H100-class GPU on thin products).",
)
flags.DEFINE_float(
    "k0",
    _DEFAULTS.k0,
    "k0: output columns below which a product with b0 rows takes constant time "
    "(default: the paper's Sec. 4.1).",
)
flags.DEFINE_float(
    "b0", _DEFAULTS.b0, "B0: rows of the product at which k0 was measured (default: the paper's)."
)
flags.mark_flag_as_required("filename")


def main(argv):
    del argv  # unused
    try:
        model = cutoffs.CostModel(
            batch_tokens=FLAGS.batch_tokens,
            d_model=FLAGS.d_model,
            proj_factor=FLAGS.proj_factor,
            c_us=FLAGS.c_us,
            tflops=FLAGS.tflops,
            k0=FLAGS.k0,
            b0=FLAGS.b0,
        )
        print(cutoffs.optimal_cuts_report(FLAGS.filename, FLAGS.clusters, model, FLAGS.verbose))
    except ValueError as e:
        print(f"optimal_cuts.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
