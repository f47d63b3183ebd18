"""Evaluation of a split in order, with its own XL memory, leaving the training state alone
(on one device or on a tf.distribute strategy's replicas)."""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from par_xl.data import load_dataset, read_metadata
from par_xl.distribution.strategies import distribute_rows, model_strategy
from par_xl.models.compiled import compiled_function


def evaluate_split(model, directory):
    """`evaluate_batches` over a built split, plus the tokenizer-independent figures.

    The split's `metadata.json` counts the words and characters its labels cover, so
    `word_perplexity` = exp(total NLL / words) (WikiText's word count: comparable across
    tokenizers and with published results) and `bits_per_character` = total NLL / ln 2 /
    characters; `bits_per_byte` the same per UTF-8 byte, when the split counts its bytes
    (`bytes_used`, data built since issue 31). The split is read with its document starts
    when the model uses them.
    """
    metadata = read_metadata(directory)
    dataset = load_dataset(directory, document_starts=model.document_boundaries)
    result = evaluate_batches(model, dataset)
    total = result["loss"] * metadata.tokens_used  # nats; every batch holds B * T tokens
    figures = {
        **result,
        "word_perplexity": perplexity(total / metadata.words_used),
        "bits_per_character": total / math.log(2.0) / metadata.characters_used,
    }
    if metadata.bytes_used:
        figures["bits_per_byte"] = total / math.log(2.0) / metadata.bytes_used
    return figures


def evaluate_batches(model, dataset):
    """Loss and perplexity of a compiled `PARTransformerXL` over `(inputs, labels)` batches.

    The memory starts empty and is carried from batch to batch, as in training; the model's
    training state (its state variables, metrics, noise seeds) is left as it was, so
    evaluating mid-epoch does not disturb training. Every batch holds the same number of
    tokens, so the mean of the batch losses is the mean token loss. A model built under a
    tf.distribute strategy evaluates on its replicas, each on its rows of every batch
    (`distribute_rows`), with the same result.

    Returns:
        A dict: `loss` (mean NLL per token, nats), `perplexity` = exp(loss),
        `perplexity_batch_mean` = mean over batches of exp(batch loss) (the original PAR
        implementation's definition, never smaller), `bits_per_token`, `batches`.
    """
    strategy = model_strategy(model)
    if strategy is None:
        losses = batch_losses(model, dataset)
    else:
        losses = replicated_batch_losses(model, strategy, dataset)
    losses = np.array(losses, "float64")
    if not len(losses):
        raise ValueError("evaluate_split received an empty dataset.")
    loss = float(losses.mean())
    with np.errstate(over="ignore"):
        batch_mean = float(np.exp(losses).mean())
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "perplexity_batch_mean": batch_mean,
        "bits_per_token": loss / math.log(2.0),
        "batches": int(len(losses)),
    }


def _evaluation_step(model, inputs, labels, state, knn_memories):
    """One batch through `forward` from `state`: its mean token NLL and the next state."""
    ids, document_starts = model.split_inputs(inputs)
    hidden, state = model.forward(ids, state, False, document_starts, knn_memories)
    return ops.mean(model.output_layer.loss(hidden, labels)), state


def batch_losses(model, dataset):
    """Mean token NLL of each batch, on one device: a step compiled as the model was
    (`jit_compile`) carries its own `ModelState` from `inference_state(B)`, as tensors, from
    batch to batch; the model's variables are only read, and nothing goes to the host but
    the losses, at the end. With `knn_backend="scann"` the step searches the kNN memories on
    the host, so it runs without XLA."""
    state, losses = None, []
    for batch in dataset:
        inputs, labels = keras.tree.map_structure(ops.convert_to_tensor, tuple(batch))
        if state is None:
            state, memories = model.inference_state(model.split_inputs(inputs)[0].shape[0])
            step = compiled_function(model, _evaluation_step, model.jit_compile and not memories)
        loss, state = step(inputs, labels, state, memories)
        losses.append(loss)
    return [float(ops.convert_to_numpy(loss)) for loss in losses]


def replicated_batch_losses(model, strategy, dataset):
    """Mean token NLL of each global batch of a `tf.data.Dataset`, the model's replicas each
    running its rows (Keras's `test_on_batch` would give every replica the whole batch).

    The replicas carry the memory in the model's state variables, per replica: the training
    state is gathered before (all streams), emptied, and put back after.
    """
    batch_size, seq_len = tf.nest.flatten(dataset.element_spec)[0].shape[:2]

    @tf.function(autograph=False)
    def batch_nll(inputs, labels):
        def replica(inputs, labels):
            hidden = model(inputs, training=False)
            return tf.reduce_sum(tf.cast(model.output_layer.loss(hidden, labels), "float32"))

        return strategy.reduce("SUM", strategy.run(replica, args=(inputs, labels)), axis=None)

    batches = distribute_rows(strategy, lambda: dataset, batch_size)
    training_state = model.get_state()  # all streams, gathered from the replicas
    model.reset_state()
    losses = [float(batch_nll(x, y)) / (batch_size * seq_len) for x, y in batches]
    if training_state is not None:
        model.set_state(training_state)
    return losses


def perplexity(loss):
    """exp(loss); infinite, not an OverflowError, for a diverged loss above ~709 nats."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
