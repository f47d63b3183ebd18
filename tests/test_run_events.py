"""A run's TensorBoard scalars read back: training time from the logged rates, and the main
job's table beside the original's (`benchmarks/main_job.py`)."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.main_job import ORIGINAL, markdown, rows
from par_xl.configs import ModelConfig, TrainConfig, to_json
from par_xl.reporting.run_events import read_scalars, training_seconds

TOKENS_PER_STEP = 10


def log(directory, scalars):
    """One event file in `directory`: `{step: {tag: value}}`, in step order."""
    writer = tf.summary.create_file_writer(str(directory))
    for step, values in scalars.items():
        with writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)
    writer.close()


def test_training_seconds_sum_the_logged_intervals_and_follow_a_resume(tmp_path):
    train = tmp_path / "train"
    rate = "tokens_per_second"
    log(train, {100: {rate: 1000.0}, 200: {rate: 2000.0}, 300: {rate: 4000.0}})
    # 100 steps x 10 tokens at each rate: 1 s + 0.5 s + 0.25 s.
    assert training_seconds(tmp_path, TOKENS_PER_STEP) == pytest.approx(1.75)
    assert training_seconds(tmp_path, TOKENS_PER_STEP, until=200) == pytest.approx(1.5)
    # Resumed from step 200: the new attempt's step 300 replaces the old one.
    log(train, {300: {rate: 500.0}, 400: {rate: 1000.0}})
    assert read_scalars(train)[rate] == {100: 1000.0, 200: 2000.0, 300: 500.0, 400: 1000.0}
    assert training_seconds(tmp_path, TOKENS_PER_STEP) == pytest.approx(1.5 + 2.0 + 1.0)
    assert training_seconds(tmp_path / "missing", TOKENS_PER_STEP) == 0.0


def test_main_job_rows_stand_beside_the_original_table(tmp_path):
    """Evaluations at 2,700 and at the final step (2 epochs x 3,000 = 6,000): the first and
    the last rows are filled, with the logged figures; the others are not reached."""
    config = json.loads(to_json(ModelConfig(vocab_size=4000), TrainConfig("t", "v", epochs=2)))
    config["data"] = {"train": {"batch_size": 2, "seq_len": 5, "steps": 3000, "sp_model": "sp",
                                "sp_model_sha256": "0" * 64}}  # fmt: skip
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/config.json").write_text(json.dumps(config))
    log(tmp_path / "train", {s: {"loss": s / 1000.0, "tokens_per_second": 100.0}
                             for s in range(100, 6001, 100)})  # fmt: skip
    valid = {"perplexity": 90.0, "perplexity_batch_mean": 91.5, "word_perplexity": 300.0}
    log(tmp_path / "validation", {2700: valid, 6000: {k: v / 2 for k, v in valid.items()}})
    table = rows(tmp_path)
    assert [row["original"]["step"] for row in table] == [step for step, *_ in ORIGINAL]
    first, last = table[0]["par_xl"], table[-1]["par_xl"]
    assert first == {
        "step": 2700, "valid_perplexity_batch_mean": 91.5, "valid_perplexity": 90.0,
        "valid_word_perplexity": 300.0, "train_perplexity": round(math.exp(2.7), 2),
        "training_minutes": round(2700 * 10 / 100 / 60, 1),
    }  # fmt: skip
    assert last["step"] == 6000 and last["valid_perplexity_batch_mean"] == 45.75
    assert all("par_xl" not in row for row in table[1:-1])
    text = markdown(table)
    # The original's 114.4 per token of its tokenizer is 114.4 ** (292,265 / 217,646) per word.
    assert table[0]["original"]["valid_word_perplexity"] == 581.0
    assert ("| 2,700 / 2,700 | 163.9 | 114.4 | **581.0** | 1m 58s | 14.88 | 91.50 | 90.00 | "
            "**300.00** |") in text  # fmt: skip
    assert "| 8,500 / not reached |" in text
    np.testing.assert_allclose(first["train_perplexity"], 14.88)
