"""train.py and par_xl.training: schedules, memory semantics, validation, resume, NaN stop,
evaluation and generation on a tiny model trained on generated text."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops
from scripts import run_script

from par_xl.configs import PRESETS, ConfigError, ModelConfig, TrainConfig
from par_xl.data import load_dataset, read_metadata
from par_xl.distribution import replicas
from par_xl.models import PARTransformerXL
from par_xl.models.compiled import compiled_function
from par_xl.models.generation import generate
from par_xl.training import callbacks as cb
from par_xl.training import evaluation
from par_xl.training.evaluation import evaluate_batches, evaluate_split
from par_xl.training.runs import check_data
from par_xl.training.schedules import WarmupCosine, tau_at

REPO = Path(__file__).resolve().parents[1]


def train_args(data, run_dir, name, *extra):
    return [
        f"--train_directory={data}/tf/train",
        f"--valid_directory={data}/tf/valid",
        f"--test_directory={data}/tf/test",
        f"--sp_model_prefix={data}/sp",
        "--preset=tiny",
        "--cutoffs=20",
        "--cutoffs=80",
        "--epochs=1",
        "--warmup_steps=10",
        "--max_lr=3e-3",
        "--log_every=10",
        f"--log_dir={run_dir}",
        f"--model_name={name}",
        *extra,
    ]


# Schedules.


def test_warmup_cosine_values():
    schedule = WarmupCosine(max_lr=1e-3, warmup_steps=100, total_steps=1100)
    values = [float(ops.convert_to_numpy(schedule(s))) for s in (0, 50, 100, 600, 1100, 2000)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    quarter = float(ops.convert_to_numpy(schedule(350)))
    np.testing.assert_allclose(quarter, 1e-3 * (1 + np.cos(np.pi / 4)) / 2, rtol=1e-5)


def test_tau_schedules():
    assert tau_at(0, 1000, 1.0, 0.1) == pytest.approx(1.0)
    assert tau_at(500, 1000, 1.0, 0.1) == pytest.approx(0.1**0.5)
    assert tau_at(1000, 1000, 1.0, 0.1) == pytest.approx(0.1)
    assert tau_at(5000, 1000, 1.0, 0.1) == pytest.approx(0.1)
    assert tau_at(250, 1000, 1.0, 0.2, "linear") == pytest.approx(0.8)
    with pytest.raises(ValueError, match="tau schedule"):
        tau_at(1, 10, 1.0, 0.1, "cubic")


# Memory semantics.


def tiny_model(batch=2, segment=4, jit_compile="auto"):
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=30, d_model=8, num_heads=2, d_ffn=16, num_layers=2,
                             mem_len=4, cutoffs=[10])  # fmt: skip
    model.compile(optimizer="adam", jit_compile=jit_compile)
    model.build((batch, segment))
    model.optimizer.build(model.trainable_variables)
    return model


def test_memory_resets_only_at_the_start_of_a_data_epoch():
    model = tiny_model()
    reset = cb.MemoryReset(steps_per_epoch=5)
    reset.set_model(model)
    for step, emptied in ((7, False), (10, True)):
        memory = model.xl_memory["block_0"]
        memory.assign(np.ones(memory.shape))
        model.valid_length.assign([4, 4])
        model.optimizer.iterations.assign(step)
        reset.on_epoch_begin(0)
        assert bool(ops.convert_to_numpy(model.valid_length).max() == 0) is emptied
        assert bool(np.abs(ops.convert_to_numpy(memory)).sum() == 0) is emptied


@pytest.mark.parametrize("document_boundaries", [False, True])
def test_evaluate_split_reports_word_perplexity_and_bits_per_character(
    tiny_data, document_boundaries
):
    directory = tiny_data / "tf" / "valid"
    metadata = read_metadata(directory)
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=400, d_model=8, num_heads=2, d_ffn=16, num_layers=2,
                             mem_len=4, cutoffs=[20],
                             document_boundaries=document_boundaries)  # fmt: skip
    model.compile(optimizer="adam")
    model.build((metadata.batch_size, metadata.seq_len))
    result = evaluate_split(model, directory)
    # By hand: the batches in order, memory carried, document starts when the model uses them.
    model.reset_state()
    total = 0.0
    for x, y in load_dataset(directory, document_starts=document_boundaries):
        total += float(np.sum(ops.convert_to_numpy(model.output_layer.loss(model(x), y))))
    np.testing.assert_allclose(result["loss"], total / metadata.tokens_used, rtol=1e-5)
    np.testing.assert_allclose(result["word_perplexity"], np.exp(total / metadata.words_used),
                               rtol=1e-4)  # fmt: skip
    np.testing.assert_allclose(result["bits_per_character"],
                               total / np.log(2) / metadata.characters_used, rtol=1e-5)  # fmt: skip
    assert result["word_perplexity"] > result["perplexity"]  # more tokens than words


def test_interval_fires_when_a_multiple_is_passed():
    one_by_one, four_at_once = cb.Interval(10), cb.Interval(10)
    assert [s for s in range(1, 31) if one_by_one.due(s)] == [10, 20, 30]
    assert [s for s in range(4, 33, 4) if four_at_once.due(s)] == [12, 20, 32]
    assert not any(cb.Interval(0).due(s) for s in range(1, 50))
    at_steps, at_steps_four_at_once = cb.Interval(0, at=(7, 25)), cb.Interval(10, at=(7, 25))
    assert [s for s in range(1, 31) if at_steps.due(s)] == [7, 25]
    assert [s for s in range(4, 33, 4) if at_steps_four_at_once.due(s)] == [8, 12, 20, 28, 32]


def evaluation_before_model_state(model, batches):
    """A copy of the evaluation before it carried its own `ModelState`: `test_on_batch` over
    the model's state variables, emptied first (it changes the training state)."""
    model.reset_state()
    return [model.test_on_batch(x, y, return_dict=True)["loss"] for x, y in batches]


