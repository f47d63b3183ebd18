"""Which run a checkpoint belongs to, and which of a run's flags a resume may change.

A run's identity is drawn when it starts and kept in its `config.json` (`run`): a random id,
its name and its checkpoint directory as it was then. Every checkpoint records it in its own
record (`ckpt-<step>.record.json`, see `checkpoints`), with the configuration hash: the
SHA-256 of the model configuration and the training data's identity (vocabulary, batch shape,
SentencePiece model...), the two things that decide what the weights mean. A checkpoint is
loaded only into the run it belongs to, so evaluation and generation never read one run's
weights under another run's configuration or tokenizer, and a config.json edited since the
checkpoint was written is noticed.

A resume continues the same training: besides the model flags and the data (`runs`), the
training flags (`TRAINING_FLAGS`: schedule, optimizer, the search's) must be the run's, unless
`--allow_changed_training_flags`; the run's log then records the change.
"""

import dataclasses
import hashlib
import json
import logging
import uuid
from pathlib import Path

from par_xl.configs import ConfigError, TrainConfig

log = logging.getLogger("par_xl")

# TrainConfig fields a resume may change: where things are, how often to log, evaluate and
# save, how fast to compute, when to stop. Every other field is a training flag
# (`training_flags`): a new field is one unless it is added here.
RUN_CONTROL = frozenset({
    "train_directory", "valid_directory", "test_directory", "sp_model_prefix",  # data: checked
    "model_name", "log_dir", "checkpoint_dir", "max_steps", "eval_every", "eval_steps",
    "checkpoint_every", "log_every", "jit_compile", "steps_per_execution", "divergence_factor",
    "resume", "allow_changed_training_flags",
    "init_from", "unigram_bias_init",  # a fresh run's start only
    "tail_capacity",  # the same loss either way
})  # fmt: skip


def training_flags():
    """The TrainConfig fields a resume keeps (see RUN_CONTROL)."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUN_CONTROL]


def configuration_hash(model_config, train_data):
    """SHA-256 of the model configuration and the training split's identity fields (a dict,
    as `config.json` records them): what the weights of a checkpoint are for."""
    from par_xl.training.runs import NOT_IDENTITY

    data = {k: v for k, v in sorted(train_data.items()) if k not in NOT_IDENTITY}
    document = {"model": dataclasses.asdict(model_config), "data": data}
    text = json.dumps(json.loads(json.dumps(document)), sort_keys=True)  # tuples as lists
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """A run's identity (`config.json`'s `run`) and configuration hash, as its checkpoints
    record them. `CheckpointManager` writes it into each record and, on load, refuses a
    checkpoint whose record names another run or configuration (`check_checkpoint`)."""

    id: str
    name: str
    checkpoint_dir: str
    config_sha256: str

    @classmethod
    def new(cls, train_config, config_sha256):
        directory = str(Path(train_config.checkpoints).resolve())
        return cls(uuid.uuid4().hex, train_config.model_name, directory, config_sha256)

    @classmethod
    def from_config(cls, run, config_sha256):
        """From `config.json`'s `run` (id, name, checkpoint_dir), or None for a run from
        before identities."""
        if run is None:
            return None
        return cls(run["id"], run["name"], run["checkpoint_dir"], config_sha256)

    def as_config(self):
        """`config.json`'s `run`."""
        return {"id": self.id, "name": self.name, "checkpoint_dir": self.checkpoint_dir}

    def as_record(self):
        """A checkpoint record's `run`."""
        return dataclasses.asdict(self)

    def describe(self):
        return f"'{self.name}' (id {self.id[:8]}, checkpoints in {self.checkpoint_dir})"


def check_checkpoint(owner, path, recorded, directory, flag=None):
    """Raises CheckpointError unless a checkpoint's recorded `run` (a dict; None for a
    checkpoint from before records) is `owner`, the run whose config.json is in `directory`,
    with its configuration. `owner` None is a run that records no identity (from before them):
    no recorded run is its. `flag` names the flag that gave `path` (e.g. "--checkpoint"), None
    for a checkpoint found in the run's directory."""
    from par_xl.training.checkpoints import CheckpointError

    if not recorded:
        return
    given = f"{flag}={path}" if flag else f"the checkpoint {path}"
    if owner is None or recorded.get("id") != owner.id:
        other = RunIdentity(**{f.name: str(recorded.get(f.name, "?"))
                               for f in dataclasses.fields(RunIdentity)})  # fmt: skip
        this = (
            f"'{owner.name}' (id {owner.id[:8]})"
            if owner
            else "a run whose config.json records no identity (from before them, or edited)"
        )
        advice = (f"use it with --checkpoint_dir={other.checkpoint_dir}" if flag
                  else f"move it out of {Path(path).parent}")  # fmt: skip
        raise CheckpointError(
            f"{given} belongs to the run {other.describe()}, not to the run in {directory}: "
            f"{this}. Its weights do not go with this run's configuration and tokenizer: "
            f"{advice}."
        )
    if recorded.get("config_sha256") != owner.config_sha256:
        raise CheckpointError(
            f"{given} was written under another configuration than {directory}/config.json "
            "now holds (its model or data fields were edited since?): restore that "
            "config.json, or use a checkpoint written under it."
        )


def changed_training_flags(previous, current):
    """`[(name, previous value, current value)]` of the training flags that differ, by their
    effect: `arch_start_step` None is the warm-up's end (`TrainConfig.architecture_start`), as
    runs before that default recorded it."""

    def value(config, name):
        return config.architecture_start if name == "arch_start_step" else getattr(config, name)

    return [
        (name, value(previous, name), value(current, name))
        for name in training_flags()
        if value(previous, name) != value(current, name)
    ]


def check_training_flags(previous, current, steps_per_epoch):
    """--resume: refuses training flags (`training_flags`) that differ from the run's
    `previous` TrainConfig, unless `current.allow_changed_training_flags`; then the run's log
    records each change."""
    changed = changed_training_flags(previous, current)
    if not changed:
        return
    described = "; ".join(f"{name} {old!r} -> {new!r}" for name, old, new in changed)
    if previous.epochs != current.epochs:
        described += (
            f" (the schedules would end at step {current.epochs * steps_per_epoch} instead of "
            f"{previous.epochs * steps_per_epoch})"
        )
    if not current.allow_changed_training_flags:
        raise ConfigError(
            f"--resume: the training flags differ from the checkpointed run's: {described}. "
            "Resume with the run's flags (its config.json lists them), or pass "
            "--allow_changed_training_flags to continue with these (the log records it)."
        )
    log.warning("--allow_changed_training_flags: the training flags change on this resume: %s",
                described)  # fmt: skip
