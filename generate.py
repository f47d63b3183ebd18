r"""Samples text from a trained PAR Transformer-XL checkpoint.

  python generate.py --checkpoint_dir=runs/base/checkpoints --prompt="the meaning of life" \
      --num_tokens=100 --temperature=0.8 --top_p=0.9

The prompt is tokenized with the run's SentencePiece model (lowercased by it if the data was);
each new token costs one forward step over the XL memory (`par_xl.models.generation`).
"""

import sys

from absl import app, flags

flags.DEFINE_string("checkpoint_dir", None, "A run's checkpoint directory (with config.json).")
flags.DEFINE_string("checkpoint", None, "A checkpoint file (default: the latest).")
flags.DEFINE_string("sp_model_prefix", None, "SentencePiece model prefix (default: the data's).")
flags.DEFINE_string("prompt", "", "Text to continue.")
flags.DEFINE_integer("num_tokens", 100, "SentencePiece tokens to sample.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1: all).")
flags.DEFINE_integer("mem_len", None, "Memory length while sampling (default: the model's).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from par_xl.configs import ConfigError
    from par_xl.data import DataError, load_tokenizer
    from par_xl.models.generation import generate
    from par_xl.training.trainer import load_run

    try:
        if not FLAGS.checkpoint_dir:
            raise ConfigError("--checkpoint_dir is required.")
        model, _, _, metadata = load_run(FLAGS.checkpoint_dir, FLAGS.checkpoint)
        model_path = (
            f"{FLAGS.sp_model_prefix}.model" if FLAGS.sp_model_prefix else metadata.sp_model
        )
        tokenizer = load_tokenizer(model_path)
        eol = tokenizer.eos_id()
        prompt = tokenizer.encode(FLAGS.prompt) if FLAGS.prompt else []
        ids, _ = generate(
            model, prompt or [eol], FLAGS.num_tokens, FLAGS.temperature, FLAGS.top_k,
            FLAGS.top_p, FLAGS.seed, FLAGS.mem_len,
        )  # fmt: skip
    except (ConfigError, DataError, FileNotFoundError, ValueError) as error:
        print(f"generate.py: error: {error}", file=sys.stderr)
        return 2
    # End-of-line ids separate lines, as in the training text.
    lines, current = [], list(prompt)
    for token in ids:
        if token == eol:
            lines.append(tokenizer.decode(current))
            current = []
        else:
            current.append(token)
    lines.append(tokenizer.decode(current))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    app.run(main)
