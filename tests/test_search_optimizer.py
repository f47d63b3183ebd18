"""The search's mechanics: its own optimizer for the choice logits, the freeze, architecture
steps, the cost objective and the latency table (par_xl.training.search_optimizer,
par_xl.cost.objective, par_xl.cost.latency)."""

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_jax
from keras import ops

from par_xl.configs import ConfigError, ModelConfig
from par_xl.cost.flops import evaluation_flops_per_token
from par_xl.cost.latency import (
    LatencyTableError,
    measure_latency_table,
    read_latency_table,
    write_latency_table,
)
from par_xl.cost.objective import CostObjective, flops_costs
from par_xl.layers.gumbel_choice import GumbelChoice
from par_xl.models import PARTransformerXL
from par_xl.models.rules import standard_architecture
from par_xl.training.search_optimizer import count_architecture_steps, is_architecture_step

REPO = Path(__file__).resolve().parents[1]


# Which batches are architecture batches.


@pytest.mark.parametrize("start,fraction", [(0, 0.2), (3, 0.5), (5, 0.3), (2, 0.0)])
def test_architecture_steps_are_the_fraction_evenly_spread_after_the_start(start, fraction):
    steps = [is_architecture_step(s, start, fraction) for s in range(40)]
    tensor = [
        bool(ops.convert_to_numpy(is_architecture_step(ops.convert_to_tensor(s), start, fraction)))
        for s in range(40)
    ]
    assert steps == tensor
    assert not any(steps[:start])
    assert sum(steps) == count_architecture_steps(0, 40, start, fraction)
    assert count_architecture_steps(7, 29, start, fraction) == sum(steps[7:29])
    if fraction == 0.2:
        assert [s for s in range(40) if steps[s]] == [4, 9, 14, 19, 24, 29, 34, 39]
    assert abs(sum(steps) - fraction * (40 - start)) < 1


# The straight-through sample.


def test_straight_through_forward_value_is_each_examples_own_sample():
    batch, choices, seed = 64, 3, 7
    layer = GumbelChoice(choices, tau=0.5, straight_through=True, seed=seed)
    layer.build()
    weights = ops.convert_to_numpy(layer(ops.zeros((batch, 1)), training=True))
    # The same draws, from a generator with the same seed: the relaxed sample of each example.
    uniform = keras.random.uniform((batch, choices), minval=1e-10, maxval=1.0, dtype="float32",
                                   seed=keras.random.SeedGenerator(seed))  # fmt: skip
    relaxed = ops.convert_to_numpy(ops.softmax(-ops.log(-ops.log(uniform)) / 0.5, axis=-1))
    # hard + soft - stop_gradient(soft): the one-hot up to one float rounding.
    np.testing.assert_allclose(weights, np.eye(choices)[relaxed.argmax(axis=1)], atol=1e-6)
    assert len({tuple(row) for row in weights}) > 1  # equal logits: the examples differ


# The optimizer under fit: one process per backend and device count.

