"""Hostile input and faults: each bad input or fault gets a clear message and exit code, never a
traceback, a silently wrong result, or a half-written file (issues 13 and 33).

The table `CASES` runs the command-line scripts on bad flags and bad data, and with it
`flag_cases.FLAG_CASES`, every flag of every script and every field of metadata.json and
config.json given a value it cannot take; the tests after it inject faults: other data on resume,
a diverging loss, damaged checkpoints, a full disk, two runs at once, an interrupted build, a
checkpoint of another run, a signal during the final evaluation.
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
from typing import NamedTuple

import h5py
import numpy as np
import pytest
from flag_cases import ANY_VALUE, DELETE, FLAG_CASES
from keras import ops
from scripts import REPO, run_script
from test_training import read_results, train_args

from par_xl.configs import PRESETS, ModelConfig, TrainConfig
from par_xl.data import BuildConfig, DatasetMetadata, build_data, read_metadata
from par_xl.files import DiskFull, atomic_write_text, megabytes, temporary_name
from par_xl.models import PARTransformerXL
from par_xl.runtime.log_files import log_to_file
from par_xl.training import callbacks as cb
from par_xl.training import trainer
from par_xl.training.checkpoints import CheckpointError, CheckpointNotSaved
from par_xl.training.evaluation import perplexity
from par_xl.training.run_identity import changed_training_flags
from par_xl.training.runs import LOCK_FILE, load_run, lock_run, lock_run_directories


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


SHORT = ("--max_steps=20", "--checkpoint_every=10")


@pytest.fixture(scope="module")
def short_run(tiny_data, tmp_path_factory):
    """A 20-step run with checkpoints at steps 10 and 20."""
    runs = tmp_path_factory.mktemp("short_runs")
    result = run_script("train.py", *train_args(tiny_data, runs, "short", *SHORT))
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "short"


@pytest.fixture(scope="module")
def bpe_run(other_data, tmp_path_factory):
    """Another run of the short run's shape, on the BPE build of the same text: a checkpoint
    of its fits the short run's model, and means nothing under its tokenizer."""
    runs = tmp_path_factory.mktemp("bpe_runs")
    bpe = other_data / "bpe"
    args = [f"--train_directory={bpe}/train", f"--valid_directory={bpe}/valid",
            f"--sp_model_prefix={bpe}", "--preset=tiny", "--cutoffs=20", "--cutoffs=80",
            "--max_steps=10", "--checkpoint_every=10", f"--log_dir={runs}",
            "--model_name=bpe"]  # fmt: skip
    result = run_script("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "bpe"


def copy_run(run, destination):
    """A copy of a run directory to resume or damage, without touching the original."""
    shutil.copytree(run, destination / run.name)
    return destination / run.name


def edited_split(tiny_data, destination):
    """A copy of the valid split whose metadata.json says seq_len 8 (consistently edited)."""
    split = destination / "edited"
    shutil.copytree(tiny_data / "tf" / "valid", split)
    metadata = json.loads((split / "metadata.json").read_text())
    tokens_used = metadata["tokens_used"] // 2
    metadata.update(seq_len=8, tokens_used=tokens_used,
                    tokens_dropped=metadata["num_tokens"] - 1 - tokens_used)  # fmt: skip
    (split / "metadata.json").write_text(json.dumps(metadata))
    return split


# The table: (script, arguments, exit code, what the message must say: a string or a tuple of
# them[, an edit, a patch: see Case]). {data} is the tiny data, {other} the other builds, {run} a
# copy of the short run in {runs}, {bpe} the BPE run, {text} the small corpus, {tmp} a scratch
# directory. A case that is not refused trains one step at most (--max_steps=1).

TRAIN = ("--train_directory={data}/tf/train", "--valid_directory={data}/tf/valid",
         "--sp_model_prefix={data}/sp", "--preset=tiny", "--cutoffs=20", "--cutoffs=80",
         "--epochs=1", "--max_steps=1", "--log_dir={tmp}/runs", "--model_name=short")  # fmt: skip
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
    # Issue 33. 2, 3: a checkpoint of another run (same shape, another tokenizer) is refused,
    # naming both runs.
    "evaluate_checkpoint_of_another_run": (
        "train.py", ("--mode=evaluate", "--checkpoint_dir={run}/checkpoints",
                     "--checkpoint={bpe}/checkpoints/ckpt-00000010.weights.h5"), 2,
        ("--checkpoint={bpe}/checkpoints/ckpt-00000010.weights.h5 belongs to the run 'bpe' (id ",
         "not to the run in {run}/checkpoints: 'short' (id ",
         "use it with --checkpoint_dir=")),
    "generate_checkpoint_of_another_run": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints",
                        "--checkpoint={bpe}/checkpoints/ckpt-00000010.weights.h5"), 2,
        ("--checkpoint={bpe}/checkpoints/ckpt-00000010.weights.h5 belongs to the run 'bpe' (id ",
         "not to the run in {run}/checkpoints: 'short' (id ")),
    "evaluate_other_runs_checkpoint_in_a_run_without_identity": (
        "train.py", ("--mode=evaluate", "--checkpoint_dir={run}/checkpoints",
                     "--checkpoint={bpe}/checkpoints/ckpt-00000010.weights.h5"), 2,
        ("--checkpoint={bpe}/checkpoints/ckpt-00000010.weights.h5 belongs to the run 'bpe' (id ",
         "not to the run in {run}/checkpoints: a run whose config.json records no identity"),
        ("config", {"run": DELETE})),
    "generate_after_config_json_edited": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints",), 2,
        "the checkpoint {run}/checkpoints/ckpt-00000020.weights.h5 was written under another "
        "configuration than {run}/checkpoints/config.json now holds",
        ("config", {"model.knn_neighbors": 16})),
    # 7. Changed training flags (schedule, optimizer, the search's) on --resume.
    "resume_with_changed_training_flags": (
        "train.py", (*train_args("{data}", "{runs}", "short", *SHORT), "--resume", "--max_lr=0.5",
                     "--warmup_steps=0", "--epochs=3"), 2,
        ("--resume: the training flags differ from the checkpointed run's: max_lr 0.003 -> 0.5; "
         "warmup_steps 10 -> 0; epochs 1 -> 3", "(the schedules would end at step ",
         "pass --allow_changed_training_flags")),
    "resume_with_changed_search_flags": (
        "train.py", (*train_args("{data}", "{runs}", "short", *SHORT), "--resume",
                     "--arch_lr=0.05", "--cost=flops"), 2,
        "training flags differ from the checkpointed run's: arch_lr 0.01 -> 0.05; cost 'none' -> "
        "'flops'."),
    # 10. plot_search.py --output_dir on a read-only filesystem (a file in the way: flag_cases).
    "plot_output_dir_read_only": (
        "plot_search.py", ("--run_dir={run}", "--output_dir={tmp}/read_only"), 2,
        "--output_dir={tmp}/read_only: cannot write search.png and search.gif there: Read-only "
        "file system", None,
        "import errno, pathlib\nhonest = pathlib.Path.mkdir\n"
        "def mkdir(self, *args, **kwargs):\n"
        "    if 'read_only' in str(self):\n"
        "        raise OSError(errno.EROFS, 'Read-only file system', str(self))\n"
        "    return honest(self, *args, **kwargs)\n"
        "pathlib.Path.mkdir = mkdir\n"),
    # 11. Each message names the flag given and the value it should have.
    "init_from_missing": (
        "train.py", (*TRAIN, "--init_from={tmp}/nothing"), 2,
        "--init_from: {tmp}/nothing/config.json does not exist"),
    "cutoffs_in_the_wrong_order": (
        "train.py", (*TRAIN[:4], "--cutoffs=80", "--cutoffs=20", *TRAIN[6:]), 2,
        "--cutoffs must be strictly increasing and between 0 and the vocabulary size 400 "
        "(exclusive), received [80, 20]."),
    "evaluate_state_file_as_checkpoint": (
        "train.py", ("--mode=evaluate", "--checkpoint_dir={run}/checkpoints",
                     "--checkpoint={run}/checkpoints/ckpt-00000020.state.npz"), 2,
        "--checkpoint={run}/checkpoints/ckpt-00000020.state.npz is the random-generator states "
        "of a checkpoint, not the checkpoint: give its weights file, "
        "--checkpoint={run}/checkpoints/ckpt-00000020.weights.h5."),
    "generate_record_as_checkpoint": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints",
                        "--checkpoint={run}/checkpoints/ckpt-00000020.record.json"), 2,
        "--checkpoint={run}/checkpoints/ckpt-00000020.record.json is the record of a checkpoint"),
    "generate_run_sentencepiece_model_moved": (
        "generate.py", ("--checkpoint_dir={run}/checkpoints",), 2,
        "the run's SentencePiece model {tmp}/moved/sp.model does not exist (moved or deleted?): "
        "pass --sp_model_prefix=<its path without .model>",
        ("config", {"data.train.sp_model": "{tmp}/moved/sp.model"})),
}  # fmt: skip


