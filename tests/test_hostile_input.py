"""Hostile input and faults: each bad input or fault gets a clear message and exit code, never a
traceback, a silently wrong result, or a half-written file (issue 13).

The table `CASES` runs the command-line scripts on bad flags and bad data; the tests after it
inject faults: other data on resume, a diverging loss, damaged checkpoints, a full disk, two runs
at once, an interrupted build.
"""

import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from keras import ops
from scripts import REPO, run_script
from test_training import read_results, train_args

from par_xl.configs import PRESETS, TrainConfig
from par_xl.data import BuildConfig, build_data
from par_xl.files import DiskFull, atomic_write_text, megabytes, temporary_name
from par_xl.models import PARTransformerXL
from par_xl.runtime.log_files import log_to_file
from par_xl.training import callbacks as cb
from par_xl.training import trainer
from par_xl.training.evaluation import perplexity
from par_xl.training.runs import LOCK_FILE, lock_run


@pytest.fixture(scope="module")
def tiny_data(small_text_dir, tmp_path_factory):
    """As in test_training: the generated corpus, a 400-piece vocabulary, 4 x 16 batches."""
    root = tmp_path_factory.mktemp("tiny_data")
    build_data(BuildConfig(input_text=str(small_text_dir), tfrecords_directory=str(root / "tf"),
                           sp_model_prefix=str(root / "sp"), vocab_size=400, batch_size=4,
                           seq_len=16))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def other_data(tiny_data, small_text_dir, tmp_path_factory):
    """The same text built twice more: with another SentencePiece model of the same vocabulary
    size (`bpe/`), and with the tiny data's model but batches of 8 (`batch8/`)."""
    root = tmp_path_factory.mktemp("other_data")
    common = dict(input_text=str(small_text_dir), vocab_size=400, seq_len=16)
    build_data(BuildConfig(tfrecords_directory=str(root / "bpe"), sp_model_prefix=str(root / "bpe"),
                           model_type="bpe", batch_size=4, **common))  # fmt: skip
    build_data(BuildConfig(tfrecords_directory=str(root / "batch8"), batch_size=8,
                           sp_model=f"{tiny_data}/sp.model", **common))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def short_run(tiny_data, tmp_path_factory):
    """A 20-step run with checkpoints at steps 10 and 20."""
    runs = tmp_path_factory.mktemp("short_runs")
    result = run_script("train.py", *train_args(tiny_data, runs, "short", "--max_steps=20",
                                                "--checkpoint_every=10"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "short"


def copy_run(run, destination):
    """A copy of a run directory to resume or damage, without touching the original."""
    shutil.copytree(run, destination / run.name)
    return destination / run.name


def edited_split(tiny_data, destination):
    """A copy of the valid split whose metadata.json says seq_len 8 (consistently edited)."""
    split = destination / "edited"
    shutil.copytree(tiny_data / "tf" / "valid", split)
    metadata = json.loads((split / "metadata.json").read_text())
    metadata.update(seq_len=8, tokens_used=metadata["tokens_used"] // 2)
    (split / "metadata.json").write_text(json.dumps(metadata))
    return split


# The table: (script, arguments, exit code, what the message must say: a string or a tuple of
# them). {data} is the tiny data, {other} the other builds, {run} a copy of the short run in
# {runs}, {tmp} a scratch directory.

TRAIN = ("--train_directory={data}/tf/train", "--valid_directory={data}/tf/valid",
         "--sp_model_prefix={data}/sp", "--preset=tiny", "--cutoffs=20", "--cutoffs=80",
         "--epochs=1", "--log_dir={tmp}/runs", "--model_name=short")  # fmt: skip
CASES = {
    "steps_per_execution_zero": (
        "train.py", (*TRAIN, "--steps_per_execution=0"), 2,
        "--steps_per_execution must be positive"),
    "divergence_factor_below_one": (
        "train.py", (*TRAIN, "--divergence_factor=0.5"), 2, "--divergence_factor must be 0"),
    "log_dir_not_writable": (
        "train.py", (*TRAIN[:-2], "--log_dir={tmp}/a_file/runs", "--model_name=x"), 2,
        "--log_dir / --model_name: cannot create {tmp}/a_file/runs/x"),
    "metadata_edited_by_hand": (
        "train.py", ("--train_directory={tmp}/edited", "--valid_directory={tmp}/edited",
                     *TRAIN[2:]), 2,
        "{tmp}/edited: its records do not match its metadata.json (batch 4 x 8)"),
    "resume_without_checkpoints": (
        "train.py", (*TRAIN, "--resume"), 2, "--resume: no checkpoint in"),
    "resume_on_other_sentencepiece_model": (
        "train.py", ("--train_directory={other}/bpe/train", "--valid_directory={other}/bpe/valid",
                     "--sp_model_prefix={other}/bpe", *TRAIN[3:-2], "--log_dir={runs}",
                     "--model_name=short", "--resume"), 2,
        ("--resume: the data differ from those the run was trained on: ",
         "train sp_model_sha256 ", "Resume with the run's data (--train_directory=")),
    "resume_on_other_batch_size": (
        "train.py", ("--train_directory={other}/batch8/train",
                     "--valid_directory={other}/batch8/valid", *TRAIN[2:-2], "--log_dir={runs}",
                     "--model_name=short", "--resume"), 2, "train batch_size 4 -> 8"),
    "loss_explodes": (
        "train.py", (*TRAIN, "--warmup_steps=0", "--max_lr=1e6", "--max_steps=40",
                     "--checkpoint_every=1"), 3, "The training loss became"),
    "evaluate_without_run": (
        "train.py", ("--mode=evaluate", "--checkpoint_dir={tmp}/nothing"), 2,
        "{tmp}/nothing/config.json does not exist"),
    "evaluate_missing_checkpoint": (
        "train.py", ("--mode=evaluate", "--checkpoint_dir={run}/checkpoints",
                     "--checkpoint={run}/checkpoints/ckpt-00000015.weights.h5"), 2,
        "--checkpoint: {run}/checkpoints/ckpt-00000015.weights.h5 does not exist"),
    "generate_negative_num_tokens": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints", "--num_tokens=-5"), 2,
        "--num_tokens must be positive, received -5"),
    "generate_negative_top_k": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints", "--top_k=-3"), 2,
        "--top_k must be >= 0"),
    "generate_negative_mem_len": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints", "--mem_len=-1"), 2,
        "--mem_len must be >= 0, received -1"),
    "generate_zero_temperature": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints", "--temperature=0"), 2,
        "--temperature must be positive"),
    "generate_with_other_sentencepiece_model": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints", "--sp_model_prefix={other}/bpe"), 2,
        "--sp_model_prefix: {other}/bpe.model is not the SentencePiece model the run was "
        "trained with"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input_gets_a_message_not_a_traceback(case, tiny_data, other_data, short_run,
                                                      tmp_path):  # fmt: skip
    script, args, code, message = CASES[case]
    run = copy_run(short_run, tmp_path / "copy")
    (tmp_path / "a_file").write_text("not a directory")
    edited_split(tiny_data, tmp_path)
    config = (run / "checkpoints/config.json").read_bytes()
    places = dict(data=tiny_data, other=other_data, run=run, runs=run.parent, tmp=tmp_path)
    result = run_script(script, *(a.format(**places) for a in args))
    assert result.returncode == code, result.stderr[-3000:]
    for part in (message,) if isinstance(message, str) else message:
        assert part.format(**places) in result.stderr
    assert "Traceback" not in result.stderr
    # A refused resume changes nothing in the run.
    assert (run / "checkpoints/config.json").read_bytes() == config