FIT = r"""
import json, sys
mode, out = sys.argv[1], sys.argv[2]
if mode == "mirrored":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import dataclasses
import keras
import numpy as np
from keras import ops

from par_xl.configs import ModelConfig, TrainConfig
from par_xl.distribution.strategies import distribute_rows, make_strategy
from par_xl.training.runs import build_model
from par_xl.training.search_optimizer import SearchOptimizer

B, T, V = 4, 6, 40
strategy = make_strategy("mirrored") if mode == "mirrored" else None
model_config = ModelConfig(vocab_size=V, d_model=16, num_heads=2, d_ffn=32, num_layers=2,
                           mem_len=5, cutoffs=(12,), dropout_rate=0.0)
data = np.random.default_rng(0).integers(0, V, (8, B, T + 1)).astype("int32")


def make(**changes):
    config = TrainConfig("-", "-", max_lr=1e-2, warmup_steps=0, jit_compile=mode == "xla",
                         arch_lr=0.1, **changes)
    keras.utils.set_random_seed(0)
    return build_model(model_config, config, (B, T), 100, strategy=strategy)


def fit_one(model, s):
    import tensorflow as tf
    batch = tf.data.Dataset.from_tensor_slices((data[s:s + 1, :, :-1], data[s:s + 1, :, 1:]))
    if strategy is not None:
        batch = distribute_rows(strategy, lambda: batch, B)
    model.fit(batch, epochs=1, verbose=0, shuffle=False,
              steps_per_epoch=None if strategy is None else 1)


def snapshot(model):
    logits = [ops.convert_to_numpy(v) for v in model.architecture_variables]
    weights = [ops.convert_to_numpy(v) for v in model.trainable_variables
               if not any(v is l for l in model.architecture_variables)]
    return logits, weights


def changes(model, steps):
    report = []
    before = snapshot(model)
    initial = before[0]
    for s in range(steps):
        fit_one(model, s)
        after = snapshot(model)
        report.append([any(not np.array_equal(a, b) for a, b in zip(x, y))
                       for x, y in zip(before, after)])
        before = after
    return report, initial


report = {"optimizer": None}
model = make(arch_start_step=2, arch_fraction=0.5)
report["optimizer"] = type(model.optimizer).__name__
report["bilevel"], initial = changes(model, 7)
report["initial_logits_zero"] = all(not np.any(x) for x in initial)
model = make(arch_start_step=3, arch_fraction=0.0)
report["joint"], _ = changes(model, 5)
report["weight_iterations"] = int(
    ops.convert_to_numpy(model.optimizer.weights_optimizer.iterations))
report["arch_iterations"] = int(
    ops.convert_to_numpy(model.optimizer.architecture_optimizer.iterations))
report["iterations"] = int(ops.convert_to_numpy(model.optimizer.iterations))

if mode == "tensorflow":  # resume: the architecture optimizer's state is checkpointed
    from par_xl.training.checkpoints import CheckpointManager
    config = dict(arch_start_step=1, arch_fraction=0.5)
    full = make(**config)
    for s in range(6):
        fit_one(full, s)
    part = make(**config)
    for s in range(3):
        fit_one(part, s)
    CheckpointManager(out).save(part, 3)
    resumed = make(**config)
    report["restored_step"] = CheckpointManager(out).restore(resumed)
    for s in range(3, 6):
        fit_one(resumed, s)
    values = lambda m: [ops.convert_to_numpy(v) for v in m.variables + m.optimizer.variables]
    report["resume_diff"] = max(float(np.abs(a - b).max())
                                for a, b in zip(values(full), values(resumed)))
    report["arch_slots"] = len(full.optimizer.architecture_optimizer.variables)
print(json.dumps(report))
"""


def run_fit(mode, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "KERAS_BACKEND": "jax" if mode == "jax" else "tensorflow"}  # fmt: skip
    script = tmp_path / "fit.py"
    script.write_text(FIT)
    result = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "ckpt")], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tensorflow", "xla", "mirrored", "jax"])
def test_architecture_and_weight_steps_update_only_their_own_variables(mode, tmp_path):
    if mode == "jax":
        pytest.importorskip("jax")
    report = run_fit(mode, tmp_path)
    assert report["optimizer"] == "SearchOptimizer"
    assert report["initial_logits_zero"]
    # Bilevel from step 2, every 2nd batch (fraction 0.5): steps 3 and 5 are architecture
    # batches, which change only the logits; every other batch changes only the weights.
    arch = [is_architecture_step(s, 2, 0.5) for s in range(7)]
    assert arch == [False, False, False, True, False, True, False]
    assert report["bilevel"] == [[a, not a] for a in arch]  # [logits changed, weights changed]
    # Joint from step 3: the logits are bit-identical before it, then both change every batch.
    assert report["joint"] == [[False, True]] * 3 + [[True, True]] * 2
    assert (report["weight_iterations"], report["arch_iterations"], report["iterations"]) == (
        5, 2, 5)  # fmt: skip
    if mode == "tensorflow":
        assert report["restored_step"] == 3
        assert report["arch_slots"] > 2  # Adam's moments of the logits, in the checkpoint
        assert report["resume_diff"] < 1e-6  # the same run, the architecture optimizer included


# The cost objective.


def tiny_supernet(choices="AFI", architecture=None):
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=40, d_model=16, num_heads=2, d_ffn=32, num_layers=3,
                             mem_len=4, choices=choices, architecture=architecture)  # fmt: skip
    model.build((2, 5))
    return model


