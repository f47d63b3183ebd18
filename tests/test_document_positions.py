"""Evaluation by position in the document (issue 31, `par_xl.training.document_positions`):
the positions against ones written out by hand, the ranges against a loop over the tokens, and
a split's report against `evaluate_split` (the same losses, the state carried the same way)."""

import math

import keras
import numpy as np
import pytest
from conftest import write_tiny_run

from par_xl.data import load_dataset, read_metadata
from par_xl.models import PARTransformerXL
from par_xl.training.document_positions import (
    by_position,
    document_positions,
    position_losses,
    split_report,
)
from par_xl.training.evaluation import evaluate_split


def test_positions_count_from_each_document_start_and_carry_over_batches():
    # Row 0 starts a document at its first position and another at t = 3; row 1 begins inside
    # a document (cut: -1) until its start at t = 2; row 2 never sees a start.
    first = np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    second = np.array([[0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    positions, carried = document_positions(first, np.full(3, -1))
    np.testing.assert_array_equal(
        positions, [[0, 1, 2, 0, 1], [-1, -1, 0, 1, 2], [-1, -1, -1, -1, -1]]
    )
    np.testing.assert_array_equal(carried, [1, 2, -1])
    positions, carried = document_positions(second, carried)
    np.testing.assert_array_equal(positions, [[2, 3, 0, 1, 2], [3, 4, 5, 6, 7], [-1] * 4 + [0]])
    np.testing.assert_array_equal(carried, [2, 7, 0])


def test_ranges_average_the_tokens_they_hold():
    rng = np.random.default_rng(0)
    losses = rng.exponential(size=(6, 3, 40))
    positions = rng.integers(-1, 3000, size=losses.shape)
    positions[0, 0, :4] = [0, 99, 100, 2048]  # the edges belong to the range they start
    rows = by_position(losses, positions, edges=(0, 100, 2048))
    assert [row["range"] for row in rows] == ["0-100", "100-2048", "2048+", "cut"]
    sums = {name: [0.0, 0] for name in ("0-100", "100-2048", "2048+", "cut")}
    for loss, position in zip(losses.ravel(), positions.ravel()):
        name = ("cut" if position < 0 else "0-100" if position < 100
                else "100-2048" if position < 2048 else "2048+")  # fmt: skip
        sums[name][0] += loss
        sums[name][1] += 1
    for row in rows:
        total, count = sums[row["range"]]
        assert row["tokens"] == count
        np.testing.assert_allclose(row["loss"], total / count, rtol=1e-12)
        np.testing.assert_allclose(row["bits_per_token"], total / count / math.log(2), rtol=1e-12)
    empty = by_position(losses, positions, edges=(0, 10_000))
    assert empty[1] == {"range": "10000+", "tokens": 0, "loss": None, "bits_per_token": None}


@pytest.fixture(scope="module")
def model_and_split(tiny_data):
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=400, d_model=16, num_heads=2, d_ffn=32, num_layers=2,
                             mem_len=8, cutoffs=[], architecture="AF",
                             document_boundaries=True)  # fmt: skip
    model.build((4, 16))
    model.compile(jit_compile=False)
    return model, tiny_data / "tf" / "valid"


def test_a_split_report_has_the_losses_of_evaluate_split(model_and_split):
    model, split = model_and_split
    metadata = read_metadata(split)
    report = split_report(model, split)
    expected = evaluate_split(model, split)  # the state carried from empty, batch by batch
    assert report["tokens"] == metadata.tokens_used
    np.testing.assert_allclose(report["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(report["bits_per_byte"], expected["bits_per_byte"], rtol=1e-5)
    total_bits = report["loss"] * report["tokens"] / math.log(2)
    np.testing.assert_allclose(report["bits_per_byte"], total_bits / metadata.bytes_used)
    # Every token is in one range or cut; the ranges' means weigh back to the overall loss.
    rows = report["by_position"]
    assert sum(row["tokens"] for row in rows) == report["tokens"]
    weighted = sum(row["loss"] * row["tokens"] for row in rows if row["tokens"])
    np.testing.assert_allclose(weighted / report["tokens"], report["loss"], rtol=1e-9)


def test_each_start_predicts_position_zero_and_losses_are_the_batches(model_and_split):
    model, split = model_and_split
    result = position_losses(model, split)
    batches = list(load_dataset(split, document_starts=True))
    starts = np.stack([inputs["document_starts"].numpy() for inputs, _ in batches])
    assert result["losses"].shape == result["positions"].shape == starts.shape
    assert (result["positions"][starts == 1] == 0).all() and starts.sum() > 4
    # Each row counts on from its last start, over batch edges too (steps, B, T -> B, steps*T).
    positions = result["positions"].transpose(1, 0, 2).reshape(starts.shape[1], -1)
    flat_starts = starts.transpose(1, 0, 2).reshape(starts.shape[1], -1)
    for row, row_starts in zip(positions, flat_starts):
        first = int(np.argmax(row_starts))
        assert (row[:first] == -1).all()
        later = row[first + 1:]  # fmt: skip
        np.testing.assert_array_equal(later, np.where(row_starts[first + 1:] == 1, 0,
                                                      row[first:-1] + 1))  # fmt: skip
    # The per-batch means are what `evaluate` gives batch by batch from an empty state.
    state = model.initial_state(starts.shape[1])
    for (inputs, labels), losses in zip(batches[:3], result["losses"]):
        ids, document_starts = model.split_inputs(inputs)
        hidden, state = model.forward(ids, state, False, document_starts)
        expected = keras.ops.convert_to_numpy(model.output_layer.loss(hidden, labels))
        np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)


def test_a_run_loads_with_another_store_size(tiny_data, tmp_path):
    """The stores are state, not weights: a run evaluates with stores of any size. Documents
    shorter than both stores give the same losses; a store smaller than them, other ones."""
    from par_xl.configs import ConfigError
    from par_xl.training.runs import load_run

    split = tiny_data / "tf" / "valid"
    runs = {"fixed": write_tiny_run(tiny_data, tmp_path / "fixed", "AMF"),
            "search": write_tiny_run(tiny_data, tmp_path / "search", None)}  # fmt: skip
    trained = load_run(runs["fixed"])[0]
    larger, config = load_run(runs["fixed"], knn_memory_size=4096)[:2]
    smaller = load_run(runs["fixed"], knn_memory_size=8)[0]
    assert config.knn_memory_size == 4096 and larger.knn_memory_size == 4096
    for a, b in zip(trained.trainable_weights, larger.trainable_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    result = position_losses(trained, split)
    expected = result["losses"]
    assert 8 < result["positions"].max() < 1024  # documents between the stores' sizes
    # The exact search over a larger store sums in another order: float32 noise, ~1e-5.
    np.testing.assert_allclose(position_losses(larger, split)["losses"], expected, rtol=1e-4)
    assert not np.allclose(position_losses(smaller, split)["losses"], expected, rtol=1e-3)
    with pytest.raises(ConfigError, match="a search's kNN store size is its own"):
        load_run(runs["search"], knn_memory_size=4096)
