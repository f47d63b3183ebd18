"""A latency table: each block choice timed on this device at a model's shape, as JSON.

FBNet's lookup table. For every letter, a one-block `PARTransformerXL` with that letter (the
model's width, heads, feed-forward width, kNN sizes) is timed on `(B, T)` batches over M memory
positions, and the same model with the identity block (I) beside it: a letter's latency is the
difference of the medians, what the block adds to a step (the embedding and a small output
layer are the same in both and cancel). The rest of the model, which every architecture pays,
is timed too (`fixed_ms`): the one-block identity model with the model's own vocabulary and
adaptive softmax (embedding, output layer, loss and the framework's per-call time), so that a
cost target can be a fraction of the whole model's time. Two figures each:

    forward_ms       the compiled inference forward pass and its loss over one batch
                     (evaluation's work);
    train_step_ms    one `train_on_batch`: forward, loss, backward and the optimizer update.

The letters take turns within each round, so a disturbance of the machine spreads over all of
them. I is 0 by definition. The search reads `forward_ms` (`--cost=latency`): the derived model
is for inference. The table records the shape and device; `read_latency_table` refuses a table
of another shape.
"""

import json
import platform
import statistics
import time

import keras
import numpy as np
from keras import ops

from par_xl.configs import ConfigError
from par_xl.files import atomic_write_text
from par_xl.layers.choices import CHOICES
from par_xl.models import PARTransformerXL
from par_xl.models.compiled import compiled_function

FORMAT = "par_xl latency table 2"  # 2: with `fixed_ms`
SHAPE_FIELDS = ("d_model", "num_heads", "d_ffn", "vocab_size", "cutoffs", "proj_factor",
                "seq_len", "mem_len")  # fmt: skip
FIXED = "fixed"  # the probe of the rest of the model
KINDS = ("forward_ms", "train_step_ms")


class LatencyTableError(ConfigError):
    """A latency table that cannot be used; the message names the file."""


def _one_block_model(model_kwargs, letter, vocab_size=None):
    """A one-block model with `letter`: with a plain softmax over `vocab_size` words, or with
    the model's own output layer where `vocab_size` is None."""
    kwargs = {**model_kwargs, "num_layers": 1, "architecture": letter,
              "knn_layers": [0] if letter == "M" else [], "dropout_rate": 0.0}  # fmt: skip
    for name in ("choices", "search", "choice_at_inference"):
        kwargs.pop(name, None)
    if vocab_size is not None:
        kwargs.update(vocab_size=vocab_size, cutoffs=[], tail_capacities=None)
    return PARTransformerXL(**kwargs)


def _forward(model, ids, labels, state):
    """Evaluation's work: the forward pass and the mean loss of its output layer."""
    return ops.mean(model.output_layer.loss(model.forward(ids, state)[0], labels))


