"""Helpers shared by the benchmark scripts: the machine's fp32 matmul peak and a throughput's
share of it, medians, timed rounds and training steps."""

import statistics
import time

import numpy as np


def median(values):
    return float(statistics.median(values))


def seconds(function):
    """Wall seconds of one call of `function()`."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def fit_seconds(model, data, steps):
    """Wall seconds of `steps` training steps of `model.fit(data)`: from the first step's start
    to the end of training, as a callback sees them. What `fit` does after `on_train_end` is left
    out: on this project's machines it waits up to ~2.5 s there (the calls end on multiples of
    ~2.56 s), which quantized the timings of short runs."""
    import keras

    marks = {}

    class Marks(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            marks.setdefault("start", time.perf_counter())

        def on_train_end(self, logs=None):
            marks["end"] = time.perf_counter()

    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Marks()])
    return marks["end"] - marks["start"]


def rounds(functions, repeats, timer=seconds):
    """`{name: [seconds of each round]}` over `repeats` rounds, the functions taking turns in
    each round (a change of the machine's load touches all of them); `timer(function)` gives a
    call's seconds (default: its wall time; `lambda function: function()` for functions that
    time themselves, as `fit_seconds` does)."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            times[name].append(timer(function))
    return times


def matmul_peak_gflops(size=2048, repeats=5):
    """Measured fp32 matmul GFLOP/s of this machine (TensorFlow, square products), median."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    product = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    product(a, b).numpy()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return median(rates)


def utilization(tokens_per_second, flops_per_token, peak_gflops, digits=3):
    """`{"achieved_gflops", "utilization_of_peak"}` of a throughput against the fp32 matmul peak
    measured in the same run (`matmul_peak_gflops`)."""
    achieved = tokens_per_second * flops_per_token / 1e9
    return {
        "achieved_gflops": round(achieved, 2),
        "utilization_of_peak": round(achieved / peak_gflops, digits),
    }


def zipf_tokens(shape, vocab_size, seed=0, exponent=1.1):
    """Random ids with a Zipf-like frequency, most frequent first, like real text."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab_size + 1) ** exponent
    return rng.choice(vocab_size, size=shape, p=weights / weights.sum()).astype("int32")
