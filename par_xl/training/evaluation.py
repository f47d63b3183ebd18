"""Evaluation of a split in order, with its own XL memory, leaving the training state alone."""

import math

import numpy as np
from keras import ops

from par_xl.data import load_dataset, read_metadata


def evaluate_split(model, directory):
    """`evaluate_batches` over a built split, plus the tokenizer-independent figures.

    The split's `metadata.json` counts the words and characters its labels cover, so
    `word_perplexity` = exp(total NLL / words) (WikiText's word count: comparable across
    tokenizers and with published results) and `bits_per_character` = total NLL / ln 2 /
    characters. The split is read with its document starts when the model uses them.
    """
    metadata = read_metadata(directory)
    dataset = load_dataset(directory, document_starts=model.document_boundaries)
    result = evaluate_batches(model, dataset)
    total = result["loss"] * metadata.tokens_used  # nats; every batch holds B * T tokens
    return {
        **result,
        "word_perplexity": perplexity(total / metadata.words_used),
        "bits_per_character": total / math.log(2.0) / metadata.characters_used,
    }


def evaluate_batches(model, dataset):
    """Loss and perplexity of a compiled `PARTransformerXL` over `(inputs, labels)` batches.

    The memory starts empty and is carried from batch to batch, as in training; afterwards the
    model's memory and metric states are put back as they were, so evaluating mid-epoch does
    not disturb training. Every batch holds the same number of tokens, so the mean of the batch
    losses is the mean token loss.

    Returns:
        A dict: `loss` (mean NLL per token, nats), `perplexity` = exp(loss),
        `perplexity_batch_mean` = mean over batches of exp(batch loss) (the original PAR
        implementation's definition, never smaller), `bits_per_token`, `batches`.
    """
    saved = [ops.convert_to_numpy(v) for v in model.non_trainable_variables]
    saved_metrics = [ops.convert_to_numpy(v) for v in model.metrics_variables]
    model.reset_memory()
    losses = np.array(
        [model.test_on_batch(x, y, return_dict=True)["loss"] for x, y in dataset], "float64"
    )
    for variable, value in zip(model.non_trainable_variables, saved):
        variable.assign(value)
    for variable, value in zip(model.metrics_variables, saved_metrics):
        variable.assign(value)
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


def perplexity(loss):
    """exp(loss); infinite, not an OverflowError, for a diverged loss above ~709 nats."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