def _timed(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def measure_latency_table(model_kwargs, letters, seq_len, mem_len, batch_size, repeats=20,
                          rounds=3, jit_compile=False, vocab_size=256, seed=0):  # fmt: skip
    """Times each of `letters` (and I) as described in the module docstring.

    Args:
        model_kwargs: the model's `PARTransformerXL` arguments (its `ModelConfig.model_kwargs`).
        letters: the registry letters to time, e.g. "AFI".
        seq_len, mem_len, batch_size: T, M, B.
        repeats: timed calls per letter and round, after one warm-up call.
        rounds: rounds in which the letters take turns; the median is over all calls.
        jit_compile: XLA for the forward pass and the training step.
        vocab_size: the probe's vocabulary (plain softmax): small, the same for every letter.

    Returns:
        The table as a dict (`FORMAT`, `shape`, `device`, `forward_ms`, `train_step_ms`,
        `fixed_ms` (both kinds), the raw medians of the probes in `probe_ms`).
    """
    letters = "".join(dict.fromkeys("I" + letters))
    unknown = sorted(set(letters) - set(CHOICES))
    if unknown:
        raise ValueError(f"letters must be registry letters {sorted(CHOICES)}, received {unknown}.")
    rng = np.random.default_rng(seed)
    runs = {}
    for probe in [*letters, FIXED]:
        keras.utils.set_random_seed(seed)
        if probe == FIXED:
            model = _one_block_model(model_kwargs, "I")
        else:
            model = _one_block_model(model_kwargs, probe, vocab_size)
        ids, labels = (ops.convert_to_tensor(rng.integers(0, model.vocab_size,
                                                          (batch_size, seq_len)), "int32")
                       for _ in range(2))  # fmt: skip
        model.compile(optimizer="adam", jit_compile=jit_compile)
        model.build((batch_size, seq_len))
        state = model.initial_state(batch_size, mem_len)
        forward = compiled_function(model, _forward, jit_compile)
        runs[probe] = (
            lambda f=forward, ids=ids, labels=labels, state=state: ops.convert_to_numpy(
                f(ids, labels, state)),
            lambda model=model, ids=ids, labels=labels: model.train_on_batch(ids, labels),
        )
        for run in runs[probe]:
            run()  # compile
    times = {probe: ([], []) for probe in runs}
    for _ in range(rounds):
        for letter, (forward_run, train_run) in runs.items():
            times[letter][0].extend(_timed(forward_run, repeats))
            times[letter][1].extend(_timed(train_run, repeats))
    probe = {kind: {name: 1000 * statistics.median(times[name][i]) for name in runs}
             for i, kind in enumerate(KINDS)}  # fmt: skip
    table = {
        "format": FORMAT,
        "shape": {
            **{name: model_kwargs[name] for name in SHAPE_FIELDS[:-2]},
            "seq_len": seq_len,
            "mem_len": mem_len,
            "batch_size": batch_size,
            "knn_memory_size": model_kwargs.get("knn_memory_size"),
            "knn_neighbors": model_kwargs.get("knn_neighbors"),
        },
        "device": device_description(),
        "backend": keras.backend.backend(),
        "jit_compile": jit_compile,
        "repeats": repeats * rounds,
        "probe_ms": probe,
    }
    for kind in KINDS:
        base = probe[kind]["I"]
        table[kind] = {letter: max(probe[kind][letter] - base, 0.0) for letter in letters}
    table["fixed_ms"] = {kind: probe[kind][FIXED] for kind in KINDS}
    return table


def device_description():
    """The device the table was measured on, in words: the first GPU's name, or the CPU."""
    gpus = keras.distribution.list_devices("gpu") if keras.backend.backend() == "jax" else []
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return details.get("device_name", "GPU")
    if gpus:
        return str(gpus[0])
    return f"CPU {platform.processor() or platform.machine()}"


def write_latency_table(path, table):
    """Writes `table` as JSON (atomically)."""
    atomic_write_text(path, json.dumps(table, indent=2) + "\n")


def read_latency_table(path, model_config, seq_len, mem_len, kind="forward_ms"):
    """`({letter: latency}, fixed latency)` of a table written by `write_latency_table`,
    checked against the run's shape (`SHAPE_FIELDS` of `model_config`, T and M); a
    LatencyTableError names the file and what differs."""
    try:
        table = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as error:
        raise LatencyTableError(f"--latency_table={path}: cannot read it ({error}).") from None
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise LatencyTableError(
            f"--latency_table={path}: not a latency table of this version (expected format "
            f"{FORMAT!r}; write one with latency_table.py)."
        )
    expected = {
        **{name: getattr(model_config, name) for name in SHAPE_FIELDS[:-2]},
        "cutoffs": list(model_config.cutoffs),
        "seq_len": seq_len,
        "mem_len": mem_len,
    }
    differ = [f"{name} {table['shape'].get(name)} there, {value} here"
              for name, value in expected.items() if table["shape"].get(name) != value]  # fmt: skip
    if differ:
        raise LatencyTableError(
            f"--latency_table={path} was measured at another shape ({'; '.join(differ)}): "
            "measure one at this run's shape with latency_table.py."
        )
    costs, fixed = table.get(kind), table.get("fixed_ms", {}).get(kind)
    if not isinstance(costs, dict) or not all(_latency(v) for v in [*costs.values(), fixed]):
        raise LatencyTableError(
            f"--latency_table={path}: {kind!r} must map letters to latencies >= 0, and "
            f"'fixed_ms' must hold one for {kind!r}."
        )
    return {letter: float(value) for letter, value in costs.items()}, float(fixed)


def _latency(value):
    return isinstance(value, int | float) and np.isfinite(value) and value >= 0
