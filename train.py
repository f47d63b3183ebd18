r"""Trains a PAR Transformer-XL on TFRecords from build_data.py, or evaluates a checkpoint.

  python train.py --train_directory=data/tfrecords/train --valid_directory=data/tfrecords/valid \
      --test_directory=data/tfrecords/test --sp_model_prefix=data/sp12k --model_name=base
  python train.py ... --resume                  # continue after an interrupt (SIGINT/SIGTERM save)
  python train.py --mode=evaluate --checkpoint_dir=runs/base/checkpoints [--eval_directory=...]
  python train.py --mode=evaluate ... --choice_at_inference=argmax   # the search's argmax alone
  python train.py ... --strategy=mirrored       # all GPUs of this machine (also: multi_worker, tpu)

Flag names follow the original PAR scripts. The work is `par_xl.training.trainer`.
"""

import dataclasses
import json
import sys

from absl import app, flags

import par_xl.runtime.lean_imports  # noqa: F401  (TensorFlow without jax, matplotlib, scipy: memory)
import par_xl.runtime.quiet  # noqa: F401  (before TensorFlow: quiets its C++ start-up logs)
from par_xl.configs import (
    ARCH_OPTIMIZERS,
    OPTIMIZERS,
    PRESETS,
    TAU_SCHEDULES,
    ConfigError,
    ModelConfig,
    TrainConfig,
)
from par_xl.cost.objective import COSTS, FORMS
from par_xl.layers.choices import CHOICES, DEFAULT_CHOICES, legend
from par_xl.layers.gated_feed_forward import FFN_ACTIVATIONS
from par_xl.layers.positions import POSITIONS
from par_xl.layers.stochastic_block import SEARCHES

