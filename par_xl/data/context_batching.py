"""Context batching: one split's token stream -> Transformer-XL batches (pure numpy).

Transformer-XL carries a memory from one segment to the next, so row i of batch t + 1 must continue
row i of batch t. The stream is cut into B contiguous streams, one per batch row, and each stream
into S windows of T tokens; batch t holds window t of every row.

Shapes: B batch size, T sequence length (window), N ids in the stream, S batches.
"""

from typing import NamedTuple

import numpy as np

from par_xl.data.errors import DataError


class ContextBatches(NamedTuple):
    """A split's batches: `inputs[t]` and `labels[t]` are batch t, both of shape (B, T).

    inputs, labels: (S, B, T) views of the stream (no copy). document_starts: (S, B, T) views of
    the stream's document-start marks, aligned with `inputs`, or None. tokens_dropped: the
    (input, label) pairs left over at the end of the stream, fewer than B * T.
    """

    inputs: np.ndarray
    labels: np.ndarray
    document_starts: np.ndarray | None
    tokens_dropped: int


def num_batches(num_ids: int, batch_size: int, seq_len: int) -> int:
    """S = (N - 1) // (B * T): the batches a stream of N ids gives."""
    return max(num_ids - 1, 0) // (batch_size * seq_len)


def context_batches(
    ids: np.ndarray, batch_size: int, seq_len: int, document_starts: np.ndarray | None = None
) -> ContextBatches:
    """Cuts a stream of N ids into S = (N - 1) // (B * T) batches of (input, next-token label).

    The N - 1 pairs (ids[j], ids[j + 1]) are used in stream order. Row i holds the inputs
    ids[i*S*T : (i+1)*S*T] and the labels ids[i*S*T + 1 : (i+1)*S*T + 1]; batch t holds window t
    of every row. Labels cross window edges: the label of a window's last position is the first
    input of the row's next window, so no pair is lost between windows. Only the last
    (N - 1) - S*B*T < B*T pairs are dropped; nothing wraps around or repeats.

    Args:
      ids: (N,) integer token ids.
      batch_size: B, rows per batch.
      seq_len: T, tokens per row and batch.
      document_starts: optional (N,) marks per id (see `documents.py`), cut like the inputs.

    Returns:
      ContextBatches with inputs and labels of shape (S, B, T), views of `ids`.

    Raises:
      DataError: if the stream is shorter than one batch plus one token (S == 0).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D stream, got shape {ids.shape}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    steps = num_batches(ids.size, batch_size, seq_len)
    if steps == 0:
        raise DataError(
            f"a stream of N={ids.size} ids is too short for one batch of "
            f"batch_size * seq_len = {batch_size} * {seq_len} = {batch_size * seq_len} tokens "
            "(it needs at least that many plus one)"
        )
    if document_starts is not None and np.shape(document_starts) != ids.shape:
        raise ValueError(
            f"document_starts must have the shape of ids {ids.shape}, "
            f"got {np.shape(document_starts)}"
        )
    used = steps * batch_size * seq_len

    def batched(stream):  # (B*S*T,) -> (B, S, T): row i is stream i cut into S windows
        return stream.reshape(batch_size, steps, seq_len).swapaxes(0, 1)  # -> (S, B, T)

    return ContextBatches(
        inputs=batched(ids[:used]),
        labels=batched(ids[1 : used + 1]),
        document_starts=None if document_starts is None else batched(document_starts[:used]),
        tokens_dropped=ids.size - 1 - used,
    )