class Case(NamedTuple):
    """A table entry: the script, its arguments, the exit code, what stderr must say (a string
    or a tuple of them), an edit of the run's or the data's files before the run (see
    flag_cases), and Python run in the script's process before it (a fault to inject)."""

    script: str
    args: tuple
    code: int
    message: str | tuple
    edit: tuple | None = None
    patch: str | None = None


def edit_json(path, changes):
    """Sets (or with DELETE removes) the dotted keys of `changes` in the JSON file `path`."""
    document = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        target = document
        for name in parents:
            target = target[name]
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    path.write_text(json.dumps(document))


def apply_edit(edit, places):
    kind, changes = edit
    if isinstance(changes, dict):
        changes = {k: v.format(**places) if isinstance(v, str) else v for k, v in changes.items()}
    if kind == "metadata":
        split = places["tmp"] / "meta"
        shutil.copytree(places["data"] / "tf" / "valid", split)
        edit_json(split / "metadata.json", changes)
    elif kind == "config":
        edit_json(places["run"] / "checkpoints/config.json", changes)
    else:
        (places["run"] / "checkpoints/config.json").write_text(changes)


def run_patched(directory, patch, script, *args):
    """`run_script(script, *args)` with `patch` (Python) run first in the script's process."""
    wrapper = directory / "patched_script.py"
    wrapper.write_text(
        f"{patch}\nimport runpy, sys\nsys.argv[0] = {str(REPO / script)!r}\n"
        f"sys.path.insert(0, {str(REPO)!r})\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    return run_script(wrapper, *args)


ALL_CASES = {**CASES, **FLAG_CASES}


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_hostile_input_gets_a_message_not_a_traceback(
    case, tiny_data, other_data, short_run, bpe_run, small_text_dir, tmp_path
):
    script, args, code, message, edit, patch = Case(*ALL_CASES[case])
    run = copy_run(short_run, tmp_path / "copy")
    (tmp_path / "a_file").write_text("not a directory")
    edited_split(tiny_data, tmp_path)
    places = dict(data=tiny_data, other=other_data, run=run, runs=run.parent, tmp=tmp_path,
                  text=small_text_dir, bpe=bpe_run)  # fmt: skip
    if edit:
        apply_edit(edit, places)
    config = (run / "checkpoints/config.json").read_bytes()
    args = [a.format(**places) for a in args]
    result = run_patched(tmp_path, patch, script, *args) if patch else run_script(script, *args)
    assert result.returncode == code, result.stderr[-3000:]
    for part in (message,) if isinstance(message, str) else message:
        assert part.format(**places) in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # A refused resume changes nothing in the run.
    assert (run / "checkpoints/config.json").read_bytes() == config


def defined_flags(script):
    """`{flag: kind}` of the flags `script` defines (kind: DEFINE_<kind>)."""
    text = (REPO / script).read_text()
    return {name: kind for kind, name in re.findall(r'flags\.DEFINE_(\w+)\(\s*"(\w+)"', text)}


@pytest.mark.parametrize(
    "script", ["train.py", "generate.py", "build_data.py", "optimal_cuts.py", "plot_search.py"]
)
def test_every_flag_and_field_has_a_case(script):
    """Each flag a script defines has a case with a value it cannot take (issue 33), except the
    booleans and enums absl parses (a case per script shows absl's message) and the flags any
    value suits (`ANY_VALUE`, with the reason); metadata.json's fields likewise, and
    config.json's through train.py's flags, which the same checks validate."""
    used = set()
    for case in ALL_CASES.values():
        if case[0] == script:
            used.update(re.match(r"--(\w+)", arg)[1] for arg in case[1])
    flags = defined_flags(script)
    used |= {name[2:] for name in used if name.startswith("no") and name[2:] in flags}
    closed = {name for name, kind in flags.items() if kind in ("bool", "boolean", "enum")}
    missing = set(flags) - used - closed - set(ANY_VALUE.get(script, {}))
    assert not missing, f"{script}: no case gives these flags a bad value: {sorted(missing)}"
    if script == "train.py":
        fields = {f.name for f in dataclasses.fields(ModelConfig) + dataclasses.fields(TrainConfig)}
        fields -= {"vocab_size", "log_dir"}  # the data's (metadata cases); absl's flag (CASES)
        assert not fields - set(flags), "a configuration field train.py has no flag for"
        edits = [Case(*case).edit for case in ALL_CASES.values()]
        edited = {key for edit in edits if edit and edit[0] == "metadata" for key in edit[1]}
        assert not {f.name for f in dataclasses.fields(DatasetMetadata)} - edited


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
        ".lock",
        "ckpt-00000010.record.json",
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


# Issue 33.
# 1. One run per directory, whatever the flags: a run that shares a running run's checkpoint
# directory (by another --model_name, a symlink, or the run directory itself) is refused
# before it touches anything.


@pytest.mark.parametrize(
    "given, locked",
    [("{run}/checkpoints", "{run}/checkpoints"), ("{alias}/checkpoints", "{run}/checkpoints"),
     ("{run}", "{run}")],
    ids=["same_path", "symlink", "run_directory"],
)  # fmt: skip
def test_a_run_sharing_a_running_runs_checkpoints_is_refused(given, locked, tiny_data, short_run,
                                                            tmp_path):  # fmt: skip
    run = copy_run(short_run, tmp_path / "a")
    (tmp_path / "alias").symlink_to(run)
    places = dict(run=run.resolve(), alias=tmp_path / "alias")
    checkpoints = run / "checkpoints"
    running = TrainConfig(f"{tiny_data}/tf/train", f"{tiny_data}/tf/valid",
                          log_dir=str(run.parent), model_name=run.name)  # fmt: skip
    with lock_run_directories(running):  # run A, training with its default checkpoint_dir
        before = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}
        args = train_args(tiny_data, tmp_path, "b", *SHORT, "--resume",
                          f"--checkpoint_dir={given.format(**places)}")  # fmt: skip
        result = run_script("train.py", *args)
        assert {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()} == before
    assert result.returncode == 2, result.stderr[-3000:]
    message = f"{locked.format(**places)} is in use by another training run (PID {os.getpid()})"
    assert message in result.stderr


