"""Loss by position within a document: where long-range memory should pay.

A model that remembers (the XL memory, a kNN store, a recurrent state) should gain most late in
long documents, where the context it can reach holds more of the document. `position_losses`
evaluates a split in order, as `par_xl.training.evaluation` does (the state carried from an empty
one, the model's training state left alone), but keeps every token's loss and the position, in
its document, of the token it predicts; `by_position` sums them into ranges of positions.

Positions: the prediction made at input position t, where the split marks a document start
(`document_starts`: the end-of-line id just before the document's first line, or token 0),
predicts the document's first token: position 0; each later input position of the same row adds
one. A split's rows are contiguous pieces of its id stream (`par_xl.data.context_batching`), so a
row begins inside a document that started in the previous row: the model never sees that
document's beginning, and its tokens' positions are not counted in any range (`cut` counts
them). They are in the split's overall loss, which is `evaluate_split`'s.

Shape letters: B rows, T positions per batch.
"""

import math
import time

import keras
import numpy as np
from keras import ops

from par_xl.data import load_dataset, read_metadata
from par_xl.models.compiled import compiled_function

# The ranges of the issue 31 measurement: [0, 512), [512, 2048), [2048, 8192), [8192, inf).
EDGES = (0, 512, 2048, 8192)


def document_positions(starts, carried):
    """Positions of a batch's predictions in their documents.

    Args:
        starts: `(B, T)` 0/1 document starts of the batch.
        carried: `(B,)` int64, each row's position before the batch: that of its last
            prediction, or -1 while the row has not reached a document start of its own.

    Returns:
        `(positions (B, T) int64, -1 where the row's document began before the row; carried
        for the next batch (B,))`.
    """
    starts = np.asarray(starts).astype(bool)
    batch, length = starts.shape
    positions = np.empty((batch, length), np.int64)
    current = np.asarray(carried, np.int64).copy()
    for t in range(length):
        current = np.where(starts[:, t], 0, np.where(current >= 0, current + 1, -1))
        positions[:, t] = current
    return positions, current


def _token_losses_step(model, inputs, labels, state, knn_memories):
    """One batch through `forward`: every token's NLL `(B, T)` (nats) and the next state."""
    ids, document_starts = model.split_inputs(inputs)
    hidden, state = model.forward(ids, state, False, document_starts, knn_memories)
    return model.output_layer.loss(hidden, labels), state


def position_losses(model, directory):
    """Every token's loss over a split and the position it predicts, in order, from an empty
    state (`inference_state`: with `knn_backend="scann"` the ScaNN memories, without XLA).

    Returns:
        A dict: `losses` `(steps, B, T)` float64 nats, `positions` `(steps, B, T)` int64 (-1:
        cut), `seconds` the evaluation's wall time after its first batch (which compiles),
        `tokens_timed` the tokens of that time.
    """
    dataset = load_dataset(directory, document_starts=True)
    state, step, losses, positions = None, None, [], []
    carried, started, tokens_timed = None, None, 0
    for inputs, labels in dataset:
        starts = inputs["document_starts"].numpy()
        if not model.document_boundaries:  # the model reads ids alone
            inputs = inputs["token_ids"]
        inputs, labels = keras.tree.map_structure(ops.convert_to_tensor, (inputs, labels))
        if state is None:
            carried = np.full(starts.shape[0], -1, np.int64)
            state, memories = model.inference_state(starts.shape[0])
            step = compiled_function(model, _token_losses_step, model.jit_compile and not memories)
        nll, state = step(inputs, labels, state, memories)
        losses.append(ops.convert_to_numpy(nll).astype("float64"))  # waits for the batch
        if started is None:
            started = time.perf_counter()
        else:
            tokens_timed += starts.size
        batch_positions, carried = document_positions(starts, carried)
        positions.append(batch_positions)
    if started is None:
        raise ValueError(f"{directory} holds no batch.")
    return {
        "losses": np.stack(losses),
        "positions": np.stack(positions),
        "seconds": time.perf_counter() - started,
        "tokens_timed": tokens_timed,
    }


def by_position(losses, positions, edges=EDGES):
    """Mean loss per range of positions `[edges[i], edges[i+1])`, the last open.

    Returns:
        A list of dicts, one per range: `range` ("0-512", ..., "8192+"), `tokens`, `loss`
        (nats, None without tokens), `bits_per_token`; then one for the `cut` tokens.
    """
    losses, positions = np.asarray(losses).ravel(), np.asarray(positions).ravel()
    rows = []
    bounds = [*edges, math.inf]
    for low, high in zip(bounds[:-1], bounds[1:]):
        chosen = (positions >= low) & (positions < high)
        name = f"{low}+" if high == math.inf else f"{low}-{high}"
        rows.append(_mean(name, losses[chosen]))
    rows.append(_mean("cut", losses[positions < 0]))
    return rows


def _mean(name, losses):
    if not len(losses):
        return {"range": name, "tokens": 0, "loss": None, "bits_per_token": None}
    loss = float(losses.mean())
    return {"range": name, "tokens": int(len(losses)), "loss": loss,
            "bits_per_token": loss / math.log(2.0)}  # fmt: skip


def split_report(model, directory, edges=EDGES):
    """A split's overall figures (those of `evaluate_split`, per token exactly) with bits per
    byte, its loss by position, and its evaluation speed."""
    metadata = read_metadata(directory)
    result = position_losses(model, directory)
    losses = result["losses"]
    total = float(losses.sum())  # nats over every label of the split's batches
    loss = total / losses.size
    report = {
        "tokens": int(losses.size),
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "bits_per_token": loss / math.log(2.0),
        "bits_per_character": total / math.log(2.0) / metadata.characters_used,
        "bits_per_byte": (total / math.log(2.0) / metadata.bytes_used
                          if metadata.bytes_used else None),
        "documents": metadata.documents,
        "by_position": by_position(losses, result["positions"], edges),
        "tokens_per_second": (result["tokens_timed"] / result["seconds"]
                              if result["tokens_timed"] else None),
    }  # fmt: skip
    return report