@pytest.mark.parametrize(
    "jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["graph", "xla"]
)
def test_evaluation_carries_its_own_state_and_leaves_training_alone(jit_compile, monkeypatch):
    model = tiny_model(jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 30, (2, 4)), rng.integers(0, 30, (2, 4))) for _ in range(3)]
    x = rng.integers(0, 30, (4, 4)).astype("int32")
    # Mid-epoch: memory, metrics, noise seeds and optimizer state of a training run.
    model.fit(x, x, batch_size=2, shuffle=False, verbose=0)
    variables = model.variables + model.optimizer.variables + model.metrics_variables
    before = [ops.convert_to_numpy(v).copy() for v in variables]
    assert np.abs(ops.convert_to_numpy(model.xl_memory["block_0"])).max() > 0
    # No round trip of the state through the host: the model's state is never read whole.
    for name in ("read_streams", "write_streams", "clear_streams"):
        monkeypatch.setattr(replicas, name, lambda *args, name=name: pytest.fail(name))
    result = evaluate_batches(model, batches)
    monkeypatch.undo()
    # One trace: the state goes from batch to batch as tensors of one structure.
    step = compiled_function(model, evaluation._evaluation_step, jit_compile)
    assert step.experimental_get_tracing_count() == 1
    for v, old in zip(variables, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), old, err_msg=v.path)  # bitwise
    # The numbers of the evaluation it replaces.
    losses = evaluation_before_model_state(model, batches)
    np.testing.assert_allclose(result["loss"], np.mean(losses), rtol=1e-6)
    np.testing.assert_allclose(result["perplexity_batch_mean"], np.mean(np.exp(losses)), rtol=1e-6)
    # The same evaluation by hand: memory from empty, carried across the batches.
    model.reset_state()
    losses = [float(np.mean(ops.convert_to_numpy(model.output_layer.loss(model(x), y))))
              for x, y in batches]  # fmt: skip
    np.testing.assert_allclose(result["loss"], np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(result["perplexity_batch_mean"], np.mean(np.exp(losses)), rtol=1e-5)
    assert result["perplexity_batch_mean"] >= result["perplexity"]


def test_checkpoint_restores_every_variable_including_noise_states(tmp_path):
    from par_xl.training.checkpoints import CheckpointManager

    model = tiny_model()
    x = np.random.default_rng(1).integers(0, 30, (6, 4)).astype("int32")
    model.fit(x, x, batch_size=2, shuffle=False, verbose=0)  # moves seeds, memory, optimizer
    manager = CheckpointManager(tmp_path, keep=1)
    manager.save(model, 2)
    manager.save(model, 3)
    assert manager.steps() == [3] and sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000003.record.json", "ckpt-00000003.state.npz", "ckpt-00000003.weights.h5",
        "latest.json"]  # fmt: skip
    fresh = tiny_model()
    assert manager.restore(fresh) == 3
    for saved, restored in zip(
        model.non_trainable_variables + model.optimizer.variables,
        fresh.non_trainable_variables + fresh.optimizer.variables,
    ):
        np.testing.assert_array_equal(ops.convert_to_numpy(restored), ops.convert_to_numpy(saved))


