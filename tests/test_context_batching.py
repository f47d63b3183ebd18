"""Context batching invariants, as properties over random streams and sizes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from par_xl.data import DataError, context_batches, num_batches


@st.composite
def streams(draw):
    """A random id stream with batch sizes that give at least one batch."""
    batch_size = draw(st.integers(1, 8))
    seq_len = draw(st.integers(1, 8))
    n = draw(st.integers(batch_size * seq_len + 1, 6 * batch_size * seq_len + 20))
    seed = draw(st.integers(0, 2**32 - 1))
    ids = np.random.default_rng(seed).integers(0, 50, size=n, dtype=np.int32)
    return ids, batch_size, seq_len


@settings(max_examples=200, deadline=None)
@given(streams())
def test_rows_are_contiguous_streams(case):
    ids, b, t = case
    batches = context_batches(ids, b, t)
    steps = num_batches(ids.size, b, t)
    assert batches.inputs.shape == batches.labels.shape == (steps, b, t)
    for i in range(b):
        row_inputs = np.concatenate(list(batches.inputs[:, i]))
        row_labels = np.concatenate(list(batches.labels[:, i]))
        np.testing.assert_array_equal(row_inputs, ids[i * steps * t : (i + 1) * steps * t])
        np.testing.assert_array_equal(row_labels, ids[i * steps * t + 1 : (i + 1) * steps * t + 1])


@settings(max_examples=100, deadline=None)
@given(streams())
def test_document_starts_are_cut_like_the_inputs(case):
    ids, b, t = case
    marks = (ids % 7 == 0).astype(np.int32)  # any per-id values
    batches = context_batches(ids, b, t, marks)
    # The same cut: marks of batch s, row i, position j belong to inputs[s, i, j].
    np.testing.assert_array_equal(batches.document_starts, batches.inputs % 7 == 0)
    assert context_batches(ids, b, t).document_starts is None
    with pytest.raises(ValueError, match="document_starts must have the shape of ids"):
        context_batches(ids, b, t, marks[1:])


@settings(max_examples=200, deadline=None)
@given(streams())
def test_labels_are_next_inputs_across_window_edges(case):
    ids, b, t = case
    inputs, labels, _, _ = context_batches(ids, b, t)
    np.testing.assert_array_equal(labels[:, :, :-1], inputs[:, :, 1:])
    np.testing.assert_array_equal(labels[:-1, :, -1], inputs[1:, :, 0])


@settings(max_examples=200, deadline=None)
@given(streams())
def test_only_the_final_remainder_is_dropped(case):
    ids, b, t = case
    inputs, _, _, dropped = context_batches(ids, b, t)
    assert 0 <= dropped < b * t
    all_rows = inputs.swapaxes(0, 1).reshape(-1)  # row 0 over all batches, then row 1, ...
    remainder = ids[all_rows.size : ids.size - 1]
    assert remainder.size == dropped
    np.testing.assert_array_equal(np.concatenate([all_rows, remainder]), ids[:-1])


def test_small_example():
    inputs, labels, _, dropped = context_batches(np.arange(14), batch_size=2, seq_len=3)
    # S = 13 // 6 = 2: row 0 is 0..5, row 1 is 6..11; pair (12, 13) dropped.
    np.testing.assert_array_equal(inputs, [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, 10, 11]]])
    np.testing.assert_array_equal(labels, [[[1, 2, 3], [7, 8, 9]], [[4, 5, 6], [10, 11, 12]]])
    assert dropped == 1


def test_exactly_one_batch_plus_one_token():
    inputs, labels, _, dropped = context_batches(np.arange(7), batch_size=2, seq_len=3)
    assert inputs.shape == (1, 2, 3) and dropped == 0
    assert labels[0, 1, -1] == 6


@pytest.mark.parametrize("n", [0, 1, 6])
def test_too_short_stream(n):
    with pytest.raises(DataError, match=rf"N={n} ids is too short .* 2 \* 3 = 6 tokens"):
        context_batches(np.arange(n), batch_size=2, seq_len=3)


def test_rejects_bad_shapes_and_sizes():
    with pytest.raises(ValueError, match="1-D"):
        context_batches(np.zeros((2, 8)), 1, 1)
    with pytest.raises(ValueError, match="positive"):
        context_batches(np.arange(10), 0, 2)
