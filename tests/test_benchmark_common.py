"""The benchmarks' helpers (benchmarks/common.py): `fit_seconds` times the training steps of a
`fit` call, and only them; `count_parameters` (par_xl.cost.parameters) counts weights, not
the state a model carries."""

import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import fit_seconds, rounds
from par_xl.configs import PRESETS
from par_xl.cost.parameters import count_parameters
from par_xl.models import PARTransformerXL


class SlowStart(keras.callbacks.Callback):
    """Sleeps before the first step: time that `fit` spends but no training step does."""

    def on_train_begin(self, logs=None):
        time.sleep(0.5)


def test_fit_seconds_times_the_steps_it_asks_for_and_not_the_fit_calls_own_work():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensor_slices((np.ones((8, 4)), np.ones((8, 1)))).batch(2).repeat()
    fit_seconds(model, data, 3)  # compiles
    model.fit = _with_callback(model.fit, SlowStart())
    start = time.perf_counter()
    steps = fit_seconds(model, data, 5)
    wall = time.perf_counter() - start
    assert int(model.optimizer.iterations) == 3 + 5
    assert 0 < steps < wall - 0.5  # the sleep before the first step is left out


def _with_callback(fit, callback):
    def fit_with(*args, callbacks=(), **kwargs):
        return fit(*args, callbacks=[callback, *callbacks], **kwargs)

    return fit_with


def test_rounds_take_turns_and_use_the_given_timer():
    calls = []
    times = rounds({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0},
                   2, timer=lambda function: function())  # fmt: skip
    assert calls == ["a", "b", "a", "b"]
    assert times == {"a": [1.0, 1.0], "b": [2.0, 2.0]}


def test_parameters_do_not_count_the_carried_state_which_grows_with_batch_and_memory():
    counts = {}
    for batch, mem_len in ((2, 4), (8, 16)):
        config = PRESETS["tiny"].model_kwargs() | {"architecture": "AFL", "mem_len": mem_len}
        model = PARTransformerXL(**config)
        model.build((batch, 8))
        counts[batch] = (count_parameters(model), model.count_params())
    assert counts[2][0] == counts[8][0]  # the weights: independent of B and M
    d_model = PRESETS["tiny"].d_model  # the XL memory of the one A block: B x M x D
    assert counts[8][1] - counts[2][1] >= 8 * 16 * d_model - 2 * 4 * d_model