# 1, 9. Resume checks the data; a refused resume leaves config.json as it was (in the table);
# generation still works on the run afterwards.


def test_generation_works_after_a_refused_resume(tiny_data, other_data, short_run, tmp_path):
    run = copy_run(short_run, tmp_path)
    script, args, code, _ = CASES["resume_on_other_sentencepiece_model"]
    places = dict(data=tiny_data, other=other_data, run=run, runs=run.parent, tmp=tmp_path)
    assert run_script(script, *(a.format(**places) for a in args)).returncode == code
    result = run_script("generate.py", f"--checkpoint_dir={run}/checkpoints", "--num_tokens=5")
    assert result.returncode == 0, result.stderr[-3000:]


# 2. Divergence: a loss that explodes but stays finite stops before it is evaluated or saved.


def test_finite_exploding_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    honest = PARTransformerXL.compute_loss

    def exploding(self, *args, **kwargs):  # from the 26th step on, finite but huge
        loss = honest(self, *args, **kwargs)
        return ops.where(self.optimizer.iterations >= 25, loss * 1e20, loss)

    monkeypatch.setattr(PARTransformerXL, "compute_loss", exploding)
    config = TrainConfig(
        f"{tiny_data}/tf/train", f"{tiny_data}/tf/valid", log_dir=str(tmp_path),
        model_name="boom", checkpoint_every=10, max_steps=60, warmup_steps=10, max_lr=3e-3,
        jit_compile=False, eval_every=26,
    )  # fmt: skip
    model = dataclasses.replace(PRESETS["tiny"], cutoffs=(20, 80))
    with pytest.raises(cb.TrainingDiverged, match="at step 26, above the divergence bound 18.0"):
        trainer.train(model, config)
    checkpoints = tmp_path / "boom" / "checkpoints"
    assert json.loads((checkpoints / "latest.json").read_text())["step"] == 20
    assert sorted(p.name for p in checkpoints.glob("*.weights.h5")) == [
        "ckpt-00000010.weights.h5", "ckpt-00000020.weights.h5"]  # fmt: skip
    assert "step 26 | valid" not in (tmp_path / "boom/training_log.log").read_text()