def test_a_checkpoint_that_cannot_be_saved_stops_the_run_at_once(tiny_data, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    honest = PARTransformerXL.save_weights

    def removed_meanwhile(self, filepath, *args, **kwargs):  # as another run's start-up did
        honest(self, filepath, *args, **kwargs)
        if int(ops.convert_to_numpy(self.optimizer.iterations)) >= 4:
            Path(filepath).unlink()

    monkeypatch.setattr(PARTransformerXL, "save_weights", removed_meanwhile)
    config = TrainConfig(
        f"{tiny_data}/tf/train", f"{tiny_data}/tf/valid", log_dir=str(tmp_path),
        model_name="removed", checkpoint_every=2, log_every=2, max_steps=8, jit_compile=False,
    )  # fmt: skip
    model = dataclasses.replace(PRESETS["tiny"], cutoffs=(20, 80))
    with pytest.raises(CheckpointNotSaved) as error:
        trainer.train(model, config)
    checkpoints = tmp_path / "removed" / "checkpoints"
    message = str(error.value)
    assert (f"could not save the checkpoint {checkpoints}/ckpt-00000004.weights.h5: No such file "
            "or directory") in message  # fmt: skip
    assert "Only one run may use a checkpoint directory" in message
    assert (f"Training stopped at step 4; the last checkpoint saved is "
            f"{checkpoints}/ckpt-00000002.weights.h5.") in message  # fmt: skip
    log = (tmp_path / "removed/training_log.log").read_text()
    assert "step 4 | loss" in log and "step 6 | loss" not in log  # stopped there
    assert not list(checkpoints.glob("*.tmp-*"))


# 4. Integrity does not depend on latest.json: each checkpoint's record is checked on every
# load.


def flip_a_weight_bit(weights):
    """Flips one bit inside a weight array's stored values (not in the file's structure)."""
    with h5py.File(weights, "r") as h5:
        offsets = []
        h5.visititems(lambda _, item: offsets.append(item.id.get_offset())
                      if isinstance(item, h5py.Dataset) and item.size >= 64 else None)  # fmt: skip
    offset = next(o for o in offsets if o)
    data = bytearray(weights.read_bytes())
    data[offset + 7] ^= 1
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bit_flipped", "record_removed"])
def test_a_damaged_checkpoint_is_found_without_latest_json(damage, short_run, tmp_path, caplog):
    checkpoints = copy_run(short_run, tmp_path) / "checkpoints"
    (checkpoints / "latest.json").unlink()
    newest = checkpoints / "ckpt-00000020.weights.h5"
    if damage == "bit_flipped":
        flip_a_weight_bit(newest)
        reason = "ckpt-00000020.weights.h5 does not match the SHA-256 recorded when it was written"
    else:
        (checkpoints / "ckpt-00000020.record.json").unlink()
        reason = ("its record ckpt-00000020.record.json is missing (the save did not finish, or "
                  "the file was removed)")  # fmt: skip
    with caplog.at_level(logging.WARNING, "par_xl"):
        load_run(checkpoints)  # as evaluation and generation load it
    assert f"checkpoint {newest} is damaged ({reason})" in caplog.text
    assert f"using checkpoint {checkpoints}/ckpt-00000010.weights.h5" in caplog.text
    with pytest.raises(CheckpointError, match=re.escape(f"{newest} is damaged: {reason}")):
        load_run(checkpoints, newest)


# 5, 6, 7. SIGTERM during the final evaluation says what is saved and how to finish; --resume
# then finishes it (nothing left to train); a changed training flag is refused on resume (the
# table) unless allowed, and then the log records it.

SIGTERM_IN_THE_TEST_EVALUATION = """
import os, signal
from par_xl.training import trainer
honest = trainer.evaluate_split
def evaluate_split(model, directory):  # as `kill <pid>` during the final evaluation
    os.kill(os.getpid(), signal.SIGTERM)
    return honest(model, directory)
trainer.evaluate_split = evaluate_split
"""


def test_a_run_stopped_in_its_final_evaluation_says_so_and_resume_finishes_it(
    tiny_data, short_run, tmp_path
):
    run = copy_run(short_run, tmp_path)
    (run / "results.json").unlink()
    args = train_args(tiny_data, tmp_path, "short", *SHORT, "--resume")
    stopped = run_patched(tmp_path, SIGTERM_IN_THE_TEST_EVALUATION, "train.py", *args)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert (
        "train.py: interrupted by signal 15 during the final evaluation at step 20: the "
        f"checkpoint of step 20 is saved ({run}/checkpoints/ckpt-00000020.weights.h5), "
        "results.json is not written. Run again with --resume to finish the evaluation"
    ) in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert not (run / "results.json").exists() and not list(run.glob("*.tmp-*"))
    finished = run_script("train.py", *args, "--max_lr=1e-3", "--allow_changed_training_flags")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "the run already reached its last step, step 20 of 20" in finished.stderr
    assert f"step 20: final evaluation written to {run}/results.json" in finished.stderr
    results = read_results(run)
    assert results["step"] == 20 and np.isfinite(results["test"]["loss"])
    assert ("--allow_changed_training_flags: the training flags change on this resume: max_lr "
            "0.003 -> 0.001") in (run / "training_log.log").read_text()  # fmt: skip
    assert json.loads((run / "checkpoints/config.json").read_text())["train"]["max_lr"] == 1e-3


def test_resume_compares_the_architecture_start_by_its_effect():
    """Runs from before arch_start_step's None default recorded the warm-up's end: resuming one
    with the default changes nothing; another warm-up moves both."""
    older = TrainConfig("train", "valid", warmup_steps=10, arch_start_step=10)
    assert changed_training_flags(older, dataclasses.replace(older, arch_start_step=None)) == []
    shorter = dataclasses.replace(older, warmup_steps=5, arch_start_step=None)
    assert changed_training_flags(older, shorter) == [
        ("warmup_steps", 10, 5), ("arch_start_step", 10, 5)]  # fmt: skip


# 8. base_model.sh (through create_tfrecords.sh) on data built with other settings stops,
# naming the difference and REBUILD=1, before it trains or rebuilds anything.


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("BATCH_SIZE", "8", "BATCH_SIZE=8 asked, the data have 4"),
        ("SEQ_LEN", "32", "SEQ_LEN=32 asked, the data have 16"),
        ("VOCAB_SIZE", "500", "VOCAB_SIZE=500 asked, the data have 400"),
        ("LOWERCASE", "false", "LOWERCASE=False asked, the data have True"),
        ("SHARDS", "2", "SHARDS=2 asked, the data have 4"),
        ("SP_MODEL_PREFIX", "{other}/bpe", "SP_MODEL_PREFIX={other}/bpe.model (missing or "
         "another model) asked, the data have {data}/sp.model"),
        ("BATCH_SIZE", "four", "error: BATCH_SIZE=four: expected a positive integer"),
    ],
)  # fmt: skip
def test_base_model_sh_stops_on_data_built_with_other_settings(
    setting, value, message, tiny_data, other_data, tmp_path
):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "tf", data / "tfrecords")
    for suffix in (".model", ".vocab"):
        shutil.copy(tiny_data / f"sp{suffix}", data / f"sp{suffix}")
    built = (data / "tfrecords/train/metadata.json").read_bytes()
    places = dict(data=tiny_data, other=other_data)
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(data),
           "SP_MODEL_PREFIX": str(data / "sp"), "VOCAB_SIZE": "400", "BATCH_SIZE": "4",
           "SEQ_LEN": "16", "SHARDS": "4", "SMOKE": "1", "MAX_STEPS": "1",
           "LOG_DIR": str(tmp_path / "runs"), setting: value.format(**places)}  # fmt: skip
    result = subprocess.run(["bash", str(REPO / "base_model.sh")], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert message.format(**places) in result.stderr
    if not value == "four":
        assert f"the TFRecords in {data}/tfrecords were built with other settings" in result.stderr
        assert "Set REBUILD=1 to build them again" in result.stderr
    assert (data / "tfrecords/train/metadata.json").read_bytes() == built
    assert not (tmp_path / "runs").exists() and "already built" not in result.stdout


# 9. build_data.py on a full disk names the device and the space needed, and removes what it
# wrote: the same command then runs as it ran first (no --overwrite needed).

FULL_DISK_IN_THE_VALID_SPLIT = """
import tensorflow as tf
honest = tf.io.TFRecordWriter
class Writer:
    def __init__(self, path, *args):
        self.path, self.writer = path, honest(path, *args)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.writer.close()
    def write(self, record):
        if "/valid/" in self.path:
            message = f"{self.path}; No space left on device"
            raise tf.errors.ResourceExhaustedError(None, None, message)
        self.writer.write(record)
tf.io.TFRecordWriter = Writer
"""


def test_build_data_on_a_full_disk_names_it_and_a_plain_retry_works(small_text_dir, tmp_path):
    out = tmp_path / "out"
    args = [f"--input_text={small_text_dir}", f"--tfrecords_directory={out}/tf",
            f"--sp_model_prefix={out}/sp", "--vocab_size=400", "--batch_size=4", "--seq_len=16",
            "--num_threads=1"]  # fmt: skip
    full = run_patched(tmp_path, FULL_DISK_IN_THE_VALID_SPLIT, "build_data.py", *args)
    assert full.returncode == 1, full.stderr[-3000:]
    assert (f"build_data.py: error: no space left on the device of {out}/tf/valid (the "
            "filesystem mounted at ") in full.stderr  # fmt: skip
    assert "while writing the valid split of the build: it needs about " in full.stderr
    assert "what the build wrote is removed: run it again" in full.stderr
    assert "Traceback" not in full.stderr
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == ["tf/build_data.log"]
    again = run_script("build_data.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_metadata(out / "tf" / "valid").steps > 0