def test_flops_costs_are_the_registrys_and_the_target_the_standard_models():
    model = tiny_supernet()
    costs, fixed = flops_costs(model, 5, 4, 2)
    assert set(costs) == {"A", "F", "I"} and costs["I"] == 0
    block = model.blocks[0]
    from par_xl.layers.choices import CHOICES

    assert costs["F"] == 2 * CHOICES["F"].macs_per_token(block, 5, 4, 2, True)
    # The rest of the model: what a model of identity blocks computes (its output layer).
    identity = tiny_supernet(architecture="III")
    assert fixed == pytest.approx(evaluation_flops_per_token(identity, 5, 2)) and fixed > 0
    objective = CostObjective(costs, 0.1, 0.7, fixed=fixed)
    assert standard_architecture(5) == "AFAFA"
    assert objective.target(3) == pytest.approx(0.7 * (fixed + 2 * costs["A"] + costs["F"]))
    fixed_model = tiny_supernet(architecture="AFI")
    assert objective.architecture_cost("AFI") == pytest.approx(
        evaluation_flops_per_token(fixed_model, 5, 2))  # the whole model, as flops.py counts it


def test_expected_cost_is_the_probability_weighted_sum():
    model = tiny_supernet(architecture=None)
    rng = np.random.default_rng(1)
    for layer in model.choice_layers:
        layer.logits.assign(rng.normal(size=3).astype("float32"))
    costs = {"A": 3.0, "F": 2.0, "I": 0.0}
    objective = CostObjective(costs, 0.1, 1.0, fixed=1.5)
    by_hand = 1.5
    for layer, block in zip(model.choice_layers, model.blocks):
        logits = ops.convert_to_numpy(layer.logits).astype("float64")
        p = np.exp(logits - logits.max())
        by_hand += float(np.dot(p / p.sum(), [costs[c] for c in block.choices]))
    np.testing.assert_allclose(float(objective.expected_cost(model)), by_hand, rtol=1e-6)
    fixed = tiny_supernet(architecture="AFI")
    assert float(objective.expected_cost(fixed)) == objective.architecture_cost("AFI") == 6.5


def test_within_target_is_the_most_probable_architecture_that_meets_it():
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=40, d_model=16, num_heads=2, d_ffn=32, num_layers=5,
                             mem_len=4, choices="AFI")  # fmt: skip
    model.build((2, 5))
    costs = {"A": 3.1, "F": 1.7, "I": 0.0}
    rng = np.random.default_rng(2)
    for trial in range(4):
        for layer in model.choice_layers:
            layer.logits.assign(rng.normal(scale=2.0, size=3).astype("float32"))
        p = model.choice_probabilities()[0]  # (5, 3) over "AFI"
        for fraction in (0.2, 0.45, 0.7, 0.9, 1.3):
            objective = CostObjective(costs, 0.1, fraction, "hinge", fixed=2.0)
            target = fraction * (2.0 + 3 * 3.1 + 2 * 1.7)
            # By brute force over all 3^5 architectures.
            feasible = [("".join(a), sum(np.log(p[i, "AFI".index(c)]) for i, c in enumerate(a)))
                        for a in itertools.product("AFI", repeat=5)
                        if 2.0 + sum(costs[c] for c in a) <= target]  # fmt: skip
            expected = max(feasible, key=lambda item: item[1])[0] if feasible else None
            assert objective.within_target(model) == expected, (trial, fraction)
    objective = CostObjective(costs, 0.1, 0.1, "hinge", fixed=2.0)
    assert objective.within_target(model) is None  # even IIIII costs 2.0 > 0.1 x 16.7
    objective = CostObjective(costs, 0.1, 10.0, "hinge", fixed=2.0)
    assert objective.within_target(model) == model.choice_probabilities()[1]  # the argmax


@pytest.mark.parametrize("form,target", [("additive", 0.8), ("multiplicative", 0.8),
                                         ("hinge", 0.8), ("hinge", 5.0)])  # fmt: skip
def test_cost_term_gradient_matches_finite_differences(form, target):
    model = tiny_supernet()
    rng = np.random.default_rng(2)
    for layer in model.choice_layers:
        layer.logits.assign(rng.normal(size=3).astype("float32"))
    objective = CostObjective({"A": 3.0, "F": 2.0, "I": 0.5}, 0.3, target, form, fixed=1.0)
    cross_entropy = tf.constant(4.0)

    def loss():
        return objective.loss(cross_entropy, objective.expected_cost(model), model.num_layers)

    logits = model.architecture_variables
    with tf.GradientTape() as tape:
        value = loss()
    gradients = tape.gradient(value, logits)
    eps = 1e-2
    for variable, gradient in zip(logits, gradients):
        for k in range(3):
            base = variable.numpy()
            shifted = [base.copy(), base.copy()]
            shifted[0][k] += eps
            shifted[1][k] -= eps
            values = []
            for s in shifted:
                variable.assign(s)
                values.append(float(loss()))
            variable.assign(base)
            np.testing.assert_allclose(gradient.numpy()[k], (values[0] - values[1]) / (2 * eps),
                                       rtol=1e-2, atol=1e-5)  # fmt: skip
    ratio = float(objective.expected_cost(model)) / objective.target(3)
    expected = {"additive": 4.0 + 0.3 * (ratio - 1), "multiplicative": 4.0 * ratio**0.3,
                "hinge": 4.0 + 0.3 * max(ratio - 1, 0)}[form]  # fmt: skip
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    if form == "hinge" and ratio < 1:  # below the target: no pressure at all
        assert all(not np.any(g.numpy()) for g in gradients)


