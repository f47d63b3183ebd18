"""Checkpoints of a training run: model + optimizer weights, written atomically, verified, rotated.

A checkpoint is a Keras weights file, `ckpt-<step>.weights.h5` (weights, optimizer slots and
its step counter, XL memory, Gumbel temperatures), plus `ckpt-<step>.state.npz` with the
random-generator states of dropout and Gumbel noise, which Keras leaves out of weights files:
a resumed run draws the same noise as an uninterrupted one. The data position follows from
the step (the data order is fixed), so resuming continues with the right next batch and the
same memory.

The XL memory is saved with all its streams, `(B, M, D)` as one device holds it, also when a
tf.distribute strategy keeps it per replica (`PARTransformerXL.save_own_variables`): a
checkpoint written under any strategy restores under any other, or on one device, each replica
taking its rows back.

Files are written under a temporary name and renamed when complete (`par_xl.files`). Each
checkpoint has its own record, `ckpt-<step>.record.json`, written last: the size and SHA-256
of both its files as written, and the run it belongs to (`run_identity.RunIdentity`). Every
load checks the files against the record, whatever else is there or missing: a checkpoint
without its record is incomplete (killed while saving) or damaged, unless it comes from
before records (then `latest.json`'s manifest, or reading the files whole, stands in). A
damaged newest checkpoint (a truncated copy, a flipped bit, a disk error) falls back to the
newest intact one, with a warning naming the damaged file; a checkpoint of another run is
refused. `latest.json` names the newest. Rotation keeps the `keep` newest intact checkpoints.
"""

import json
import logging
import zipfile
from pathlib import Path

import h5py
import numpy as np
from keras import ops

from par_xl.files import atomic_path, atomic_write_text, reporting_full_disk, sha256_file
from par_xl.training.run_identity import check_checkpoint

LATEST = "latest.json"
CONFIG = "config.json"
_WEIGHTS = ".weights.h5"
_STATE = ".state.npz"
_RECORD = ".record.json"
_DAMAGED = ".damaged"

log = logging.getLogger("par_xl")


class CheckpointError(ValueError):
    """No usable checkpoint: none there, all damaged, one of another run, or one that does not
    fit the model."""


class CheckpointNotSaved(OSError):
    """A checkpoint could not be written (other than for a full disk: `DiskFull`)."""