MODEL_FLAGS = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]
# Training flags default to TrainConfig's defaults: one place to change them.
DEFAULT = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "Train (or resume), or evaluate.")
flags.DEFINE_string("train_directory", None, "Training split directory (from build_data.py).")
flags.DEFINE_string("valid_directory", None, "Validation split directory.")
flags.DEFINE_string("test_directory", None, "Test split directory, evaluated at the end.")
flags.DEFINE_string(
    "sp_model_prefix", None, "SentencePiece model prefix; checked against the data's hash."
)
flags.DEFINE_enum("preset", "base", sorted(PRESETS), "Model preset; the flags below override it.")
flags.DEFINE_integer("d_model", None, "Model width D.")
flags.DEFINE_integer("num_heads", None, "Attention heads; must divide d_model.")
flags.DEFINE_integer("d_ffn", None, "Feed-forward inner width.")
flags.DEFINE_integer("num_layers", None, "Number of stochastic blocks.")
flags.DEFINE_integer("mem_len", None, "XL memory length per block (0: none).")
flags.DEFINE_float("dropout_rate", None, "Embedding, residual and feed-forward dropout.")
flags.DEFINE_float("attention_dropout_rate", None, "Dropout on attention probabilities.")
flags.DEFINE_multi_integer(
    "cutoffs", None, "Adaptive-softmax cutoff (repeat the flag); --cutoffs=0 for a plain softmax."
)
flags.DEFINE_integer("proj_factor", None, "Adaptive-softmax width divisor per tail cluster.")
flags.DEFINE_bool("tie_embeddings", None, "Tie the input embedding to the adaptive softmax.")
flags.DEFINE_string(
    "choices",
    None,
    f"The letters each block of the search chooses among, 2 or more of {legend()} (default "
    f"{DEFAULT_CHOICES}).",
)
flags.DEFINE_string(
    "architecture",
    None,
    f"Train a fixed architecture, one letter of {''.join(CHOICES)} per block, e.g. AAFAFF (no "
    "search), or a rule that expands to --num_layers letters (par_xl/models/rules.py): standard "
    "(AFAF...), par_rule:p=5 (PAR: num_layers/p attention blocks in the first two-thirds), "
    "late_rule:p=5 (as many, in the last third), sandwich:k=3 (k A, then AF pairs, then k F).",
)
flags.DEFINE_enum(
    "search",
    None,
    list(SEARCHES),
    "How the supernet trains: all_branches (PAR: every branch, mixed by per-example "
    "Gumbel-softmax weights) or single_path (one sampled branch per block and batch, the only "
    "one computed: faster).",
)
flags.DEFINE_bool("straight_through", None, "Straight-through (hard) Gumbel samples.")
flags.DEFINE_bool("tau_is_trainable", None, "Learn tau instead of annealing it.")
flags.DEFINE_enum(
    "choice_at_inference", None, ["expected", "argmax"],
    "A supernet's block weights at inference: every branch mixed by the choice probabilities, "
    "or only the preferred one (what derive() keeps). With --mode=evaluate it replaces the run's.",
)  # fmt: skip
flags.DEFINE_float("initializer_range", None, "Standard deviation of the normal weight init.")
flags.DEFINE_bool(
    "document_boundaries",
    None,
    "No position attends across a document start (the data's document_starts), through the XL "
    "memory included; a stream's memory is cleared there.",
)
flags.DEFINE_multi_integer(
    "knn_layers",
    None,
    "A block that uses memorizing attention, M: attention over the XL memory and over the k "
    "nearest of its kNN store's C entries per stream and head (repeat the flag). A supernet's "
    "block offers M in place of A; with --architecture, its M letters say it (--knn_layers must "
    "then agree). --choices with an M offers it in every block instead.",
)
flags.DEFINE_integer(
    "knn_memory_size", None, "C: the kNN store's entries per stream and head (>= knn_neighbors)."
)
flags.DEFINE_integer("knn_neighbors", None, "k: kNN entries retrieved per query and head.")
flags.DEFINE_enum(
    "knn_backend",
    None,
    ["exact", "scann"],
    "The kNN search of evaluation and generation: exact (default; any backend, XLA included) "
    "or scann (ScaNN on the host, for large stores; TensorFlow without XLA). Training always "
    "searches exactly. With --mode=evaluate it replaces the run's.",
)
flags.DEFINE_integer(
    "window",
    None,
    "W: each position of a sliding-window attention block (letter W) sees the W positions "
    "before it, the last segment's from the block's XL memory (all W where --mem_len >= W; "
    "otherwise the first W - M of a segment see fewer). Default: the segment length.",
)
flags.DEFINE_enum(
    "position",
    None,
    list(POSITIONS),
    "The position term of attention (A) and memorizing attention (M): xl (Transformer-XL's, "
    "the default), rotary, or t5 (a learned bias per head and distance bucket).",
)
flags.DEFINE_enum(
    "ffn_activation",
    None,
    list(FFN_ACTIVATIONS),
    "The gated feed-forward's (letter G): swiglu (the default) or geglu, gated, with the inner "
    "width set for F's parameter count; gelu or relu: F's form with that activation.",
)
flags.DEFINE_integer(
    "recurrent_states",
    None,
    "S: the state vectors per stream of a block-recurrent block (letter R: --architecture, or "
    "--choices with an R) (default 16).",
)
flags.DEFINE_integer(
    "recurrent_block_size",
    None,
    "W: an R block updates its state after every W positions of a segment, and gradients flow "
    "through the seq_len / W updates of a segment: keep seq_len / W >= 2 (default 16).",
)
flags.DEFINE_enum(
    "recurrent_gate",
    None,
    ["fixed", "lstm"],
    "The R block's state update: fixed (meliad's fixed:skip, a learned constant gate, the "
    "default) or lstm (lstm:single, input and forget gates from an MLP of the attention).",
)
flags.DEFINE_float("max_lr", DEFAULT["max_lr"], "Peak learning rate.")
flags.DEFINE_integer(
    "warmup_steps", DEFAULT["warmup_steps"], "Linear warmup steps, then cosine decay to 0."
)
flags.DEFINE_float("tau_start", DEFAULT["tau_start"], "Gumbel-softmax temperature at step 0.")
flags.DEFINE_float("tau_end", DEFAULT["tau_end"], "Temperature at the last step.")
flags.DEFINE_enum(
    "tau_schedule", DEFAULT["tau_schedule"], TAU_SCHEDULES, "Shape of the tau annealing."
)
flags.DEFINE_enum("opt_name", DEFAULT["opt_name"], OPTIMIZERS, "Optimizer.")
flags.DEFINE_integer("epochs", DEFAULT["epochs"], "Epochs; the schedules span all of them.")
flags.DEFINE_integer(
    "max_steps", DEFAULT["max_steps"], "Stop after this many steps (schedules unchanged); 0: all."
)
flags.DEFINE_integer(
    "eval_every", DEFAULT["eval_every"], "Also evaluate the valid split every N steps (0: epochs)."
)
flags.DEFINE_multi_integer(
    "eval_steps",
    list(DEFAULT["eval_steps"]),
    "Also evaluate the valid split at these steps (repeat the flag), e.g. the steps of a "
    "published table.",
)
flags.DEFINE_integer(
    "checkpoint_every", DEFAULT["checkpoint_every"], "Checkpoint every N steps (and at epoch ends)."
)
flags.DEFINE_integer("log_every", DEFAULT["log_every"], "Log line every N steps.")
flags.DEFINE_string(
    "model_name", DEFAULT["model_name"], "Run name: the run directory is <log_dir>/<name>."
)
# --log_dir is absl.logging's flag ("directory to write logfiles into"): run directories go
# there too, default "runs".
flags.DEFINE_string("checkpoint_dir", None, "Checkpoints (default <log_dir>/<name>/checkpoints).")
flags.DEFINE_bool(
    "resume",
    DEFAULT["resume"],
    "Continue the run in --checkpoint_dir from its newest intact checkpoint (same data, model "
    "and training flags, or a refusal); a run that reached its last step finishes its final "
    "evaluation.",
)
flags.DEFINE_bool(
    "allow_changed_training_flags",
    DEFAULT["allow_changed_training_flags"],
    "--resume with training flags (schedule, optimizer, the search's) other than the run's: the "
    "run continues with these, and its log records the change. Without it they are refused.",
)
flags.DEFINE_string(
    "init_from",
    None,
    "A fresh run starts from the weights of the newest checkpoint in this checkpoint directory "
    "(e.g. --architecture=AAFAFF from its supernet's <run>/checkpoints): the embedding, the "
    "output layer and each block's sublayers for its letters; same model shape required. The "
    "optimizer, step and schedules start afresh.",
)
flags.DEFINE_bool(
    "jit_compile",
    None,
    "XLA-compile the steps. Default: on with a GPU or TPU and on the JAX backend; off for "
    "TensorFlow on a CPU, where its XLA backward pass is slower "
    "(benchmarks/results/training_speed.md); off under --strategy (TPUs compile anyway) and, on "
    "TensorFlow, with --search=single_path.",
)
flags.DEFINE_enum(
    "strategy",
    "default",
    ["default", "mirrored", "multi_worker", "tpu"],
    "Devices: one (default); all GPUs of this machine (mirrored); several machines, each with "
    "its TF_CONFIG (multi_worker); a TPU (tpu, see --tpu). The data's batch_size is the global "
    "batch, split by rows over the replicas (docs/devices.md).",
)
flags.DEFINE_string(
    "tpu", "", "--strategy=tpu: the TPU's name or grpc:// address; 'local' on a TPU VM (Colab)."
)
flags.DEFINE_bool(
    "mixed_precision", DEFAULT["mixed_precision"], "mixed_float16 compute (for GPUs)."
)
flags.DEFINE_integer(
    "steps_per_execution", DEFAULT["steps_per_execution"], "Training steps per compiled call."
)
flags.DEFINE_bool(
    "tail_capacity", DEFAULT["tail_capacity"], "Score adaptive-softmax tails only where needed."
)
flags.DEFINE_bool(
    "unigram_bias_init",
    DEFAULT["unigram_bias_init"],
    "Start the output biases at the training split's unigram.",
)
flags.DEFINE_integer("seed", DEFAULT["seed"], "Random seed (weights, dropout, Gumbel noise).")
flags.DEFINE_float(
    "divergence_factor",
    DEFAULT["divergence_factor"],
    "Stop when the training loss exceeds this multiple of log(vocabulary size), the loss of a "
    "uniform guess, or is not finite (0: only when not finite).",
)
flags.DEFINE_enum(
    "arch_optimizer",
    DEFAULT["arch_optimizer"],
    ARCH_OPTIMIZERS,
    "The choice logits' own optimizer (PAR, DARTS, FBNet): adam (betas (--arch_beta_1, 0.999)) "
    "or sgd (momentum 0.9); none: the logits train with the weights' optimizer and schedule.",
)
flags.DEFINE_float("arch_lr", DEFAULT["arch_lr"], "The choice logits' learning rate (constant).")
flags.DEFINE_float("arch_beta_1", DEFAULT["arch_beta_1"], "The logits' Adam beta_1.")
flags.DEFINE_float(
    "arch_weight_decay", DEFAULT["arch_weight_decay"], "The logits' decoupled weight decay."
)
flags.DEFINE_integer(
    "arch_start_step",
    None,
    "The logits stay exactly as initialised before this global step (default: --warmup_steps, "
    "the weights' warm-up).",
)
flags.DEFINE_float(
    "arch_fraction",
    DEFAULT["arch_fraction"],
    "Bilevel search: this share of the batches after --arch_start_step (evenly spread, e.g. 0.2: "
    "every 5th) updates only the logits, the others only the weights; 0: both on every batch.",
)
flags.DEFINE_enum(
    "cost",
    DEFAULT["cost"],
    COSTS,
    "The search's cost term: the expected FLOPs per token of the sampled architecture (flops, "
    "from the choice registry) or its latency on a device (latency, --latency_table).",
)
flags.DEFINE_float("cost_weight", DEFAULT["cost_weight"], "w: the cost term's weight.")
flags.DEFINE_float(
    "cost_target",
    DEFAULT["cost_target"],
    "T, as a multiple of the cost of the standard Transformer-XL of the same depth (AFAF...).",
)
flags.DEFINE_enum(
    "cost_form",
    DEFAULT["cost_form"],
    FORMS,
    "additive: CE + w (E[cost] - T) / T (ProxylessNAS); multiplicative: CE (E[cost] / T)^w "
    "(FBNet, MnasNet); hinge: CE + w max(E[cost] - T, 0) / T (no pressure at or below T).",
)
flags.DEFINE_string(
    "latency_table", None, "--cost=latency: a JSON table of latency_table.py at this shape."
)
flags.DEFINE_string("eval_directory", None, "--mode=evaluate: split directory (default: test).")
flags.DEFINE_string("checkpoint", None, "--mode=evaluate: checkpoint file (default: latest).")
FLAGS = flags.FLAGS