def test_the_cost_term_enters_the_training_loss_only():
    model = tiny_supernet()
    y_pred = ops.convert_to_tensor(np.zeros((2, 5, 16), "float32"))
    y = ops.convert_to_tensor(np.ones((2, 5), "int32"))
    plain = float(model.compute_loss(y=y, y_pred=y_pred, training=True))
    model.cost_objective = CostObjective({"A": 3.0, "F": 2.0, "I": 0.0}, 0.5, 1.0)
    ratio = float(model.cost_objective.expected_cost(model)) / model.cost_objective.target(3)
    with_cost = float(model.compute_loss(y=y, y_pred=y_pred, training=True))
    np.testing.assert_allclose(with_cost, plain + 0.5 * (ratio - 1), rtol=1e-5)
    assert float(model.compute_loss(y=y, y_pred=y_pred, training=False)) == pytest.approx(plain)


# The latency table.


def test_latency_table_round_trips_through_json_and_refuses_another_shape(tmp_path):
    config = ModelConfig(vocab_size=3000, d_model=16, num_heads=2, d_ffn=32, num_layers=2,
                         mem_len=4, cutoffs=(100, 1000))  # fmt: skip
    table = measure_latency_table(config.model_kwargs(), "AF", seq_len=8, mem_len=4,
                                  batch_size=2, repeats=2, rounds=1)  # fmt: skip
    assert set(table["forward_ms"]) == {"I", "A", "F"} and table["forward_ms"]["I"] == 0.0
    assert all(v >= 0 for kind in ("forward_ms", "train_step_ms") for v in table[kind].values())
    # The rest of the model: the identity model with the real output layer, not the probes'.
    assert table["fixed_ms"] == {kind: table["probe_ms"][kind]["fixed"]
                                 for kind in ("forward_ms", "train_step_ms")}  # fmt: skip
    assert table["shape"]["vocab_size"] == 3000 and table["shape"]["cutoffs"] == [100, 1000]
    path = tmp_path / "latency.json"
    write_latency_table(path, table)
    assert json.loads(path.read_text()) == json.loads(json.dumps(table))
    costs, fixed = read_latency_table(path, config, 8, 4)
    assert costs == pytest.approx(table["forward_ms"])
    assert fixed == pytest.approx(table["fixed_ms"]["forward_ms"]) and fixed > 0
    costs, fixed = read_latency_table(path, config, 8, 4, "train_step_ms")
    assert costs == pytest.approx(table["train_step_ms"])
    assert fixed == pytest.approx(table["fixed_ms"]["train_step_ms"])
    with pytest.raises(LatencyTableError, match=r"latency.json was measured at another shape "
                       r"\(seq_len 8 there, 16 here\)"):  # fmt: skip
        read_latency_table(path, config, 16, 4)
    with pytest.raises(LatencyTableError, match=r"cutoffs \[100, 1000\] there, \[200\] here"):
        read_latency_table(path, dataclasses.replace(config, cutoffs=(200,)), 8, 4)
    path.write_text('{"forward_ms": {}}')
    with pytest.raises(ConfigError, match="not a latency table"):
        read_latency_table(path, config, 8, 4)


# The JAX backend's default: compiled (op by op it ran a tiny step at 2 s against 0.23 s).

DEFAULT_JIT = """
import json, sys
sys.argv = ["train.py"]
import train
print(json.dumps({"backend": train.keras_backend(), "jit": train.default_jit_compile()}))
"""


def test_jax_compiles_by_default(tmp_path):
    pytest.importorskip("jax")
    assert run_on_jax(DEFAULT_JIT, tmp_path) == {"backend": "jax", "jit": True}
