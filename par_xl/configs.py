"""Typed model and training configuration, named model presets, and their validation.

`train.py` fills these from flags; the trainer saves both beside every checkpoint
(`config.json`), so a run can be resumed, evaluated or sampled from without its flags.
"""

import dataclasses
import json
import math
from dataclasses import dataclass

from par_xl.checks import INT_MAX, bad_field
from par_xl.cost.objective import COSTS, FORMS
from par_xl.cutoffs import validate_cutoffs
from par_xl.layers.block_recurrent import validate_recurrent
from par_xl.layers.choices import DEFAULT_CHOICES, validate_architecture, validate_choices
from par_xl.layers.gated_feed_forward import validate_ffn_activation
from par_xl.layers.gumbel_choice import validate_choice_at_inference
from par_xl.layers.positions import validate_position
from par_xl.layers.stochastic_block import validate_search
from par_xl.models.par_transformer_xl import validate_knn, validate_shape

# The --opt_name values; `par_xl.training.optimizers` builds each (its test checks they agree).
OPTIMIZERS = ("adam", "adamw", "lamb", "sgd")
TAU_SCHEDULES = ("exponential", "linear")
# The --arch_optimizer values (par_xl.training.search_optimizer); "none": the choice logits
# train with the weights' optimizer (joint, as before the architecture optimizer).
ARCH_OPTIMIZERS = ("adam", "sgd", "none")


class ConfigError(ValueError):
    """A flag or configuration value that cannot work; the message names it."""


def _check_types(config, unbounded=()):
    """Each field of `config` of its annotated type, finite, and (an integer) at most INT_MAX
    except the `unbounded` ones: config.json is edited by hand, and absl parses --x=inf."""
    bad = bad_field(config)
    if bad:
        raise ConfigError(f"--{bad.name} must be {bad.expected}, received {bad.value!r}.")
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values = value if isinstance(value, tuple) else (value,)
        if field.name not in unbounded and any(type(v) is int and v > INT_MAX for v in values):
            raise ConfigError(f"--{field.name} must be at most {INT_MAX}, received {value!r}.")