def model_config_from_flags():
    """The preset, with every model flag given on the command line applied over it."""
    overrides = {
        name: getattr(FLAGS, name) for name in MODEL_FLAGS if getattr(FLAGS, name) is not None
    }
    if "cutoffs" in overrides:
        overrides["cutoffs"] = tuple(c for c in overrides["cutoffs"] if c != 0)
    if "knn_layers" in overrides:
        overrides["knn_layers"] = tuple(overrides["knn_layers"])
    config = dataclasses.replace(PRESETS[FLAGS.preset], **overrides)
    if config.architecture is not None:  # a rule becomes its letters, which config.json records
        from par_xl.models.rules import expand_architecture

        try:
            letters = expand_architecture(config.architecture, config.num_layers)
        except ValueError as error:
            raise ConfigError(f"--{error}") from None
        config = dataclasses.replace(config, architecture=letters)
    return config


def default_jit_compile():
    """XLA on a GPU or TPU, and always on the JAX backend: uncompiled, JAX runs op by op (the
    tiny preset: 2 s/step, against 0.23 s compiled and 0.40 s for TensorFlow's graphs)."""
    import tensorflow as tf

    if keras_backend() == "jax":
        return True
    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def keras_backend():
    import keras

    return keras.backend.backend()


def evaluate(strategy, jit_compile):
    """`--mode=evaluate`: prints the run's results on `--eval_directory` as JSON."""
    from par_xl.training import trainer

    if not FLAGS.checkpoint_dir:
        raise ConfigError("--mode=evaluate needs --checkpoint_dir.")
    result = trainer.evaluate(
        FLAGS.checkpoint_dir, FLAGS.eval_directory, FLAGS.checkpoint, jit_compile,
        strategy, FLAGS.knn_backend, FLAGS.choice_at_inference,
    )  # fmt: skip
    print(json.dumps(result, indent=2))