def test_perplexity_of_a_diverged_loss_is_infinite_not_an_overflow():
    assert perplexity(1e6) == math.inf
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)


# 3. --steps_per_execution never overshoots --max_steps or the end of an epoch.


@pytest.mark.slow
def test_steps_per_execution_stops_at_max_steps_exactly(tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path, "spe", "--max_steps=10", "--steps_per_execution=4")
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_results(tmp_path / "spe")["step"] == 10
    assert json.loads((tmp_path / "spe/checkpoints/latest.json").read_text())["step"] == 10


@pytest.mark.slow
def test_more_steps_per_execution_than_an_epoch_has_stops_at_the_schedule_end(tiny_data, tmp_path):
    # The valid split (fewer than 200 batches) as training data, two epochs, 200 steps per
    # execution.
    steps = json.loads((tiny_data / "tf/valid/metadata.json").read_text())["steps"]
    args = [f"--train_directory={tiny_data}/tf/valid", f"--valid_directory={tiny_data}/tf/test",
            "--nounigram_bias_init", "--preset=tiny", "--cutoffs=20", "--cutoffs=80",
            "--epochs=2", "--steps_per_execution=200", f"--log_dir={tmp_path}",
            "--model_name=long"]  # fmt: skip
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_results(tmp_path / "long")["step"] == 2 * steps
    log = (tmp_path / "long/training_log.log").read_text()
    assert "epoch 1 end" in log and "epoch 2 end" in log
    assert f"{steps}/{steps}" in result.stdout  # each epoch's bar ends at its last batch


# 5. Damaged checkpoints: fall back to the newest intact one and say so.


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_rotation_keeps_the_newest_intact_checkpoints(tmp_path, caplog):
    from test_training import tiny_model

    from par_xl.training.checkpoints import CheckpointManager

    model = tiny_model()
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2):
        manager.save(model, step)
    truncate(manager.path(2))
    assert manager.latest() == manager.path(1)
    with caplog.at_level(logging.WARNING, "par_xl"):
        assert manager.restore(tiny_model()) == 0 and manager.restored == manager.path(1)
    assert "ckpt-00000002.weights.h5 is damaged" in caplog.text
    manager.save(model, 3)  # keeps 3 and the intact 1; the damaged 2 goes
    assert manager.steps() == [1, 3]


@pytest.mark.parametrize("damaged", ["ckpt-00000020.weights.h5", "ckpt-00000020.state.npz"])
def test_evaluation_falls_back_to_the_newest_intact_checkpoint(
    damaged, short_run, tmp_path, caplog
):
    run = copy_run(short_run, tmp_path)
    truncate(run / "checkpoints" / damaged)
    with caplog.at_level(logging.WARNING, "par_xl"):
        result = trainer.evaluate(run / "checkpoints")
    assert np.isfinite(result["loss"])
    assert "checkpoint" in caplog.text and "ckpt-00000020.weights.h5 is damaged" in caplog.text
    assert "using checkpoint" in caplog.text and "ckpt-00000010.weights.h5" in caplog.text


def test_a_damaged_latest_file_is_survived(short_run, tmp_path, caplog):
    run = copy_run(short_run, tmp_path)
    truncate(run / "checkpoints/latest.json")
    with caplog.at_level(logging.WARNING, "par_xl"):
        result = trainer.evaluate(run / "checkpoints")
    assert np.isfinite(result["loss"]) and "latest.json is damaged" in caplog.text