# Validation of flags and data.


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(num_heads=3), "--num_heads=3 must divide d_model=128"),
        (dict(cutoffs=(2500, 250)), "--cutoffs must be strictly increasing"),
        (dict(cutoffs=(250, 12000)), "--cutoffs must be strictly increasing"),
        (dict(dropout_rate=1.0), "--dropout_rate must be in [0, 1)"),
        (dict(architecture="AAF"), "--architecture must be 6 letters"),
        (dict(choices="AFA"), "--choices must be 2 or more distinct letters of A (attention)"),
        (dict(choices="AX"), "--choices must be 2 or more distinct letters"),
        (dict(initializer_range=0.0), "--initializer_range must be positive"),
    ],
)
def test_model_flags_are_validated(changes, message):
    config = ModelConfig(**changes)
    with pytest.raises(ConfigError) as error:
        config.validate()
    assert message in str(error.value)


def test_train_flags_are_validated():
    with pytest.raises(ConfigError, match="--opt_name"):
        TrainConfig("a", "b", opt_name="adagrad").validate()
    with pytest.raises(ConfigError, match="--warmup_steps must be >= 0"):
        TrainConfig("a", "b", warmup_steps=-1).validate()


def test_data_checks_name_the_problem(tiny_data, tmp_path):
    config = TrainConfig(f"{tiny_data}/tf/train", f"{tiny_data}/tf/valid")
    model = ModelConfig(cutoffs=(20, 80))
    assert check_data(model, config)["train"].vocab_size == 400
    with pytest.raises(ValueError, match="--cutoffs must be strictly increasing .* 400"):
        check_data(ModelConfig(cutoffs=(250, 2500)), config)
    other = tmp_path / "other.model"
    other.write_bytes(b"not the model")
    wrong = TrainConfig(config.train_directory, config.valid_directory,
                        sp_model_prefix=str(tmp_path / "other"))  # fmt: skip
    with pytest.raises(ValueError, match="is not the SentencePiece model the data was built with"):
        check_data(model, wrong)
    with pytest.raises(ValueError, match="metadata.json"):
        check_data(model, TrainConfig(str(tmp_path), config.valid_directory))


def test_cli_reports_bad_flags_without_traceback(tiny_data, tmp_path):
    result = run_script("train.py", *train_args(tiny_data, tmp_path, "bad", "--num_heads=3"))
    assert result.returncode == 2
    assert "--num_heads=3 must divide d_model=32" in result.stderr
    assert "Traceback" not in result.stderr
    single_path_xla = ("--search=single_path", "--jit_compile")
    result = run_script("train.py", *train_args(tiny_data, tmp_path, "bad", *single_path_xla))
    assert result.returncode == 2
    assert "--jit_compile does not work with --search=single_path" in result.stderr


# End to end: train, interrupt and resume, NaN stop, evaluate, generate.


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    """An uninterrupted 60-step run with checkpoints every 10 steps; valid evaluations at
    steps 30, 45 and 60. (The resumed run of `test_interrupted_run_resumes_to_the_same_result`
    skips the one at 45, and still trains the same: an evaluation leaves training alone.)"""
    runs = tmp_path_factory.mktemp("runs")
    args = train_args(tiny_data, runs, "full", "--max_steps=60", "--checkpoint_every=10",
                      "--eval_every=30", "--eval_steps=45")  # fmt: skip
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "full"


def read_results(run):
    return json.loads((run / "results.json").read_text())