def train(strategy, jit_compile):
    """`--mode=train`: the configurations from the flags, then the run."""
    from par_xl.training import trainer

    for name in ("train_directory", "valid_directory"):
        if not getattr(FLAGS, name):
            raise ConfigError(f"--{name} is required.")
    model_config = model_config_from_flags()
    single_path = model_config.search == "single_path" and model_config.architecture is None
    if single_path and keras_backend() == "tensorflow":
        if FLAGS.jit_compile:
            raise ConfigError(
                "--jit_compile does not work with --search=single_path on TensorFlow: its "
                "XLA program for the branch switch with dropout inside did not finish 2 "
                "steps in 15 minutes on this project's 2-core CPU. Leave --jit_compile "
                "unset (TensorFlow graphs), or use the JAX backend for XLA."
            )
        jit_compile = False
    train_config = TrainConfig(
        **{
            f.name: getattr(FLAGS, f.name)
            for f in dataclasses.fields(TrainConfig)
            if f.name not in ("jit_compile", "log_dir", "eval_steps")
        },
        eval_steps=tuple(FLAGS.eval_steps or ()),
        jit_compile=jit_compile,
        log_dir=FLAGS.log_dir or "runs",
    )
    trainer.train(model_config, train_config, strategy)


def check_flag_combinations():
    """Refuses flags that the chosen --mode or --strategy would silently ignore."""
    if FLAGS.tpu and FLAGS.strategy != "tpu":
        raise ConfigError(
            f"--tpu={FLAGS.tpu} is used only with --strategy=tpu, received "
            f"--strategy={FLAGS.strategy}."
        )
    if FLAGS.allow_changed_training_flags and not FLAGS.resume:
        raise ConfigError(
            "--allow_changed_training_flags is used only with --resume: a new run takes any "
            "training flags."
        )
    if FLAGS.mode == "train":
        for name in ("checkpoint", "eval_directory"):
            if getattr(FLAGS, name):
                raise ConfigError(
                    f"--{name} is used only with --mode=evaluate; training resumes from the "
                    "newest checkpoint (--resume) and evaluates --valid_directory and "
                    "--test_directory."
                )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf

    from par_xl.data import DataError
    from par_xl.distribution import strategies
    from par_xl.files import DiskFull
    from par_xl.training.callbacks import TrainingDiverged, TrainingInterrupted
    from par_xl.training.checkpoints import CheckpointError

    try:
        check_flag_combinations()
        # The strategy first: multi-worker and TPU set-up must precede any TensorFlow work.
        strategy = strategies.make_strategy(FLAGS.strategy, FLAGS.tpu)
        jit_compile = strategies.jit_compile_for(
            FLAGS.strategy, FLAGS.jit_compile, default_jit_compile
        )
        (evaluate if FLAGS.mode == "evaluate" else train)(strategy, jit_compile)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 3
    except TrainingInterrupted as error:  # before the bare KeyboardInterrupt it derives from
        print(f"train.py: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("train.py: interrupted", file=sys.stderr)
        return 130
    except (DiskFull, OSError) as error:  # a full disk, an unwritable or failing device
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except (MemoryError, tf.errors.ResourceExhaustedError) as error:
        print(f"train.py: error: {out_of_resources(error)}", file=sys.stderr)
        return 1
    return 0


def out_of_resources(error):
    """The message for TensorFlow's ResourceExhaustedError (memory, or a full disk under a
    TensorFlow writer) or a MemoryError: what ran out, and which flags to lower."""
    text = (getattr(error, "message", None) or str(error) or type(error).__name__).splitlines()[0]
    if "No space left on device" in text:
        return (f"no space left on a device ({text}). Free space there, then run again with "
                "--resume.")  # fmt: skip
    return (f"out of memory ({text}): lower --d_model, --d_ffn, --num_layers, --mem_len or "
            "--knn_memory_size, or build the data with a smaller --batch_size.")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
