"""`document_boundaries=True`: nothing before a document's start reaches it, memory included."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from par_xl.models import PARTransformerXL

VOCAB = 40
CONFIG = dict(
    vocab_size=VOCAB, d_model=16, num_heads=2, d_ffn=24, num_layers=3, mem_len=8,
    cutoffs=[10, 25], proj_factor=2, dropout_rate=0.0,
)  # fmt: skip
T = 6


def make_model(architecture=None, document_boundaries=True):
    keras.utils.set_random_seed(3)
    model = PARTransformerXL(
        **CONFIG, architecture=architecture, document_boundaries=document_boundaries
    )
    model.build((2, T))
    for i, block in enumerate(model.blocks):  # every branch weighs in
        if block.choice is None:
            block.gumbel.logits.assign(np.array([0.5, 0.2, -0.3], "float32") * (i + 1))
    return model


def segments(seed):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(3, 2, T)).astype("int32")


# Row 0 starts a document at position 2 of the second segment; row 1 at position 4 of the first.
STARTS = np.zeros((3, 2, T), "int32")
STARTS[1, 0, 2] = 1
STARTS[0, 1, 4] = 1


def log_probs_of(model, tokens):
    """Log-probabilities `(segments, B, T, V)` of consecutive segments through the memory."""
    model.reset_state()
    out = []
    for ids, starts in zip(tokens, STARTS):
        hidden = model({"token_ids": ids, "document_starts": starts})
        out.append(ops.convert_to_numpy(model.log_probs(hidden)))
    return np.stack(out)


@pytest.mark.parametrize("architecture", [None, "AFA"])
def test_nothing_before_a_document_start_changes_its_log_probs(architecture):
    model = make_model(architecture)
    tokens = segments(0)
    changed = tokens.copy()
    changed[0, 0] = (changed[0, 0] + 7) % VOCAB  # row 0: all of segment 0 ...
    changed[1, 0, :2] = (changed[1, 0, :2] + 7) % VOCAB  # ... and segment 1 before its start
    changed[0, 1, :4] = (changed[0, 1, :4] + 7) % VOCAB  # row 1: segment 0 before its start
    before, after = log_probs_of(model, tokens), log_probs_of(model, changed)
    # Row 0 from its start (segment 1, position 2) on; row 1 from segment 0, position 4 on.
    np.testing.assert_allclose(after[1, 0, 2:], before[1, 0, 2:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after[2, 0], before[2, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after[0, 1, 4:], before[0, 1, 4:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after[1:, 1], before[1:, 1], rtol=1e-5, atol=1e-5)
    # The positions before the starts did see the change.
    assert np.abs(after[1, 0, :2] - before[1, 0, :2]).max() > 1e-3
    assert np.abs(after[0, 1, :4] - before[0, 1, :4]).max() > 1e-3


def test_a_document_equals_itself_alone():
    """From its start on, a document's log-probs are those of its tokens with no context."""
    model = make_model()
    tokens = segments(1)
    together = log_probs_of(model, tokens)
    document = np.concatenate([tokens[1, 0, 2:], tokens[2, 0]])  # row 0 from its start
    hidden, _ = model.forward(document[None], model.initial_state(1, 16))
    alone = ops.convert_to_numpy(model.log_probs(hidden))[0]
    np.testing.assert_allclose(alone[: T - 2], together[1, 0, 2:], rtol=1e-4, atol=1e-4)
    # Through the memory: segment 2 sees only the 4 positions since the start (mem_len 8).
    np.testing.assert_allclose(alone[T - 2 :], together[2, 0], rtol=1e-4, atol=1e-4)


def test_memory_is_cut_at_the_last_start():
    model = make_model()
    tokens = segments(2)
    log_probs_of(model, tokens[:2])  # after segment 1: row 0 started at position 2
    assert ops.convert_to_numpy(model.valid_length).tolist() == [T - 2, 8]


def test_without_the_option_the_starts_are_ignored():
    model = make_model(document_boundaries=False)
    tokens = segments(0)
    changed = tokens.copy()
    changed[0, 0] = (changed[0, 0] + 7) % VOCAB
    before, after = log_probs_of(model, tokens), log_probs_of(model, changed)
    assert np.abs(after[1, 0, 2:] - before[1, 0, 2:]).max() > 1e-4  # context crosses the start


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_on_document_start_batches(jit_compile):
    model = make_model()
    model.compile(optimizer="adam", jit_compile=jit_compile)
    tokens = segments(3)
    inputs = {"token_ids": tokens, "document_starts": STARTS}
    dataset = tf.data.Dataset.from_tensor_slices((inputs, np.roll(tokens, -1, axis=-1)))
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    # The last batch has no start: its memory count grew from the cut in batch 1 (4 + 6 -> 8).
    assert ops.convert_to_numpy(model.valid_length).tolist() == [8, 8]


def test_config_round_trip_keeps_the_option():
    model = make_model()
    clone = PARTransformerXL.from_config(model.get_config())
    assert clone.document_boundaries