@pytest.mark.slow
def test_a_cost_search_records_the_most_probable_architecture_within_its_target(tiny_data,
                                                                              tmp_path):
    from types import SimpleNamespace

    from par_xl.training.runs import load_run
    from par_xl.training.trainer import search_cost

    args = train_args(tiny_data, tmp_path, "cost", "--max_steps=6", "--cost=flops",
                      "--cost_target=0.9", "--arch_start_step=0", "--arch_lr=0.1")  # fmt: skip
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(tmp_path / "cost")
    model, model_config, train_config, data = load_run(tmp_path / "cost/checkpoints")
    plan = SimpleNamespace(batch_shape=(data["batch_size"], data["seq_len"]))
    objective = search_cost(model, model_config, train_config, plan)
    within = results["architecture_within_target"]
    assert within is not None and within == objective.within_target(model)
    assert objective.architecture_cost(within) <= objective.target(model_config.num_layers)
    assert "the most probable architecture within --cost_target=0.9" in (
        tmp_path / "cost/training_log.log").read_text()


@pytest.mark.slow
def test_training_run_writes_logs_checkpoints_and_results(trained_run):
    results = read_results(trained_run)
    assert results["step"] == 60
    assert [v["step"] for v in results["validation_history"]] == [30, 45, 60]
    first, _, last = results["validation_history"]
    assert last["loss"] < first["loss"]  # it learns
    assert np.isfinite(results["test"]["perplexity"])
    log = (trained_run / "training_log.log").read_text()
    assert "Total params" in log and '"max_lr": 0.003' in log
    assert "step 60 | loss" in log and "ms/step" in log and "| tau 0." in log
    # The supernet's expected cost and its argmax's, as multiples of the standard model's.
    assert re.search(r"step 60 \| .* \| cost \d+\.\d{3}x, argmax \d+\.\d{3}x", log)
    assert sorted(p.name for p in (trained_run / "checkpoints").glob("ckpt-*")) == [
        f"ckpt-000000{step}.{suffix}" for step in (50, 60)
        for suffix in ("record.json", "state.npz", "weights.h5")]  # fmt: skip
    events = list(trained_run.rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} >= {"train", "validation"}
    assert (trained_run / "search.png").stat().st_size > 0  # the search's pictures, drawn at
    assert (trained_run / "search.gif").stat().st_size > 0  # the end of the run