class CheckpointManager:
    """Saves, verifies, finds and restores the checkpoints of one run directory.

    Args:
        directory: where the checkpoints go (created on first save).
        keep: how many of the newest intact checkpoints to keep.
        owner: the run the checkpoints belong to (a `run_identity.RunIdentity`), recorded in
            each record and checked on load; None for a run from before run identities
            (checkpoints without a record are then checked by reading them whole, and one
            that records a run is another run's).
    """

    def __init__(self, directory, keep=2, owner=None):
        self.directory = Path(directory)
        self.keep = keep
        self.owner = owner
        # A run with an identity has a record for each checkpoint (a run from before them,
        # resumed, has an identity from then on, and older checkpoints without records).
        self.records_required = owner is not None
        self.restored = None  # path of the checkpoint the last `restore` loaded

    def steps(self):
        """Steps of the checkpoints on disk (intact or not), oldest first."""
        if not self.directory.is_dir():
            return []
        names = (p.name for p in self.directory.glob(f"ckpt-*{_WEIGHTS}"))
        return sorted(int(n[5 : -len(_WEIGHTS)]) for n in names if n[5 : -len(_WEIGHTS)].isdigit())

    def path(self, step):
        return self.directory / f"ckpt-{step:08d}{_WEIGHTS}"

    @staticmethod
    def state_path(weights_path):
        return Path(str(weights_path).replace(_WEIGHTS, _STATE))

    @staticmethod
    def record_path(weights_path):
        return Path(str(weights_path).replace(_WEIGHTS, _RECORD))

    def files(self, weights_path):
        """A checkpoint's files: weights, random-generator states, record."""
        return (Path(weights_path), self.state_path(weights_path), self.record_path(weights_path))

    @staticmethod
    def _seed_states(model):
        return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]

    # The manifest.

    def manifest(self):
        """`{file name: {"bytes", "sha256"}}` from `latest.json`; empty if it is missing or
        damaged (then checkpoints are checked by reading them whole)."""
        marker = self.directory / LATEST
        try:
            files = json.loads(marker.read_text())["files"]
            return {str(k): dict(bytes=int(v["bytes"]), sha256=str(v["sha256"]))
                    for k, v in files.items()}  # fmt: skip
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("%s is damaged (%s): checking the checkpoints by reading them", marker,
                        type(error).__name__)  # fmt: skip
            return {}

    def record(self, path):
        """`(record, reason)`: the checkpoint's record (a dict) or None, and why it is unusable
        (None if the record is intact or absent)."""
        file = self.record_path(path)
        try:
            record = json.loads(file.read_text())
            for name in (Path(path).name, self.state_path(path).name):
                entry = record["files"][name]
                if not (isinstance(entry["bytes"], int) and isinstance(entry["sha256"], str)):
                    raise TypeError(f"files.{name} holds no bytes and sha256")
            if not isinstance(record.get("run", {}), dict | None):
                raise TypeError("run is not an object")
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            return None, f"its record {file.name} is damaged ({type(error).__name__}: {error})"
        return record, None

    def damage(self, path, manifest=None, thorough=True):
        """Why the checkpoint `path` cannot be trusted, or None if it is intact.

        Its files must have the size and (if `thorough`) the SHA-256 its record gives. Without
        a record (a checkpoint from before records), `latest.json`'s manifest stands in, else
        the files must read back whole; a run with an identity (`owner`) has records, so a
        missing one means an incomplete or damaged checkpoint.
        """
        path = Path(path)
        for file in (path, self.state_path(path)):
            if not file.is_file():
                return f"{file.name} is missing"
        record, reason = self.record(path)
        if reason:
            return reason
        if record is not None:
            expected = record["files"]
        elif path.parent.resolve() != self.directory.resolve():
            expected = {}  # latest.json lists this directory's checkpoints only
        else:
            expected = self.manifest() if manifest is None else manifest
        if record is None and self.records_required and path.name not in expected:
            return (f"its record {self.record_path(path).name} is missing (the save did not "
                    "finish, or the file was removed)")  # fmt: skip
        for file in (path, self.state_path(path)):
            entry = expected.get(file.name)
            if entry is None:
                reason = _unreadable(file)
                if reason:
                    return f"{file.name} cannot be read ({reason})"
            elif file.stat().st_size != entry["bytes"]:
                return (f"{file.name} has {file.stat().st_size} bytes, {entry['bytes']} "
                        "were written")  # fmt: skip
            elif thorough and sha256_file(file) != entry["sha256"]:
                return f"{file.name} does not match the SHA-256 recorded when it was written"
        return None

    def latest(self):
        """Path of the newest intact checkpoint, or None."""
        manifest = self.manifest()
        for step in reversed(self.steps()):
            if self.damage(self.path(step), manifest) is None:
                return self.path(step)
        return None

    # Saving.

    def save(self, model, step):
        """Writes the model's (and its optimizer's) variables as the checkpoint of `step`.

        A full disk raises `DiskFull` (see `par_xl.files`), any other failure to write
        `CheckpointNotSaved`, at once: the partial files are removed and the previous
        checkpoints are kept.
        """
        final = self.path(step)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with reporting_full_disk(final, self._size_estimate(model),
                                     "then run again with --resume"):  # fmt: skip
                kept = self._write(model, step)
        except OSError as error:
            latest = self.latest()
            raise CheckpointNotSaved(
                f"could not save the checkpoint {final}: {error.strerror or error}"
                + (f" ({error.filename})" if error.filename else "")
                + f". Was {self.directory} changed by another process? Only one run may use a "
                f"checkpoint directory. Training stopped at step {step}; "
                + (f"the last checkpoint saved is {latest}." if latest else "none was saved.")
            ) from error
        for old in self.steps():
            if old not in kept and old < step:
                for file in self.files(self.path(old)):
                    file.unlink(missing_ok=True)
        return final

    def _write(self, model, step):
        """The checkpoint's files, its record, then `latest.json`; returns the steps to keep."""
        final, state = self.path(step), self.state_path(self.path(step))
        with atomic_path(final, suffix=_WEIGHTS) as tmp, atomic_path(state) as tmp_state:
            model.save_weights(tmp)
            seeds = [ops.convert_to_numpy(v) for v in self._seed_states(model)]
            with open(tmp_state, "wb") as f:  # a file object: np.savez adds no suffix
                np.savez(f, *seeds)
        files = {file.name: {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
                 for file in (final, state)}  # fmt: skip
        record = {"step": step, "files": files,
                  "run": self.owner.as_record() if self.owner is not None else None}  # fmt: skip
        atomic_write_text(self.record_path(final), json.dumps(record, indent=1))
        manifest = {**self.manifest(), **files}
        kept = self._kept_steps(manifest)
        manifest = {k: v for k, v in manifest.items() if _step_of(k) in kept}
        document = {"step": step, "file": final.name, "files": manifest}
        atomic_write_text(self.directory / LATEST, json.dumps(document, indent=1))
        return kept

    def _kept_steps(self, manifest):
        """The `keep` newest intact checkpoints' steps (the one just saved first)."""
        kept = []
        for step in reversed(self.steps()):
            if len(kept) == self.keep:
                break
            if self.damage(self.path(step), manifest, thorough=False) is None:
                kept.append(step)
        return kept

    def _size_estimate(self, model):
        """Bytes a checkpoint takes: the newest one's size, else the variables' size."""
        steps = self.steps()
        if steps and self.path(steps[-1]).is_file():
            return self.path(steps[-1]).stat().st_size
        variables = model.variables + (model.optimizer.variables if model.optimizer else [])
        return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)

    # Restoring.

    def restore(self, model, path=None, set_aside_damaged=False, flag="--checkpoint"):
        """Loads a checkpoint into a built, compiled model; returns its global step.

        Without `path`, the newest intact checkpoint: each newer damaged one is skipped with
        a warning naming it, and with `set_aside_damaged` renamed to `<name>.damaged` so that
        training does not meet it again. A given `path` (from the flag `flag`) must be an
        intact checkpoint's weights file. Either way it must belong to this run (`owner`).
        """
        manifest = self.manifest()
        given = flag if path is not None else None
        if path is not None:
            path = self._given(path, flag)
            reason = self.damage(path, manifest)
            if reason:
                raise CheckpointError(f"{flag}: checkpoint {path} is damaged: {reason}.")
        else:
            damaged = []
            for step in reversed(self.steps()):
                reason = self.damage(self.path(step), manifest)
                if reason is None:
                    path = self.path(step)
                    break
                damaged.append(self.path(step))
                log.warning("checkpoint %s is damaged (%s): falling back to an older one",
                            self.path(step), reason)  # fmt: skip
            if path is None:
                raise CheckpointError(
                    f"no intact checkpoint in {self.directory}"
                    + (f" (damaged: {', '.join(p.name for p in damaged)})" if damaged else "")
                    + "."
                )
            if damaged:
                log.warning("using checkpoint %s, the newest intact one", path)
            if set_aside_damaged:
                for bad in damaged:
                    for file in self.files(bad):
                        if file.exists():
                            file.replace(file.with_name(file.name + _DAMAGED))
        record = self.record(path)[0] or {}
        check_checkpoint(self.owner, path, record.get("run"), self.directory, given)
        self._load(model, path)
        self.restored = path
        return int(model.optimizer.iterations.numpy()) if model.optimizer is not None else 0

    def _given(self, path, flag):
        """A checkpoint file given by `flag`: its weights file, or a CheckpointError that says
        which file to give."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{flag}: {path} does not exist.")
        for suffix, what in ((_STATE, "random-generator states"), (_RECORD, "record")):
            if path.name.endswith(suffix):
                weights = path.with_name(path.name[: -len(suffix)] + _WEIGHTS)
                raise CheckpointError(
                    f"{flag}={path} is the {what} of a checkpoint, not the checkpoint: give its "
                    f"weights file, {flag}={weights}."
                )
        if not path.name.endswith(_WEIGHTS):
            raise CheckpointError(
                f"{flag}={path} is not a checkpoint: expected a ckpt-<step>{_WEIGHTS} file of "
                "the run (default: its newest)."
            )
        return path

    def _load(self, model, path):
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(path)
        except ValueError as error:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model (another model configuration or "
                f"batch size?): {error}"
            ) from None
        state = self.state_path(path)
        with np.load(state) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        variables = self._seed_states(model)
        if len(values) != len(variables):
            raise CheckpointError(
                f"{state} holds {len(values)} random-generator states, the model has "
                f"{len(variables)}: the checkpoint belongs to another model configuration."
            )
        for variable, value in zip(variables, values):
            variable.assign(value)


def _step_of(name):
    digits = name[5:].split(".")[0]
    return int(digits) if name.startswith("ckpt-") and digits.isdigit() else None


def _unreadable(file):
    """Why `file` (a weights .h5 or a state .npz) does not read back whole, or None."""
    try:
        if file.name.endswith(_WEIGHTS):
            with h5py.File(file, "r") as h5:
                h5.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
        else:
            with np.load(file) as saved:
                for name in saved.files:
                    saved[name]
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        return f"{type(error).__name__}: {str(error)[:120]}"
    return None