def _as_flag_error(check, *args):
    """Runs a library check whose message starts with the argument's name; a failure becomes a
    ConfigError naming the flag (`--name must be ...`)."""
    try:
        check(*args)
    except ValueError as e:
        raise ConfigError(f"--{e}") from None


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a PARTransformerXL; `vocab_size` comes from the data's metadata."""

    vocab_size: int = 12000
    d_model: int = 128
    num_heads: int = 4
    d_ffn: int = 512
    num_layers: int = 6
    mem_len: int = 16
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    cutoffs: tuple[int, ...] = (250, 2500)
    proj_factor: int = 4
    tie_embeddings: bool = False
    choices: str = DEFAULT_CHOICES  # the letters each supernet block chooses among
    architecture: str | None = None
    search: str = "all_branches"
    straight_through: bool = False
    tau_is_trainable: bool = False
    choice_at_inference: str | None = None  # None: the search's own (see PARTransformerXL)
    initializer_range: float = 0.02
    document_boundaries: bool = False  # no attention across document starts (data v2)
    knn_layers: tuple[int, ...] = ()  # blocks with memorizing attention ("M"), supernet or not
    knn_memory_size: int = 2048  # C: kNN store entries per stream and head
    knn_neighbors: int = 32  # k: entries retrieved per query and head
    knn_backend: str = "exact"  # evaluation and generation: "exact" or "scann"
    window: int | None = None  # W of sliding-window attention (W); None: the segment length
    position: str = "xl"  # attention's (A, M) position term: "xl", "rotary" or "t5"
    ffn_activation: str = "swiglu"  # the gated feed-forward's (G)
    recurrent_states: int = 16  # S: block-recurrent (R) state vectors per stream
    recurrent_block_size: int = 16  # W: an R block updates its state every W positions
    recurrent_gate: str = "fixed"  # the R state's update: "fixed" or "lstm"

    def model_kwargs(self):
        """The configuration as `PARTransformerXL` keyword arguments."""
        return {
            **dataclasses.asdict(self),
            "cutoffs": list(self.cutoffs),
            "knn_layers": list(self.knn_layers),
        }

    def validate(self):
        """Raises ConfigError naming the first flag whose value cannot work."""
        _check_types(self)
        for name in ("vocab_size", "d_model", "num_heads", "d_ffn", "proj_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be positive, received {getattr(self, name)}.")
        _as_flag_error(validate_shape, self.d_model, self.num_heads, self.num_layers, self.mem_len)
        if not self.initializer_range > 0:
            raise ConfigError(
                f"--initializer_range must be positive, received {self.initializer_range}."
            )
        for name in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name} must be in [0, 1), received {getattr(self, name)}.")
        _as_flag_error(validate_cutoffs, self.cutoffs, self.vocab_size)
        _as_flag_error(validate_choices, self.choices)
        if self.architecture is not None:
            _as_flag_error(validate_architecture, self.architecture, self.num_layers)
        if self.choice_at_inference is not None:
            _as_flag_error(validate_choice_at_inference, self.choice_at_inference)
        _as_flag_error(validate_search, self.search)
        _as_flag_error(validate_knn, self.num_layers, self.architecture, self.choices,
                       self.knn_layers, self.knn_memory_size, self.knn_neighbors,
                       self.knn_backend)  # fmt: skip
        if self.window is not None and not (isinstance(self.window, int) and self.window >= 1):
            raise ConfigError(
                f"--window must be a positive integer (default: the segment length), received "
                f"{self.window!r}."
            )
        _as_flag_error(validate_position, self.position, self.d_model // self.num_heads)
        _as_flag_error(validate_ffn_activation, self.ffn_activation)
        _as_flag_error(validate_recurrent, self.recurrent_states, self.recurrent_block_size,
                       self.recurrent_gate)  # fmt: skip


PRESETS = {
    # The original PAR base_model.sh.
    "base": ModelConfig(),
    # The base width over long segments, where attention is a real share of the cost (the
    # search-mechanics runs): data built with --seq_len=128, memory as long.
    "base128": ModelConfig(mem_len=128),
    # PAR's depth (issue 29): 32 blocks of the base width over T = M = 64 (data built with
    # --seq_len=64). Attention is 67% of the standard AFAF... model's evaluation time here,
    # feed-forward 30%, embedding and softmax 3%: an attention block takes 2.2x a feed-forward
    # block's time (benchmarks/inference.py --preset=par32 --shapes=64x64, AFAF... against
    # all-F 1.59x and all-I 32x its tokens/s; PAR's p = 5 rule 1.28x).
    "par32": ModelConfig(num_layers=32, mem_len=64),
    # Trains in seconds on a CPU: tests, the notebook, the smoke run.
    "tiny": ModelConfig(d_model=32, num_heads=2, d_ffn=64, num_layers=3, mem_len=8),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the model shape."""

    train_directory: str
    valid_directory: str
    test_directory: str | None = None
    sp_model_prefix: str | None = None
    model_name: str = "par_xl"
    log_dir: str = "runs"
    checkpoint_dir: str | None = None  # default: <log_dir>/<model_name>/checkpoints
    max_lr: float = 1e-4
    warmup_steps: int = 4000
    tau_start: float = 1.0
    tau_end: float = 0.1
    tau_schedule: str = "exponential"
    opt_name: str = "adam"
    epochs: int = 20
    max_steps: int = 0  # stop early (the schedules still span all epochs); 0: no limit
    eval_every: int = 0  # also evaluate on the valid split every N steps; 0: epoch ends only
    eval_steps: tuple[int, ...] = ()  # and at these steps
    checkpoint_every: int = 1000
    log_every: int = 100
    jit_compile: bool = True
    mixed_precision: bool = False
    steps_per_execution: int = 1
    seed: int = 0
    resume: bool = False
    allow_changed_training_flags: bool = False  # --resume with other schedule, optimizer, search
    init_from: str | None = None  # a run's checkpoint directory to take the weights from
    tail_capacity: bool = True  # score adaptive-softmax tails sparsely (exact either way)
    unigram_bias_init: bool = True  # start the output biases at the training unigram
    divergence_factor: float = 3.0  # stop when the loss exceeds this x log(V); 0: non-finite only
    # The architecture search (par_xl.training.search_optimizer, par_xl.cost.objective).
    arch_optimizer: str = "adam"  # the choice logits' own optimizer; "none": the weights'
    arch_lr: float = 1e-2
    arch_beta_1: float = 0.5
    arch_weight_decay: float = 1e-3
    arch_start_step: int | None = None  # logits frozen before it; None: warmup_steps
    arch_fraction: float = 0.0  # share of batches that update only the logits; 0: joint
    cost: str = "none"  # the search's cost term: "none", "flops" or "latency"
    cost_weight: float = 0.1
    cost_target: float = 1.0  # T, a multiple of the standard AFAF... model's cost
    cost_form: str = "additive"  # or "multiplicative"
    latency_table: str | None = None  # latency_table.py's JSON, for --cost=latency

    def _validate_search(self):
        for name, allowed in (("arch_optimizer", ARCH_OPTIMIZERS), ("cost", COSTS),
                              ("cost_form", FORMS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"--{name} must be one of {allowed}, received {getattr(self, name)!r}."
                )
        for name in ("arch_lr", "cost_target"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"--{name} must be positive, received {getattr(self, name)}.")
        for name in ("arch_weight_decay", "cost_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"--{name} must be >= 0, received {getattr(self, name)}.")
        if not 0 <= self.arch_beta_1 < 1:
            raise ConfigError(f"--arch_beta_1 must be in [0, 1), received {self.arch_beta_1}.")
        if not 0 <= self.arch_fraction < 1:
            raise ConfigError(
                f"--arch_fraction must be in [0, 1), received {self.arch_fraction}."
            )
        if self.arch_start_step is not None and self.arch_start_step < 0:
            raise ConfigError(f"--arch_start_step must be >= 0, received {self.arch_start_step}.")
        if self.arch_fraction and self.arch_optimizer == "none":
            raise ConfigError(
                f"--arch_fraction={self.arch_fraction} needs an --arch_optimizer: with 'none' the "
                "logits train with the weights on every batch."
            )
        if self.cost == "latency" and not self.latency_table:
            raise ConfigError(
                "--cost=latency needs --latency_table (a table from latency_table.py)."
            )

    @property
    def architecture_start(self):
        """The step from which the choice logits train: `arch_start_step`, else the end of
        the weights' warm-up."""
        return self.warmup_steps if self.arch_start_step is None else self.arch_start_step

    @property
    def run_directory(self):
        return f"{self.log_dir}/{self.model_name}"

    @property
    def checkpoints(self):
        return self.checkpoint_dir or f"{self.run_directory}/checkpoints"

    def validate(self):
        """Raises ConfigError naming the first flag whose value cannot work."""
        _check_types(self, unbounded=("seed",))
        for name in ("train_directory", "valid_directory", "model_name", "log_dir"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} must not be empty.")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be in [0, 2**32), received {self.seed}.")
        for name in ("max_lr", "tau_start", "tau_end"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be positive, received {getattr(self, name)}.")
        for name in ("epochs", "checkpoint_every", "log_every", "steps_per_execution"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be positive, received {getattr(self, name)}.")
        for name in ("warmup_steps", "max_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, received {getattr(self, name)}.")
        if any(step < 1 for step in self.eval_steps):
            raise ConfigError(f"--eval_steps must be positive steps, received {self.eval_steps}.")
        if self.divergence_factor != 0 and not self.divergence_factor > 1:
            raise ConfigError(
                f"--divergence_factor must be 0 (off) or > 1, received {self.divergence_factor}."
            )
        if self.opt_name not in OPTIMIZERS:
            raise ConfigError(
                f"--opt_name must be one of {OPTIMIZERS}, received {self.opt_name!r}."
            )
        self._validate_search()
        if self.tau_schedule not in TAU_SCHEDULES:
            raise ConfigError(
                f"--tau_schedule must be one of {TAU_SCHEDULES}, received {self.tau_schedule!r}."
            )


def to_json(model_config, train_config):
    """Both configurations as one JSON document (what `config.json` holds)."""
    return json.dumps(
        {"model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config)},
        indent=2,
    )


def from_json(text):
    """Inverse of `to_json`: `(ModelConfig, TrainConfig)`."""
    document = json.loads(text)
    model = dict(document["model"])
    model["cutoffs"] = tuple(model["cutoffs"])
    model["knn_layers"] = tuple(model.get("knn_layers", ()))  # a run from before the field
    train = dict(document["train"])
    train["eval_steps"] = tuple(train.get("eval_steps", ()))  # a run from before the field
    train.setdefault("arch_optimizer", "none")  # a run from before it: logits with the weights
    return ModelConfig(**model), TrainConfig(**train)
