"""`run_layer_test`: the checks every par-xl layer passes, in the manner of keras-hub's
`TestCase.run_layer_test`.

A layer is called as `layer(*inputs)`, `inputs` being the tensor arguments of its `call` in
order (`None` for an absent optional one, such as RelativeAttention's memory with M = 0). Each
check is a function of its own, so that `tests/test_layers_harness.py` can show each one
failing on a layer with the fault it is there to catch.
"""

import inspect
import json
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    *,
    expected_output_dtype="float32",
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    mixed_precision_output_dtype="float16",
    mixed_precision_tolerance=2e-2,
    run_training_check=True,
):
    """Runs every check below on `layer_cls(**init_kwargs)` called on `input_data`.

    Args:
        layer_cls: the layer class (registered for serialization).
        init_kwargs: its constructor arguments.
        input_data: an array, or a tuple of arrays (and `None`s) passed positionally.
        expected_output_shape: the output's full shape.
        expected_output_dtype: the output's dtype under the float32 policy.
        expected_num_trainable_weights, expected_num_non_trainable_weights: checked when given.
        mixed_precision_output_dtype: the output's dtype under `mixed_float16`.
        mixed_precision_tolerance: how close the mixed-precision output stays to float32's.
        run_training_check: whether to run the compiled `fit` step.
    """
    inputs = input_data if isinstance(input_data, tuple) else (input_data,)
    check_config_round_trip(layer_cls, init_kwargs, inputs)
    expected = (expected_output_shape, expected_output_dtype)
    check_symbolic_call(layer_cls, init_kwargs, inputs, *expected)
    layer = check_eager_call(layer_cls, init_kwargs, inputs, *expected)
    check_weight_counts(layer, expected_num_trainable_weights, expected_num_non_trainable_weights)
    if run_training_check:
        check_fit_step(layer_cls, init_kwargs, inputs)
    check_saved_model(layer_cls, init_kwargs, inputs)
    check_mixed_precision(
        layer_cls,
        init_kwargs,
        inputs,
        mixed_precision_output_dtype,
        mixed_precision_tolerance,
    )


def check_config_round_trip(layer_cls, init_kwargs, inputs):
    """`get_config` is JSON, `from_config` and Keras (de)serialization give the same config,
    and the revived layer with the same weights gives the same output."""
    layer = layer_cls(**init_kwargs)
    expected = _numpy(layer(*inputs))
    config = layer.get_config()
    json.dumps(config)  # raises on values a .keras file cannot hold
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config, "from_config(get_config()) changed the config"
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    deserialized = keras.saving.deserialize_keras_object(serialized)
    assert type(deserialized) is layer_cls, f"deserialized a {type(deserialized).__name__}"
    assert deserialized.get_config() == config, "deserialize(serialize()) changed the config"
    revived(*inputs)  # build
    revived.set_weights(layer.get_weights())
    np.testing.assert_array_equal(
        _numpy(revived(*inputs)), expected, err_msg="revived layer, same weights: other output"
    )


def check_symbolic_call(layer_cls, init_kwargs, inputs, expected_shape, expected_dtype):
    """A call on KerasTensors builds the layer and gives the expected shape and dtype, as does
    `compute_output_shape`."""
    layer = layer_cls(**init_kwargs)
    output = layer(*_symbolic(inputs))
    assert isinstance(output, keras.KerasTensor), f"symbolic call gave a {type(output)}"
    assert layer.built, "a symbolic call did not build the layer"
    assert tuple(output.shape) == tuple(expected_shape), f"symbolic shape {output.shape}"
    assert output.dtype == expected_dtype, f"symbolic dtype {output.dtype}"
    shapes = [None if x is None else x.shape for x in inputs]
    computed = layer.compute_output_shape(*shapes)
    assert tuple(computed) == tuple(expected_shape), f"compute_output_shape gave {computed}"


def check_eager_call(layer_cls, init_kwargs, inputs, expected_shape, expected_dtype):
    """An eager call (inference and training) gives finite values of the expected shape and
    dtype; returns the layer."""
    layer = layer_cls(**init_kwargs)
    for training in (False, True):
        output = layer(*inputs, **_training_kwarg(layer, training))
        assert tuple(output.shape) == tuple(expected_shape), f"eager shape {output.shape}"
        assert keras.backend.standardize_dtype(output.dtype) == expected_dtype, (
            f"eager dtype {output.dtype}"
        )
        assert np.all(np.isfinite(_numpy(output))), f"non-finite output (training={training})"
    return layer