@pytest.mark.slow
def test_resume_and_generate_skip_a_truncated_newest_checkpoint(tiny_data, short_run, tmp_path):
    run = copy_run(short_run, tmp_path)
    truncate(run / "checkpoints/ckpt-00000020.weights.h5")
    generated = run_script("generate.py", f"--checkpoint_dir={run}/checkpoints", "--num_tokens=5")
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert "ckpt-00000020.weights.h5 is damaged" in generated.stderr
    resumed = run_script("train.py", *train_args(tiny_data, tmp_path, "short", "--max_steps=30",
                                                 "--checkpoint_every=10", "--resume"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "ckpt-00000020.weights.h5 is damaged" in resumed.stderr
    log = (run / "training_log.log").read_text()
    assert "resumed from" in log and "ckpt-00000010.weights.h5 at step 10" in log
    # The damaged file is set aside, so it neither shadows nor outlives the new checkpoints.
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "ckpt-00000020.weights.h5.damaged" in names
    assert "ckpt-00000030.weights.h5" in names and read_results(run)["step"] == 30


# 7. A full disk: the partial file is removed, the previous checkpoint kept, the message says
# what to free, and the run resumes.


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    honest = PARTransformerXL.save_weights

    def full_disk(self, filepath, *args, **kwargs):
        if int(ops.convert_to_numpy(self.optimizer.iterations)) >= 20:
            Path(filepath).write_bytes(b"the first bytes")
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return honest(self, filepath, *args, **kwargs)

    monkeypatch.setattr(PARTransformerXL, "save_weights", full_disk)
    config = TrainConfig(
        f"{tiny_data}/tf/train", f"{tiny_data}/tf/valid", log_dir=str(tmp_path),
        model_name="full", checkpoint_every=10, max_steps=30, jit_compile=False,
    )  # fmt: skip
    model = dataclasses.replace(PRESETS["tiny"], cutoffs=(20, 80))
    checkpoints = tmp_path / "full" / "checkpoints"
    with pytest.raises(DiskFull) as error:
        trainer.train(model, config)
    message = str(error.value)
    assert f"no space left on the device of {checkpoints}" in message
    size = megabytes((checkpoints / "ckpt-00000010.weights.h5").stat().st_size)  # as the last one
    assert f"ckpt-00000020.weights.h5: it needs about {size}" in message and "--resume" in message
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "ckpt-00000010.state.npz",
        "ckpt-00000010.weights.h5",
        "config.json",
        "latest.json",
    ]
    monkeypatch.undo()
    stale = temporary_name(checkpoints / "ckpt-00000020.weights.h5", ".weights.h5")
    stale.write_bytes(b"left by a kill -9")
    results = trainer.train(model, dataclasses.replace(config, resume=True))
    assert results["step"] == 30 and not stale.exists()


def test_full_disk_while_logging_stops_with_a_message(tmp_path):
    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    with log_to_file(tmp_path / "job.log", "par_xl.test") as logger:
        handler = logger.handlers[-1]
        real, handler.stream = handler.stream, FullDisk()
        real.close()
        with pytest.raises(DiskFull, match=re.escape(f"no space left on the device of {tmp_path}")):
            logger.info("a line")
        logger.info("the next line is dropped, not a traceback")


def test_full_disk_while_writing_results_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(self, text, **kwargs):
        Path.write_bytes(self, text[:3].encode())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    from par_xl.files import reporting_full_disk

    with pytest.raises(DiskFull, match="results.json: it needs a little space"):
        with reporting_full_disk(tmp_path / "results.json"):
            atomic_write_text(tmp_path / "results.json", "{}")
    assert list(tmp_path.iterdir()) == []


# 8. Two runs of one run directory: the second is refused; a dead run's lock does not block.


@pytest.mark.slow
def test_a_second_run_of_the_same_directory_is_refused(tiny_data, tmp_path):
    run = tmp_path / "twice"
    with lock_run(run):
        result = run_script("train.py", *train_args(tiny_data, tmp_path, "twice", "--max_steps=5"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{run} is in use by another training run (PID {os.getpid()})" in result.stderr
    assert not (run / "checkpoints").exists()


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    (tmp_path / LOCK_FILE).write_text("999999\n")  # its holder is gone: no flock on it
    with lock_run(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)


# 9. Ctrl-C during a build: a message and exit code 130, not a traceback.


def test_interrupted_build_exits_130_with_a_message(small_text_dir, tmp_path):
    code = (
        "import runpy, sys; import par_xl.data as data\n"
        "def interrupted(config): raise KeyboardInterrupt\n"
        "data.build_data = interrupted\n"
        f"sys.argv = ['build_data.py', '--input_text={small_text_dir}', "
        f"'--tfrecords_directory={tmp_path}/tf', '--sp_model_prefix={tmp_path}/sp']\n"
        "runpy.run_path('build_data.py', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 130, result.stderr[-3000:]
    assert "build_data.py: interrupted" in result.stderr and "run the build again" in result.stderr
    assert "Traceback" not in result.stderr
