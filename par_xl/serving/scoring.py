"""Scoring text: the log-probability of each of its tokens, read as evaluation reads a split.

A text is scored as the data pipeline would hold it: its lines encoded, each followed by the
end-of-line id (`par_xl.data.encode_lines`), the stream preceded by one end-of-line id, so
that the first token is predicted as the start of a line. The stream is read in segments of
T tokens (the run's `seq_len`, what evaluation's batches hold), the XL memory and kNN stores
carried from segment to segment, the model's state variables untouched: each token's
log-probability is the one `evaluate_split` averages for the same stream cut into batches of
one row (`par_xl.training.evaluation`). With `document_boundaries`, the text is one document
that starts at the first token (its mark on the end-of-line id before it, as
`par_xl.data.documents` puts it).

A batch of texts of different lengths is right-padded to whole segments: the padding comes
after each row's tokens, which never see it (attention is causal), and its scores are dropped.
`score_step` is shared with the exported SavedModel (`par_xl.serving.saved_model`), which
traces it into its `score` signature.
"""

import numpy as np
from keras import ops

from par_xl.models.compiled import compiled_function


def score_step(model, inputs, labels, document_starts, state, knn_memories):
    """One segment through `forward` from `state`: `((B, T) float32 log p(labels), state)`."""
    hidden, state = model.forward(inputs, state, False, document_starts, knn_memories)
    return -model.output_layer.loss(hidden, labels), state


def score_ids(model, ids, segment_length, start_id, jit_compile=None):
    """The log-probability of every id of B id streams (see the module docstring).

    Args:
        model: a built `PARTransformerXL`.
        ids: B non-empty sequences of ids, e.g. `encode_lines(...).ids` of each text.
        segment_length: T, positions per `forward` call (the run's `seq_len`).
        start_id: the id read before each stream's first (the end-of-line id).
        jit_compile: compile the segment's step with XLA (`None`: unless the model searches
            its kNN memory with ScaNN, on the host).

    Returns:
        B float32 arrays, the log-probabilities of each stream's ids.
    """
    lengths = np.array([len(row) for row in ids])
    if not len(lengths) or not lengths.min():
        raise ValueError(f"ids must be non-empty sequences of ids, received {ids!r:.200}.")
    if segment_length < 1:
        raise ValueError(f"segment_length must be positive, received {segment_length}.")
    width = -(-lengths.max() // segment_length) * segment_length  # whole segments
    labels = np.zeros((len(ids), width), "int32")
    for row, stream in zip(labels, ids):
        row[: len(stream)] = stream
    inputs = np.concatenate([np.full((len(ids), 1), start_id, "int32"), labels[:, :-1]], axis=1)
    starts = None
    if model.document_boundaries:
        starts = np.zeros_like(inputs)
        starts[:, 0] = 1

    state, memories = model.inference_state(len(ids))
    if jit_compile is None:
        jit_compile = not memories  # ScaNN searches on the host, outside XLA
    step = compiled_function(model, score_step, jit_compile)
    scores = []
    for i in range(0, width, segment_length):
        segment = slice(i, i + segment_length)
        part = None if starts is None else starts[:, segment]
        log_probs, state = step(inputs[:, segment], labels[:, segment], part, state, memories)
        scores.append(ops.convert_to_numpy(log_probs))
    scores = np.concatenate(scores, axis=1)
    return [row[:length] for row, length in zip(scores, lengths)]
