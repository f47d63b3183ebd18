"""Tiny PARTransformerXL models for model-level tests, and the checks every stateful one passes.

A test module makes one `TinyModels` of its configuration; the checks (resume, save and load)
take it, so each kind of state (XL memory, kNN stores, LEAP sums, the block-recurrent cell's
vectors) is held to the same standard by the same code.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from par_xl.models import PARTransformerXL
from par_xl.training.checkpoints import CheckpointManager


def numpy(x):
    return ops.convert_to_numpy(x)


class TinyModels:
    """Seeded tiny models of one configuration, their random tokens and context batches.

    Args:
        batch, segment: the shape `(B, T)` a model is built for and a batch of `batches` has.
        fit_config: what `compiled` adds to the configuration (e.g. dropout, a kNN layer).
        **config: `PARTransformerXL` arguments; `vocab_size` is required.
    """

    def __init__(self, batch, segment, fit_config=None, **config):
        self.batch, self.segment, self.config = batch, segment, config
        self.vocab = config["vocab_size"]
        self.fit_config = {"dropout_rate": 0.1, **(fit_config or {})}

    def model(self, seed=0, batch=None, segment=None, **overrides) -> PARTransformerXL:
        """Built for `(batch, segment)`; a supernet's blocks get distinct random choice logits,
        so every branch matters."""
        keras.utils.set_random_seed(seed)
        model = PARTransformerXL(**{**self.config, **overrides})
        model.build((batch or self.batch, segment or self.segment))
        rng = np.random.default_rng(seed)
        for block in model.blocks:
            if block.choice is None:
                block.gumbel.logits.assign(rng.normal(size=len(block.choices)).astype("float32"))
        return model

    def tokens(self, shape, seed=1) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, self.vocab, size=shape).astype("int32")

    def compiled(self, jit_compile, run_eagerly=False, **overrides) -> PARTransformerXL:
        """`model` with `fit_config`, compiled with Adam(1e-2), its optimizer built."""
        model = self.model(**{**self.fit_config, **overrides})
        model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile,
                      run_eagerly=run_eagerly)  # fmt: skip
        model.optimizer.build(model.trainable_variables)
        return model

    def batches(self, count, seed=10) -> tf.data.Dataset:
        """`count` batches `(B, T)` of inputs and targets."""
        shape = (count, self.batch, self.segment)
        return tf.data.Dataset.from_tensor_slices((self.tokens(shape, seed),
                                                   self.tokens(shape, seed + 1)))  # fmt: skip


def state_arrays(model) -> list:
    """Every array of the model's state (XL memory, kNN stores, recurrent states), flat."""
    return [np.asarray(a) for a in keras.tree.flatten(model.get_state())]


def assert_resume_is_exact(tiny, directory, steps, **overrides) -> PARTransformerXL:
    """A checkpoint after half of `steps` batches holds the weights, optimizer and the whole
    state: training resumed from it into a model of other weights equals training without the
    interruption, to float rounding. Returns the resumed model."""
    compiled = dict(jit_compile=False, run_eagerly=True, **overrides)  # eager: quicker here
    uninterrupted = tiny.compiled(**compiled)
    uninterrupted.fit(tiny.batches(steps), shuffle=False, verbose=0)
    interrupted = tiny.compiled(**compiled)
    interrupted.fit(tiny.batches(steps).take(steps // 2), shuffle=False, verbose=0)
    manager = CheckpointManager(directory)
    manager.save(interrupted, steps // 2)
    resumed = tiny.compiled(**{**compiled, "seed": 5})  # other weights and noise until restored
    assert manager.restore(resumed) == steps // 2
    for a, b in zip(state_arrays(interrupted), state_arrays(resumed), strict=True):
        np.testing.assert_array_equal(b, a)
    resumed.fit(tiny.batches(steps).skip(steps // 2), shuffle=False, verbose=0)
    expected = uninterrupted.variables + uninterrupted.optimizer.variables
    for a, b in zip(expected, resumed.variables + resumed.optimizer.variables, strict=True):
        np.testing.assert_allclose(numpy(b), numpy(a), rtol=1e-5, atol=1e-6, err_msg=a.path)
    return resumed


def assert_saved_and_loaded(tiny, directory, **overrides) -> PARTransformerXL:
    """A model that has read a segment, saved as `.keras` and as weights: the loaded model (and
    one of other weights given the saved ones) reads the next segment with the saved state;
    cleared, the state changes the output. Returns the model, its state cleared."""
    model = tiny.model(**overrides)
    shape = (tiny.batch, tiny.segment)
    first, second = tiny.tokens(shape, 12), tiny.tokens(shape, 13)
    model(first)
    model.save(directory / "model.keras")
    model.save_weights(directory / "model.weights.h5")
    expected = numpy(model(second))  # reads the state `first` left
    loaded = keras.saving.load_model(directory / "model.keras")
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(numpy(loaded(second)), expected, rtol=1e-6, atol=1e-6)
    weights_only = tiny.model(**{**overrides, "seed": 3})
    weights_only.load_weights(directory / "model.weights.h5")
    np.testing.assert_allclose(numpy(weights_only(second)), expected, rtol=1e-6, atol=1e-6)
    model.reset_state()  # an empty state: another output
    assert np.abs(numpy(model(second)) - expected).max() > 1e-4
    model.reset_state()
    return model
