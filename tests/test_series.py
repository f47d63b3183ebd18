"""A resumable series of training runs (benchmarks/series.py): which flags each run gets, and
running a real series of two tiny runs, the second fine-tuning what the first derived."""

import json
import shutil

import pytest

from benchmarks.series import (
    Run,
    archive_run,
    finished_runs,
    restore_run,
    run_flags,
    run_series,
)


def test_a_run_resumes_once_it_has_a_checkpoint_and_fine_tunes_what_its_search_derived(tmp_path):
    search, fine_tune = Run("search", ("--epochs=4",)), Run("ft", ("--epochs=2",), "search")
    assert run_flags(search, tmp_path) == [f"--log_dir={tmp_path}", "--model_name=search",
                                           "--epochs=4"]  # fmt: skip
    assert run_flags(fine_tune, tmp_path) is None  # its search has no results yet
    (tmp_path / "search/checkpoints").mkdir(parents=True)
    (tmp_path / "search/checkpoints/ckpt-00000010.weights.h5").write_bytes(b"")
    assert run_flags(search, tmp_path)[-1] == "--resume"
    (tmp_path / "search/results.json").write_text(json.dumps({"architecture": "AFI"}))
    assert run_flags(fine_tune, tmp_path)[-2:] == [
        "--architecture=AFI", f"--init_from={tmp_path}/search/checkpoints"]  # fmt: skip
    scratch = Run("scratch", ("--epochs=2",), "search", from_scratch=True)
    assert run_flags(scratch, tmp_path)[-1] == "--architecture=AFI"  # no --init_from
    # A cost search's: the most probable architecture within its target, where it has one.
    for within, expected in (("FFI", "FFI"), (None, "AFI")):
        (tmp_path / "search/results.json").write_text(json.dumps(
            {"architecture": "AFI", "architecture_within_target": within}))  # fmt: skip
        assert run_flags(scratch, tmp_path)[-1] == f"--architecture={expected}"


def test_the_archive_keeps_a_runs_records_but_not_its_weights(tmp_path):
    run = tmp_path / "runs/search"
    records = {"results.json": "{}", "checkpoints/config.json": "{}",
               "train/events.out.tfevents.1.host": "t", "validation/events.out.tfevents.2.h": "v"}
    for name, text in {**records, "checkpoints/ckpt-00000010.weights.h5": "w",
                       "search.log": "log"}.items():  # fmt: skip
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    archive = tmp_path / "archive"
    archive_run(run, archive)
    kept = {str(p.relative_to(archive / "search")) for p in archive.rglob("*") if p.is_file()}
    assert kept == set(records)
    assert [p.name for p in archive.iterdir()] == ["search"]  # no temporary left
    (run / "results.json").write_text('{"step": 2}')
    archive_run(run, archive)  # again: replaced
    assert (archive / "search/results.json").read_text() == '{"step": 2}'
    assert finished_runs(tmp_path / "elsewhere", archive) == [archive / "search"]
    assert finished_runs(tmp_path / "runs", archive) == [run]  # the run directory first
    assert not restore_run("other", archive, tmp_path / "new")
    assert restore_run("search", archive, tmp_path / "new")
    assert (tmp_path / "new/search/checkpoints/config.json").read_text() == "{}"


@pytest.mark.slow
def test_a_series_runs_what_is_missing_and_stops_at_a_failure(tiny_data, tmp_path):
    common = [f"--train_directory={tiny_data}/tf/train", f"--valid_directory={tiny_data}/tf/valid",
              f"--sp_model_prefix={tiny_data}/sp", "--preset=tiny", "--cutoffs=20",
              "--max_steps=3", "--warmup_steps=1", "--arch_start_step=1"]  # fmt: skip
    runs = [Run("search", ("--search=single_path",)), Run("ft", (), after="search"),
            Run("bad", ("--max_lr=-1",)), Run("never", ())]  # fmt: skip
    assert run_series(runs, tmp_path, common) == "bad"
    derived = json.loads((tmp_path / "search/results.json").read_text())["architecture"]
    config = json.loads((tmp_path / "ft/checkpoints/config.json").read_text())
    assert config["model"]["architecture"] == derived
    assert config["train"]["init_from"] == f"{tmp_path}/search/checkpoints"
    assert not (tmp_path / "never").exists()
    log = (tmp_path / "series.log").read_text()
    assert "end search exit 0" in log and "end bad exit 2" in log
    assert run_series(runs[:2], tmp_path, common) is None  # done: nothing runs again
    assert log == (tmp_path / "series.log").read_text()
    # With an archive, on a new machine: the archived search is restored, not trained again.
    archive, fresh = tmp_path / "archive", tmp_path / "fresh"
    archive_run(tmp_path / "search", archive)
    assert run_series(runs[:1], fresh, common, archive) is None
    assert "restored search" in (fresh / "series.log").read_text()
    assert not (fresh / "search.out").exists()
    # A run that finished but was stopped before its archive: archived when the series passes.
    shutil.rmtree(archive / "search")
    assert run_series(runs[:1], tmp_path, common, archive) is None
    assert (archive / "search/results.json").is_file()
    assert "archived search" in (tmp_path / "series.log").read_text()
