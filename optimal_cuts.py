"""Prints the adaptive-softmax cutoffs that minimize the modelled softmax time.

    python optimal_cuts.py --filename=data/tfrecords/train/unigram.txt --clusters=3

The cost model and the exact search are described in `par_xl/cutoffs.py` and
`docs/cutoffs.md`. The last line printed is the cutoffs as `--cutoffs=` flags for train.py
(`--cutoffs=0`, a plain softmax, where the model rates every adaptive softmax slower).
"""

import itertools
import sys
import time

from absl import app, flags

import par_xl.runtime.quiet  # noqa: F401  (before TensorFlow, which par_xl.data imports: quiets its logs)
from par_xl import cutoffs
from par_xl.data.unigram import read_unigram_file

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


def format_comparison(comparison, filename, cost_model, seconds, verbose=True):
    """The text `main` prints for a `cutoffs.CutoffsComparison`; its last line is the flags."""
    m, clusters = cost_model, len(comparison.cutoffs) + 1
    lines = [
        f"Vocabulary: {comparison.probs.size} entries from {filename}, sorted by frequency.",
        f"Cost model (Grave et al. 2017): B={m.batch_tokens:g} tokens, d_model={m.d_model}, "
        f"proj_factor={m.proj_factor}, c={m.c_us:g} us, {m.tflops:g} TFLOP/s, "
        f"k0*B0={m.k0:g}*{m.b0:g}.",
        f"Optimal cutoffs for {clusters} cluster(s): {list(comparison.cutoffs)} "
        f"(exact search, {seconds:.2f} s).",
    ]
    if verbose:
        lines += cluster_table(comparison, cost_model)
    return "\n".join(lines + timings(comparison) + recommendation(comparison))


def cluster_table(comparison, cost_model):
    """One line per cluster: its ids, probability mass, width and modelled time."""
    probs, n = comparison.probs, comparison.probs.size
    lines = [f"  {'cluster':<8}{'ids':>17}{'mass':>10}{'dim':>6}{'time (us)':>12}"]
    bounds = itertools.pairwise([0, *comparison.cutoffs, n])
    for i, ((low, high), t) in enumerate(zip(bounds, comparison.cluster_times, strict=True)):
        name = f"tail {i}" if i else "head"
        m = cost_model
        dim = cutoffs.tail_width(m.d_model, m.proj_factor, i) if i else m.d_model
        ids = f"{low}-{high - 1}"
        lines.append(f"  {name:<8}{ids:>17}{probs[low:high].sum():>10.4f}{dim:>6}{t:>12.3f}")
    return lines


def timings(comparison):
    """The optimum's, the base cutoffs' and the plain softmax's modelled times and speed-ups."""
    cost, plain, base = comparison.cost, comparison.plain_cost, comparison.base_cost
    lines = [
        "Modelled time per batch, microseconds (speed-up = plain softmax / time):",
        f"  optimal          {cost:12.3f}   speed-up {plain / cost:.2f}x",
    ]
    if base is not None:
        lines.append(
            f"  base 250/2500    {base:12.3f}   speed-up {plain / base:.2f}x "
            f"(optimal is {base / cost:.2f}x faster)"
        )
    else:
        lines.append(
            f"  base 250/2500    does not apply ({len(cutoffs.BASE_CUTOFFS) + 1} clusters and "
            f"N > {cutoffs.BASE_CUTOFFS[-1]} needed; here {len(comparison.cutoffs) + 1} "
            f"clusters, N = {comparison.probs.size})"
        )
    lines.append(f"  plain softmax    {plain:12.3f}")
    return lines


def recommendation(comparison):
    """The cutoffs to train with, as flags: the optimum, or a plain softmax where it is not
    faster (said in a line of its own)."""
    lines = []
    if comparison.cutoffs and not comparison.faster_than_plain:
        lines.append(
            f"The optimal {len(comparison.cutoffs) + 1} clusters are not faster than a plain "
            f"softmax in this model ({comparison.cost:.3f} us against "
            f"{comparison.plain_cost:.3f} us): use the plain softmax."
        )
    recommended = comparison.recommended_cutoffs
    spaced = " ".join(str(c) for c in recommended) or "0"
    lines.append(f'train.py flags (base_model.sh: CUTOFFS="{spaced}"; 0 is a plain softmax):')
    lines.append(" ".join(f"--cutoffs={c}" for c in recommended) or "--cutoffs=0")
    return lines


def main(argv):
    del argv  # unused
    try:
        model = cost_model_from_flags()
        frequencies = read_unigram_file(FLAGS.filename)
        if FLAGS.clusters > frequencies.size:
            raise ValueError(
                f"--clusters={FLAGS.clusters}: {FLAGS.filename} has {frequencies.size} entries, "
                f"so at most {frequencies.size} clusters."
            )
        began = time.perf_counter()
        comparison = cutoffs.compare_cutoffs(frequencies, FLAGS.clusters, model)
        seconds = time.perf_counter() - began
    except ValueError as e:
        print(f"optimal_cuts.py: error: {e}", file=sys.stderr)
        return 1
    print(format_comparison(comparison, FLAGS.filename, model, seconds, FLAGS.verbose))
    return 0


def cost_model_from_flags():
    """The cost model of the flags; a ValueError names the flag whose value cannot work."""
    try:
        return cutoffs.CostModel(
            batch_tokens=FLAGS.batch_tokens,
            d_model=FLAGS.d_model,
            proj_factor=FLAGS.proj_factor,
            c_us=FLAGS.c_us,
            tflops=FLAGS.tflops,
            k0=FLAGS.k0,
            b0=FLAGS.b0,
        )
    except ValueError as e:  # CostModel names the argument first: the flag of the same name
        raise ValueError(f"--{e}") from None


if __name__ == "__main__":
    app.run(main)