@pytest.mark.slow
def test_several_steps_per_execution_keep_every_interval(tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path, "spe", "--max_steps=24", "--checkpoint_every=10",
                      "--steps_per_execution=4")  # fmt: skip
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "spe" / "training_log.log").read_text()
    assert "step 12 | loss" in log and "step 20 | loss" in log  # log_every=10
    assert "saved checkpoint" in log and read_results(tmp_path / "spe")["step"] == 24
    assert json.loads((tmp_path / "spe/checkpoints/latest.json").read_text())["step"] == 24


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_result(trained_run, tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path, "resumed", "--max_steps=60", "--checkpoint_every=10",
                      "--eval_every=30")  # fmt: skip
    log = tmp_path / "resumed" / "training_log.log"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 900  # TensorFlow starts slowly on a loaded machine
    while time.time() < deadline and not (log.is_file() and "step 20 | loss" in log.read_text()):
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "continue with --resume" in stderr
    interrupted_at = json.loads((tmp_path / "resumed/checkpoints/latest.json").read_text())["step"]
    assert 20 <= interrupted_at < 40  # so the logged intervals 41-50 and 51-60 compare
    # Where it stopped, said plainly; the epoch's progress bar does not claim a finished epoch.
    steps = json.loads((tiny_data / "tf/train/metadata.json").read_text())["steps"]
    where = f"step {interrupted_at} of 60 (epoch 1, batch {interrupted_at} of {steps})"
    assert f"interrupted by signal {int(signal.SIGTERM)} at {where}" in stderr
    assert where in log.read_text()
    assert f" {interrupted_at}/{steps} - " in stdout and f"{steps}/{steps}" not in stdout

    refused = run_script("train.py", *args)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = run_script("train.py", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = read_results(trained_run), read_results(tmp_path / "resumed")
    assert got["step"] == 60

    # Same noise, same data position, same memory: equal up to float reduction order, the
    # training losses logged after the resume as well as the final evaluations.
    def logged_loss(run, step):
        text = (run / "training_log.log").read_text()
        return float(text.split(f"step {step} | loss ")[1].split(" ")[0])

    for step in (50, 60):
        np.testing.assert_allclose(
            logged_loss(tmp_path / "resumed", step), logged_loss(trained_run, step), rtol=1e-5
        )
    np.testing.assert_allclose(got["valid"]["loss"], expected["valid"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["test"]["loss"], expected["test"]["loss"], rtol=1e-5)
    assert "resumed from" in log.read_text()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    from par_xl.training import trainer

    honest = PARTransformerXL.compute_loss

    def poisoned(self, *args, **kwargs):  # the loss of the 26th step (and later) is NaN
        loss = honest(self, *args, **kwargs)
        return ops.where(self.optimizer.iterations >= 25, float("nan"), loss)

    monkeypatch.setattr(PARTransformerXL, "compute_loss", poisoned)
    config = TrainConfig(
        f"{tiny_data}/tf/train", f"{tiny_data}/tf/valid", log_dir=str(tmp_path),
        model_name="nan", checkpoint_every=10, max_steps=60, warmup_steps=10, max_lr=3e-3,
        jit_compile=False,
    )  # fmt: skip
    model = dataclasses.replace(PRESETS["tiny"], cutoffs=(20, 80))
    with pytest.raises(cb.TrainingDiverged, match="loss became nan at step 26") as error:
        trainer.train(model, config)
    checkpoints = tmp_path / "nan" / "checkpoints"
    assert "ckpt-00000020.weights.h5" in str(error.value)
    assert json.loads((checkpoints / "latest.json").read_text())["step"] == 20
    monkeypatch.undo()
    result = trainer.evaluate(checkpoints, f"{tiny_data}/tf/valid")
    assert np.isfinite(result["loss"])


@pytest.mark.slow
def test_evaluate_mode_reproduces_the_final_test_perplexity(trained_run):
    result = run_script("train.py", "--mode=evaluate",
                        f"--checkpoint_dir={trained_run}/checkpoints")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["split"] == "test"
    expected = read_results(trained_run)["test"]["perplexity"]
    np.testing.assert_allclose(report["perplexity"], expected, rtol=1e-5)


@pytest.mark.slow
def test_evaluate_mode_argmax_is_the_derived_architecture(trained_run, tiny_data):
    """`--choice_at_inference=argmax` evaluates a supernet as its `derive()`d model: the same
    perplexity, which is not the mixture's."""
    from par_xl.training.evaluation import evaluate_split
    from par_xl.training.runs import load_run

    split = f"{tiny_data}/tf/valid"
    checkpoints = f"--checkpoint_dir={trained_run}/checkpoints"
    result = run_script("train.py", "--mode=evaluate", checkpoints, f"--eval_directory={split}",
                        "--choice_at_inference=argmax")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{") :])
    supernet = load_run(trained_run / "checkpoints")[0]
    derived = supernet.derive()
    derived.compile(jit_compile=False)
    expected = evaluate_split(derived, split)
    np.testing.assert_allclose(report["loss"], expected["loss"], rtol=1e-5)
    mixture = evaluate_split(supernet, split)
    assert abs(mixture["loss"] - report["loss"]) > 1e-4


@pytest.mark.slow
def test_evaluate_mode_sizes_tail_slices_by_the_split(trained_run, tiny_data, monkeypatch):
    """`evaluate` sizes the tail slices by the split's own labels (no batch falls back to the
    dense loss) and gives the dense loss's numbers."""
    from par_xl.data.label_statistics import max_tail_labels_per_batch
    from par_xl.training import runs, trainer

    loaded = []
    load_run = runs.load_run
    monkeypatch.setattr(
        trainer, "load_run", lambda *args: loaded.append(load_run(*args)) or loaded[-1]
    )
    split = f"{tiny_data}/tf/valid"
    sparse = trainer.evaluate(trained_run / "checkpoints", split)
    model = loaded[0][0]
    expected = max_tail_labels_per_batch(split, model.cutoffs, model.vocab_size)
    assert model.output_layer.tail_capacities == expected
    dense_model = load_run(trained_run / "checkpoints")[0]
    assert dense_model.output_layer.tail_capacities is None
    dense = evaluate_split(dense_model, split)
    np.testing.assert_allclose(sparse["loss"], dense["loss"], rtol=1e-6)


@pytest.mark.slow
def test_init_from_starts_a_derived_architecture_from_the_supernet(trained_run, tiny_data,
                                                                   tmp_path):  # fmt: skip
    """--init_from gives a fixed architecture the supernet's weights: the model equals the
    supernet's `derive()`; a run with another shape is refused, naming what differs."""
    from par_xl.training import trainer
    from par_xl.training.runs import build_model, load_run

    checkpoints = trained_run / "checkpoints"
    supernet, model_config, train_config, data = load_run(checkpoints)
    config = dataclasses.replace(model_config, architecture="AFA")
    batch_shape = (data["batch_size"], data["seq_len"])
    model = build_model(config, train_config, batch_shape, 1)
    inputs = next(iter(load_dataset(f"{tiny_data}/tf/valid")))[0]
    fresh = ops.convert_to_numpy(model(inputs))
    trainer.initialize_from(model, config, checkpoints)
    model.reset_state()  # the call above filled its XL memory; derive()'s starts empty
    derived = ops.convert_to_numpy(supernet.derive("AFA")(inputs))
    np.testing.assert_allclose(ops.convert_to_numpy(model(inputs)), derived, rtol=1e-5, atol=1e-6)
    assert np.abs(fresh - derived).max() > 1e-2

    args = train_args(tiny_data, tmp_path, "derived", "--architecture=AFA", "--max_steps=2",
                      "--log_every=1", f"--init_from={checkpoints}")  # fmt: skip
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "derived/training_log.log").read_text()
    assert f"weights from {checkpoints} (step 60)" in log
    assert "step 2 | loss" in log and "| tau " not in log  # no search: no temperature
    assert "pictures of the search" not in log  # and nothing to draw
    wide = train_args(tiny_data, tmp_path, "wide", "--d_model=16", "--num_heads=2",
                      f"--init_from={checkpoints}")  # fmt: skip
    refused = run_script("train.py", *wide)
    assert refused.returncode == 2
    assert (f"--init_from={checkpoints}: that run's model has another shape (d_model 32 there, "
            "16 here)") in refused.stderr  # fmt: skip


@pytest.mark.slow
def test_generate_prints_what_the_library_samples(trained_run):
    """generate.py's text is the library's sample for the same run, prompt and seed, decoded."""
    from par_xl.data import decode_lines, load_tokenizer
    from par_xl.training.runs import load_run

    flags = ["--prompt=Ka lo mi 😀", "--num_tokens=20", "--top_k=20", "--temperature=0.8",
             "--seed=3"]  # fmt: skip
    result = run_script("generate.py", f"--checkpoint_dir={trained_run}/checkpoints", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    model, _, _, data = load_run(trained_run / "checkpoints")
    tokenizer = load_tokenizer(data["sp_model"])
    prompt = tokenizer.encode("Ka lo mi 😀")
    ids, _ = generate(model, prompt, 20, temperature=0.8, top_k=20, seed=3, jit_compile=False)
    assert result.stdout == decode_lines(tokenizer, prompt + ids) + "\n"
    assert result.stdout.startswith("ka lo mi 😀")  # lowercased; the unseen emoji round-trips
    assert "⁇" not in result.stdout
    # The seed decides the sample: the script's --seed=3 text is not another seed's.
    other, _ = generate(model, prompt, 20, temperature=0.8, top_k=20, seed=4, jit_compile=False)
    assert decode_lines(tokenizer, prompt + other) + "\n" != result.stdout


@pytest.mark.slow
def test_base_model_script_smoke_run(small_text_dir, tmp_path):
    env = {
        **os.environ,
        "SMOKE": "1",
        "PYTHON": sys.executable,
        "DATA_DIR": str(tmp_path / "data"),
        "WIKITEXT2_DIR": str(small_text_dir),
        "VOCAB_SIZE": "400",
        "BATCH_SIZE": "4",
        "SEQ_LEN": "16",
        "LOG_DIR": str(tmp_path / "runs"),
    }
    result = subprocess.run(["bash", str(REPO / "base_model.sh")], env=env, cwd=tmp_path,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "runs/smoke/results.json").read_text())
    assert results["step"] == 20 and np.isfinite(results["test"]["perplexity"])
    config = json.loads((tmp_path / "runs/smoke/checkpoints/config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["model"]["cutoffs"] == [20, 80]


def test_model_flags_override_the_preset_and_cutoffs_zero_is_a_plain_softmax():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_cli", REPO / "train.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cli.FLAGS(["train.py", "--preset=tiny", "--cutoffs=0", "--d_ffn=48", "--choices=AF"])
    try:
        config = cli.model_config_from_flags()
    finally:
        cli.FLAGS.unparse_flags()
    assert config == dataclasses.replace(PRESETS["tiny"], cutoffs=(), d_ffn=48, choices="AF")
    assert PRESETS["tiny"].choices == "AFI"
