"""Each check of `run_layer_test` fails on a layer with the fault it is there to catch.

`Probe` is a small layer that passes every check, and breaks one when `fault` names it.
"""

import keras
import numpy as np
import pytest
from keras import ops
from layer_test_case import (
    check_config_round_trip,
    check_eager_call,
    check_fit_step,
    check_mixed_precision,
    check_saved_model,
    check_symbolic_call,
    check_weight_counts,
    run_layer_test,
)

INPUTS = (np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32"),)
SHAPE = (2, 3, 4)


@keras.saving.register_keras_serializable(package="par_xl_tests")
class Probe(keras.layers.Layer):
    """`Dense(units)(x @ kernel * factor)`; `fault` switches one defect on."""

    def __init__(self, units=4, factor=2.0, fault=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.factor = factor
        self.fault = fault

    def build(self, inputs_shape):
        self.kernel = self.add_weight(name="kernel", shape=(inputs_shape[-1], self.units))
        if self.fault == "unused_weight":  # no gradient reaches it
            self.unused = self.add_weight(name="unused", shape=(self.units,))
        if self.fault == "state_outside_weights":  # neither saved nor set by set_weights
            self.offset = np.random.default_rng().normal(size=self.units).astype("float32")
        policy = None if self.fault == "sublayer_ignores_policy" else self.dtype_policy
        self.dense = keras.layers.Dense(self.units, name="dense", dtype=policy)
        self.dense.build((*inputs_shape[:-1], self.units))
        self.built = True

    def call(self, inputs, training=None):
        outputs = self.dense(ops.matmul(inputs, self.kernel) * self.factor)
        if self.fault == "state_outside_weights":
            outputs = outputs + ops.cast(self.offset, outputs.dtype)
        if self.fault == "nan_in_training" and training:
            outputs = outputs * np.nan
        if self.fault == "overflows_in_float16":
            outputs = outputs * 1e5
        if self.fault == "float32_output":
            outputs = ops.cast(outputs, "float32")
        return outputs

    def compute_output_shape(self, inputs_shape):
        extra = 1 if self.fault == "wrong_output_shape" else 0
        return (*inputs_shape[:-1], self.units + extra)

    def get_config(self):
        config = {**super().get_config(), "units": self.units, "fault": self.fault}
        if self.fault != "config_drops_factor":
            config["factor"] = self.factor
        return config


def test_a_sound_layer_passes_every_check():
    run_layer_test(
        Probe,
        dict(units=4, factor=3.0),
        INPUTS[0],
        expected_output_shape=SHAPE,
        expected_num_trainable_weights=3,  # kernel, dense kernel and bias
        expected_num_non_trainable_weights=0,
    )


def test_config_round_trip_catches_a_dropped_argument():
    with pytest.raises(AssertionError, match="same weights: other output"):
        check_config_round_trip(Probe, dict(factor=3.0, fault="config_drops_factor"), INPUTS)


def test_symbolic_call_catches_a_wrong_output_shape():
    with pytest.raises(AssertionError, match="symbolic shape"):
        check_symbolic_call(Probe, dict(fault="wrong_output_shape"), INPUTS, SHAPE, "float32")


def test_eager_call_catches_non_finite_training_outputs():
    with pytest.raises(AssertionError, match="non-finite output"):
        check_eager_call(Probe, dict(fault="nan_in_training"), INPUTS, SHAPE, "float32")


def test_weight_counts_are_checked():
    layer = check_eager_call(Probe, dict(fault="unused_weight"), INPUTS, SHAPE, "float32")
    with pytest.raises(AssertionError, match="4 trainable weights"):
        check_weight_counts(layer, trainable=3)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_fit_step_catches_a_weight_without_gradient():
    with pytest.raises(AssertionError, match="unused did not change"):
        check_fit_step(Probe, dict(fault="unused_weight"), INPUTS)


def test_saved_model_catches_state_outside_the_weights():
    with pytest.raises(AssertionError, match="loaded model: other output"):
        check_saved_model(Probe, dict(fault="state_outside_weights"), INPUTS)


@pytest.mark.parametrize(
    "fault,message",
    [
        ("sublayer_ignores_policy", "dense computes under float32"),
        ("float32_output", "mixed_float16 output is float32"),
        ("overflows_in_float16", "non-finite output under mixed_float16"),
    ],
)
def test_mixed_precision_catches_policy_faults(fault, message):
    with pytest.raises(AssertionError, match=message):
        check_mixed_precision(Probe, dict(fault=fault), INPUTS, "float16", 2e-2)
