"""Pictures of the search: the history read back from TrainingLogger's events, PNG, GIF, CLI."""

import dataclasses
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from matplotlib import pyplot as plt
from PIL import Image
from scripts import run_script
from tensorboard.compat.proto import event_pb2, summary_pb2

from par_xl.reporting.search_picture import (
    NoSearchHistory,
    SearchHistory,
    choice_figure,
    draw_probabilities_over_steps,
    draw_search_animation,
    read_search_history,
)

REPO = Path(__file__).resolve().parents[1]
LAYERS = 3
LETTERS = "AFI"  # what runs logged before --choices existed: their logs must still draw


def random_probabilities(rng, steps, letters=LETTERS):
    """`(steps, LAYERS, len(letters))` float32 rows that sum to 1."""
    return rng.dirichlet(np.ones(len(letters)), size=(steps, LAYERS)).astype("float32")


def write_logs(train, history, last_step_cut=False):
    """One event file in `train` of a `SearchHistory`, written as `TrainingLogger` writes it:
    the scalars every interval, the image and text at the epoch end; plus keras's TensorBoard
    `epoch_loss`. `last_step_cut`: the last step has only loss and tau, as when a crash cuts a
    flush short."""
    writer = tf.summary.create_file_writer(str(train))
    steps = history.steps
    for step, rows, t, loss_value in zip(steps, history.probabilities, history.tau, history.loss):
        with writer.as_default(step=step):
            tf.summary.scalar("loss", loss_value)
            tf.summary.scalar("perplexity", np.exp(loss_value))
            tf.summary.scalar("learning_rate", 1e-4)
            tf.summary.scalar("tau", t)
            tf.summary.scalar("tokens_per_second", 1000.0)
            if history.cost is not None:
                tf.summary.scalar("cost/expected", history.cost[list(steps).index(step)])
            if last_step_cut and step == steps[-1]:
                break
            for layer, row in enumerate(rows):
                for letter, value in zip(history.letters, row):
                    tf.summary.scalar(f"choice/block_{layer}/{letter}", float(value))
    with writer.as_default(step=steps[-1]):
        tf.summary.image("choice_probabilities", np.zeros((1, 72, 144, 3), "uint8"))
        tf.summary.text("architecture", "AFI")
        tf.summary.scalar("epoch_loss", 1.0, step=1)  # keras's TensorBoard: step = epoch
    writer.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run logged every 100 steps to 500, then resumed from its step-200 checkpoint and cut
    at step 500 mid-flush, its file ending in a truncated record. Returns the run directory and
    the history it must read as: steps 100, 200 of the first attempt, 300, 400 of the second."""
    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp("run")
    logs = []
    for steps in (np.arange(100, 600, 100), np.arange(300, 600, 100)):
        n = len(steps)
        logs.append(
            SearchHistory(
                steps, LETTERS, random_probabilities(rng, n),
                rng.uniform(0.1, 1, n).astype("float32"), rng.uniform(3, 6, n).astype("float32"),
            )
        )  # fmt: skip
        write_logs(run / "train", logs[-1], last_step_cut=len(logs) == 2)
    events = sorted((run / "train").glob("events.out.tfevents.*"))
    assert len(events) == 2, events
    with open(events[-1], "ab") as f:
        f.write(struct.pack("<Q", 100) + bytes(14))  # a record header and part of its data
    first, second = logs
    expected = {
        name: np.concatenate([getattr(first, name)[:2], getattr(second, name)[:2]])
        for name in ("steps", "probabilities", "tau", "loss")
    }
    return run, SearchHistory(**expected, letters=LETTERS)


def test_reads_the_history_training_logger_writes(run):
    run_dir, expected = run
    first, second = sorted((run_dir / "train").glob("events.out.tfevents.*"))
    for swap in (False, True, True):  # either file under either name: order by time, not name
        if swap:
            os.replace(first, run_dir / "swap")
            os.replace(second, first)
            os.replace(run_dir / "swap", second)
        history = read_search_history(run_dir)
        np.testing.assert_array_equal(history.steps, [100, 200, 300, 400])
        for name in ("steps", "probabilities", "tau", "loss"):
            np.testing.assert_array_equal(getattr(history, name), getattr(expected, name), name)
    assert history.probabilities.dtype == np.float32 and history.probabilities.shape == (4, 3, 3)
    assert history.letters == LETTERS
    assert history.architecture == "".join(LETTERS[i] for i in expected.probabilities[-1].argmax(1))


def test_reads_and_draws_the_letters_the_run_logged(tmp_path):
    """A search over --choices=IA logs columns A and I (registry order), and draws them."""
    rng = np.random.default_rng(3)
    logged = SearchHistory(np.array([10, 20]), "AI", random_probabilities(rng, 2, "AI"),
                           np.float32([0.9, 0.8]), np.float32([5.0, 4.0]))  # fmt: skip
    write_logs(tmp_path / "train", logged)
    history = read_search_history(tmp_path)
    assert history.letters == "AI" and history.probabilities.shape == (2, LAYERS, 2)
    np.testing.assert_array_equal(history.probabilities, logged.probabilities)
    assert set(history.architecture) <= set("AI")
    draw_probabilities_over_steps(history, tmp_path / "search.png")
    draw_search_animation(history, tmp_path / "search.gif", frames=2)


def test_reads_and_draws_the_expected_cost_when_logged(tmp_path):
    """A run with a search cost logs `cost/expected`: read back, and drawn in a panel of its
    own (a taller picture); a run from before it reads as cost None."""
    rng = np.random.default_rng(4)
    cost = np.float32([0.67, 0.6, 0.55])
    logged = SearchHistory(np.array([10, 20, 30]), LETTERS, random_probabilities(rng, 3),
                           np.float32([0.9, 0.8, 0.7]), np.float32([5, 4, 3.5]), cost)  # fmt: skip
    write_logs(tmp_path / "with" / "train", logged)
    history = read_search_history(tmp_path / "with")
    np.testing.assert_array_equal(history.cost, cost)
    without = dataclasses.replace(logged, cost=None)
    write_logs(tmp_path / "without" / "train", without)
    assert read_search_history(tmp_path / "without").cost is None
    heights = []
    for name, drawn in (("with", history), ("without", without)):
        draw_probabilities_over_steps(drawn, tmp_path / f"{name}.png")
        with Image.open(tmp_path / f"{name}.png") as png:
            heights.append(png.height)
    assert heights[0] > heights[1] + 150  # the cost panel


def test_reads_tf1_simple_values(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    tags = ["tau"] + [f"choice/block_0/{c}" for c in LETTERS]
    values = {10: [0.9, 0.2, 0.3, 0.5], 20: [0.8, 0.1, 0.6, 0.3]}
    with tf.io.TFRecordWriter(str(train / "events.out.tfevents.1.host")) as writer:
        for step, row in values.items():
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in zip(tags, row)]
            )
            writer.write(
                event_pb2.Event(wall_time=step, step=step, summary=summary).SerializeToString()
            )
    history = read_search_history(tmp_path)
    np.testing.assert_array_equal(history.steps, [10, 20])
    np.testing.assert_array_equal(history.tau, np.float32([0.9, 0.8]))
    np.testing.assert_array_equal(
        history.probabilities[:, 0], np.float32([r[1:] for r in values.values()])
    )
    assert history.loss is None and history.architecture == "F"


def test_no_history_is_a_clear_error(tmp_path):
    with pytest.raises(NoSearchHistory, match=f"{tmp_path / 'missing' / 'train'}.*choice/block_"):
        read_search_history(tmp_path / "missing")
    writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    with writer.as_default(step=1):
        tf.summary.scalar("loss", 5.0)  # logs, but no choice probabilities
    writer.close()
    with pytest.raises(NoSearchHistory, match="no architecture search history"):
        read_search_history(tmp_path)


def test_choice_figure_is_a_readable_image_and_leaks_no_figure():
    probabilities = random_probabilities(np.random.default_rng(1), 1)[0]
    figures = plt.get_fignums()
    image = choice_figure(probabilities, LETTERS, step=1200, tau=0.5)
    assert image.dtype == np.uint8 and image.ndim == 4 and image.shape[0] == 1
    assert image.shape[1] > 200 and image.shape[2] > 400 and image.shape[3] in (3, 4)
    assert len(np.unique(image.reshape(-1, image.shape[3]), axis=0)) > 50  # colours, text
    # The step is printed, and the cells follow the probabilities.
    assert not np.array_equal(image, choice_figure(probabilities, LETTERS, step=1300, tau=0.5))
    assert not np.array_equal(
        image, choice_figure(probabilities[::-1], LETTERS, step=1200, tau=0.5)
    )
    # As many columns as letters: two letters make a narrower picture.
    two = choice_figure(probabilities[:, :2], "AF", step=1200, tau=0.5)
    assert two.shape[1] == image.shape[1] and two.shape[2] < image.shape[2]
    with pytest.raises(ValueError, match=r"probabilities must be \(blocks, 2\) for the letters"):
        choice_figure(probabilities, "AF", step=1200, tau=0.5)
    assert plt.get_fignums() == figures


def history_of(steps):
    rng = np.random.default_rng(2)
    return SearchHistory(
        steps=np.arange(1, steps + 1) * 100,
        letters=LETTERS,
        probabilities=random_probabilities(rng, steps),
        tau=np.geomspace(1.0, 0.1, steps).astype("float32"),
        loss=rng.uniform(3, 6, steps).astype("float32"),
    )


def test_png(tmp_path):
    draw_probabilities_over_steps(history_of(50), tmp_path / "search.png")
    assert [p.name for p in tmp_path.iterdir()] == ["search.png"]  # no temporary file left
    with Image.open(tmp_path / "search.png") as png:
        assert png.format == "PNG" and png.width > 1000 and png.height > 400


@pytest.mark.parametrize("steps, frames", [(50, 8), (3, 10)])
def test_gif(tmp_path, steps, frames):
    draw_search_animation(history_of(steps), tmp_path / "search.gif", frames=frames)
    assert [p.name for p in tmp_path.iterdir()] == ["search.gif"]
    with Image.open(tmp_path / "search.gif") as gif:
        assert gif.format == "GIF" and gif.is_animated
        assert gif.n_frames == min(steps, frames) and gif.width > 400 and gif.height > 200
    # Under 20 kB a frame, so the default 100 frames stay under 2 MB.
    assert (tmp_path / "search.gif").stat().st_size < 20_000 * gif.n_frames


def plot_search(*flags):
    return run_script("plot_search.py", *flags, timeout=120)


def test_command_draws_a_run(run, tmp_path):
    result = plot_search(f"--run_dir={run[0]}", f"--output_dir={tmp_path / 'out'}", "--frames=3")
    assert result.returncode == 0, result.stderr
    paths = [tmp_path / "out" / "search.png", tmp_path / "out" / "search.gif"]
    assert result.stdout.split() == [str(p) for p in paths]
    with Image.open(paths[1]) as gif:
        assert gif.n_frames == 3


def test_command_missing_run_is_an_error_without_traceback(tmp_path):
    result = plot_search(f"--run_dir={tmp_path / 'missing'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("plot_search.py: error: ")
    assert str(tmp_path / "missing") in result.stderr and "Traceback" not in result.stderr
