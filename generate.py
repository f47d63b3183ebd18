r"""Samples text from a trained PAR Transformer-XL checkpoint.

  python generate.py --checkpoint_dir=runs/base/checkpoints --prompt="the meaning of life" \
      --num_tokens=100 --temperature=0.8 --top_p=0.9

The prompt is tokenized with the run's SentencePiece model (lowercased by it if the data was),
read in chunks into the XL memory, and the new tokens are sampled in one compiled loop, one
forward step over the memory each (`par_xl.models.generation`).
"""

import math
import sys

from absl import app, flags

import par_xl.runtime.quiet  # noqa: F401  (before TensorFlow: quiets its C++ start-up logs)

flags.DEFINE_string("checkpoint_dir", None, "A run's checkpoint directory (with config.json).")
flags.DEFINE_string("checkpoint", None, "A checkpoint file (default: the latest).")
flags.DEFINE_string(
    "sp_model_prefix", None, "SentencePiece model prefix (default: the run's); must be the run's."
)
flags.DEFINE_string("prompt", "", "Text to continue.")
flags.DEFINE_integer("num_tokens", 100, "SentencePiece tokens to sample (> 0).")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (>= 0; 0: all).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1: all).")
flags.DEFINE_integer(
    "mem_len", None, "Memory length while sampling (default: the model's; 0: the whole context)."
)
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_enum(
    "knn_backend",
    None,
    ["exact", "scann"],
    "The kNN memory's search (models with memorizing attention; default: the run's): exact, "
    "or scann (ScaNN on the host, for large stores; not with --jit_compile).",
)
flags.DEFINE_bool(
    "jit_compile",
    False,
    "Compile the sampling loop with XLA: ~5-10x faster per token on CPU, after a compilation "
    "of 10-30 s for the base model on 2 cores; worth it from a few thousand tokens.",
)
FLAGS = flags.FLAGS


def check_flags():
    """Raises ConfigError naming the first sampling flag whose value cannot work."""
    from par_xl.checks import INT_MAX
    from par_xl.configs import ConfigError

    if FLAGS.num_tokens < 1:
        raise ConfigError(f"--num_tokens must be positive, received {FLAGS.num_tokens}.")
    if not (math.isfinite(FLAGS.temperature) and FLAGS.temperature > 0):
        raise ConfigError(
            f"--temperature must be positive and finite, received {FLAGS.temperature}."
        )
    if FLAGS.top_k < 0:
        raise ConfigError(f"--top_k must be >= 0 (0: all tokens), received {FLAGS.top_k}.")
    if not 0 < FLAGS.top_p <= 1:
        raise ConfigError(f"--top_p must be in (0, 1], received {FLAGS.top_p}.")
    if FLAGS.mem_len is not None and FLAGS.mem_len < 0:
        raise ConfigError(f"--mem_len must be >= 0, received {FLAGS.mem_len}.")
    if not 0 <= FLAGS.seed < 2**32:
        raise ConfigError(f"--seed must be in [0, 2**32), received {FLAGS.seed}.")
    for name in ("num_tokens", "top_k", "mem_len"):
        value = getattr(FLAGS, name)
        if (value or 0) > INT_MAX:
            raise ConfigError(f"--{name} must be at most {INT_MAX}, received {value}.")
    if not FLAGS.checkpoint_dir:
        raise ConfigError("--checkpoint_dir is required.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf

    from par_xl.configs import ConfigError
    from par_xl.data import DataError, decode_lines, load_tokenizer
    from par_xl.models.generation import generate
    from par_xl.training.runs import check_sp_model, load_run

    try:
        check_flags()
        model, _, _, data = load_run(
            FLAGS.checkpoint_dir, FLAGS.checkpoint, knn_backend=FLAGS.knn_backend
        )
        if FLAGS.sp_model_prefix:
            model_path, flag = f"{FLAGS.sp_model_prefix}.model", "--sp_model_prefix"
        else:
            model_path, flag = data["sp_model"], "the run's SentencePiece model"
        check_sp_model(model_path, data, flag, what="the run was trained with")
        tokenizer = load_tokenizer(model_path)
        eol = tokenizer.eos_id()
        prompt = tokenizer.encode(FLAGS.prompt) if FLAGS.prompt else []
        ids, _ = generate(
            model, prompt or [eol], FLAGS.num_tokens, FLAGS.temperature, FLAGS.top_k,
            FLAGS.top_p, FLAGS.seed, FLAGS.mem_len, jit_compile=FLAGS.jit_compile,
        )  # fmt: skip
    except (ConfigError, DataError, OSError, ValueError) as error:
        print(f"generate.py: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, tf.errors.ResourceExhaustedError) as error:
        print(f"generate.py: error: out of memory ({_first_line(error)}): lower --num_tokens, or "
              "give --mem_len a limit (0 keeps the whole context).", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        print("generate.py: interrupted", file=sys.stderr)
        return 130
    print(decode_lines(tokenizer, prompt + ids))  # end-of-line ids end lines, as in the text
    return 0


def _first_line(error):
    return (getattr(error, "message", None) or str(error) or type(error).__name__).splitlines()[0]


if __name__ == "__main__":
    app.run(main)
