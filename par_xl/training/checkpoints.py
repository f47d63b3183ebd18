"""Checkpoints of a training run: model + optimizer weights, written atomically, kept rotated.

A checkpoint is a Keras weights file, `ckpt-<step>.weights.h5` (weights, optimizer slots and
its step counter, XL memory, Gumbel temperatures), plus `ckpt-<step>.state.npz` with the
random-generator states of dropout and Gumbel noise, which Keras leaves out of weights files:
a resumed run draws the same noise as an uninterrupted one. The data position follows from
the step (the data order is fixed), so resuming continues with the right next batch and the
same memory. Files are written under a temporary name and renamed when complete; `latest.json`
names the newest and is itself replaced atomically, so an interrupt never leaves a torn
checkpoint.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
from keras import ops

from par_xl.files import atomic_write_text

LATEST = "latest.json"
CONFIG = "config.json"
_NAME = re.compile(r"^ckpt-(\d+)\.weights\.h5$")


class CheckpointManager:
    """Saves, finds and restores the checkpoints of one run directory.

    Args:
        directory: where the checkpoints go (created on first save).
        keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory, keep=2):
        self.directory = Path(directory)
        self.keep = keep

    def steps(self):
        """Steps of the checkpoints on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step):
        return self.directory / f"ckpt-{step:08d}.weights.h5"

    @staticmethod
    def state_path(weights_path):
        return Path(str(weights_path).replace(".weights.h5", ".state.npz"))

    @staticmethod
    def _seed_states(model):
        return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]

    def latest(self):
        """Path of the newest complete checkpoint, or None."""
        marker = self.directory / LATEST
        if marker.is_file():
            path = self.directory / json.loads(marker.read_text())["file"]
            if path.is_file():
                return path
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def save(self, model, step):
        """Writes the model's (and its optimizer's) variables as the checkpoint of `step`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path(step)
        # Keras wants the .weights.h5 suffix, so the temporary name is a prefix.
        temporary = final.with_name(f".tmp-{os.getpid()}-{final.name}")
        model.save_weights(temporary)
        state = self.state_path(final)
        temporary_state = state.with_name(f".tmp-{os.getpid()}-{state.name}")
        seeds = [ops.convert_to_numpy(v) for v in self._seed_states(model)]
        np.savez(temporary_state, *seeds)
        os.replace(temporary_state, state)
        os.replace(temporary, final)
        atomic_write_text(self.directory / LATEST, json.dumps({"step": step, "file": final.name}))
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)
            self.state_path(self.path(old)).unlink(missing_ok=True)
        return final

    def restore(self, model, path=None):
        """Loads `path` (default: the latest checkpoint) into a built, compiled model.

        Returns the restored global step (the optimizer's iteration count).
        """
        path = Path(path) if path else self.latest()
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"No checkpoint to restore in {self.directory}"
                + (f" (looked for {path})" if path else "")
            )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
        state = self.state_path(path)
        if state.is_file():
            with np.load(state) as saved:
                values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            variables = self._seed_states(model)
            if len(values) != len(variables):
                raise ValueError(
                    f"{state} holds {len(values)} random-generator states, the model has "
                    f"{len(variables)}: the checkpoint belongs to another model configuration."
                )
            for variable, value in zip(variables, values):
                variable.assign(value)
        return int(model.optimizer.iterations.numpy()) if model.optimizer is not None else 0
