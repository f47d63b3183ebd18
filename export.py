r"""Exports a training run as a SavedModel that takes text, for TensorFlow Serving or any
`tf.saved_model.load` with tensorflow-text, without par_xl.

  python export.py --checkpoint_dir=runs/base/checkpoints --output=exported/base

Signatures `score`, `generate`, `next_token_log_probs` (with `initial_state`), `tokenize`,
`detokenize`; the SentencePiece model in the graph (tensorflow-text) and in `assets/`. A
supernet is exported as the architecture it derives, and the output says so. The SavedModel is
written under a temporary name and renamed when complete. What each signature takes and
returns, checking an export and serving it: docs/export.md (`par_xl.serving.saved_model`).
"""

import sys
from pathlib import Path

from absl import app, flags

import par_xl.runtime.quiet  # noqa: F401  (before TensorFlow: quiets its C++ start-up logs)

flags.DEFINE_string("checkpoint_dir", None, "A run's checkpoint directory (with config.json).")
flags.DEFINE_string("checkpoint", None, "A checkpoint file (default: the newest intact one).")
flags.DEFINE_string("output", None, "The SavedModel directory to write; must not exist.")
flags.DEFINE_integer(
    "max_new_tokens_limit", 1024, "The most tokens `generate` samples per call (its buffers)."
)
flags.DEFINE_bool(
    "jit_compile",
    True,
    "Compile the model's loops with XLA (TF Serving: --xla_cpu_compilation_enabled=true); "
    "--nojit_compile for a server without XLA.",
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from par_xl.configs import ConfigError
    from par_xl.data import DataError
    from par_xl.serving.saved_model import export_saved_model
    from par_xl.serving.text_model import TextModel

    try:
        for flag in ("checkpoint_dir", "output"):
            if not FLAGS[flag].value:
                raise ConfigError(f"--{flag} is required.")
        output = Path(FLAGS.output)
        if output.exists():
            raise ConfigError(f"--output={output} exists: remove it, or choose another.")
        model = TextModel.from_run(FLAGS.checkpoint_dir, FLAGS.checkpoint, knn_backend="exact")
        if model.supernet_architecture:
            print(f"export.py: the run is a supernet: exporting the architecture it derives, "
                  f"{model.supernet_architecture}")  # fmt: skip
        output.parent.mkdir(parents=True, exist_ok=True)
        info = export_saved_model(model, output, FLAGS.max_new_tokens_limit, FLAGS.jit_compile)
    except (ConfigError, DataError, OSError, ValueError) as error:
        print(f"export.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("export.py: interrupted", file=sys.stderr)
        return 130
    print(f"export.py: wrote {output} (architecture {info['architecture']}; signatures "
          f"{', '.join(info['signatures'])}); check it with: saved_model_cli show --all "
          f"--dir {output}")  # fmt: skip
    return 0


if __name__ == "__main__":
    app.run(main)