def check_weight_counts(layer, trainable=None, non_trainable=None):
    """The built layer holds the expected numbers of weights."""
    if trainable is not None:
        names = [w.path for w in layer.trainable_weights]
        assert len(names) == trainable, f"{len(names)} trainable weights: {names}"
    if non_trainable is not None:
        names = [w.path for w in layer.non_trainable_weights]
        assert len(names) == non_trainable, f"{len(names)} non-trainable weights: {names}"


def check_fit_step(layer_cls, init_kwargs, inputs):
    """One `fit` step compiled with XLA, on a model around the layer, has a finite loss and
    changes every trainable weight (a weight that stays put gets no gradient)."""
    model, layer = _wrapper_model(layer_cls(**init_kwargs), inputs)
    output_shape = model.outputs[0].shape
    target = np.random.default_rng(0).normal(size=output_shape).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=True)
    before = [_numpy(w).copy() for w in layer.trainable_weights]
    present = _present(inputs)
    present = tuple(present) if isinstance(present, list) else present  # a tuple: not stacked
    data = tf.data.Dataset.from_tensors((present, target))
    loss = model.fit(data, epochs=1, shuffle=False, verbose=0).history["loss"][-1]
    assert np.isfinite(loss), f"loss {loss}"
    for weight, old in zip(layer.trainable_weights, before, strict=True):
        assert np.any(_numpy(weight) != old), f"{weight.path} did not change in a fit step"


def check_saved_model(layer_cls, init_kwargs, inputs):
    """A small Model around the layer, saved to a .keras file and loaded, gives the same
    output."""
    model, _ = _wrapper_model(layer_cls(**init_kwargs), inputs)
    present = _present(inputs)
    expected = _numpy(model(present, training=False))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "layer.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        _numpy(loaded(present, training=False)), expected, err_msg="loaded model: other output"
    )


def check_mixed_precision(layer_cls, init_kwargs, inputs, output_dtype, tolerance):
    """Under `mixed_float16` the layer and all its sublayers follow the policy, the weights stay
    float32, and the output has `output_dtype`, is finite and close to the float32 output."""
    reference = layer_cls(**init_kwargs)
    expected = _numpy(reference(*inputs))
    layer = layer_cls(**{**init_kwargs, "dtype": "mixed_float16"})
    layer(*inputs)  # build
    layer.set_weights(reference.get_weights())
    for sublayer in layer._flatten_layers(include_self=True):
        assert sublayer.dtype_policy.name == "mixed_float16", (
            f"{sublayer.name} computes under {sublayer.dtype_policy.name}"
        )
    for weight in layer.weights:
        if weight.dtype.startswith("float"):
            assert weight.dtype == "float32", f"{weight.path} is {weight.dtype}"
    output = layer(*inputs)
    dtype = keras.backend.standardize_dtype(output.dtype)
    assert dtype == output_dtype, f"mixed_float16 output is {dtype}"
    got = _numpy(output).astype("float32")
    assert np.all(np.isfinite(got)), "non-finite output under mixed_float16"
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


def _wrapper_model(layer, inputs):
    """A functional Model whose inputs are `inputs` (fixed shapes) and output the layer's."""
    symbolic = _symbolic(inputs, as_model_inputs=True)
    output = layer(*symbolic)
    return keras.Model(_present(symbolic), output), layer


def _symbolic(inputs, as_model_inputs=False):
    def spec(x):
        if x is None:
            return None
        dtype = keras.backend.standardize_dtype(x.dtype)
        if as_model_inputs:
            return keras.Input(batch_shape=x.shape, dtype=dtype)
        return keras.KerasTensor(x.shape, dtype=dtype)

    return tuple(spec(x) for x in inputs)


def _present(inputs):
    """The model inputs of `_wrapper_model`: those of `inputs` that are not None (one, or a
    list)."""
    present = [x for x in inputs if x is not None]
    return present[0] if len(present) == 1 else present


def _training_kwarg(layer, training):
    """`{"training": training}` for layers whose `call` takes it."""
    takes_training = "training" in inspect.signature(layer.call).parameters
    return {"training": training} if takes_training else {}


def _numpy(x):
    return ops.convert_to_numpy(x)
