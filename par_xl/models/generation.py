"""Sampling text from a PARTransformerXL, one token per step, reusing the XL memory."""

import numpy as np
from keras import ops


def filter_log_probs(log_probs, temperature=1.0, top_k=0, top_p=1.0):
    """Next-token distribution after temperature, top-k and nucleus (top-p) filtering.

    Args:
        log_probs: `(V,)` normalized log-probabilities.
        temperature: > 0; below 1 sharpens, above 1 flattens.
        top_k: keep the k most likely tokens (0: all).
        top_p: keep the smallest set of most likely tokens whose mass reaches top_p (1: all).

    Returns:
        `(V,)` probabilities summing to one.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, received {temperature}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], received {top_p}.")
    logits = np.asarray(log_probs, "float64") / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = np.ones(len(probs), bool)
    if top_k:
        keep[order[top_k:]] = False
    if top_p < 1:
        cumulative = np.cumsum(probs[order])
        beyond = order[np.searchsorted(cumulative, top_p) + 1 :]  # tokens after the nucleus
        keep[beyond] = False
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum()


def generate(
    model, prompt_ids, num_tokens, temperature=1.0, top_k=0, top_p=1.0, seed=0, mem_len=None
):
    """Samples `num_tokens` ids after `prompt_ids` (a non-empty list of ids).

    The prompt is read in one forward pass; then each new token is one forward step of one
    position over the memory, which keeps the last `mem_len` positions (default: the model's
    training memory length; longer works too, as in Transformer-XL evaluation). A model with
    no memory blocks or `mem_len = 0` recomputes its whole context each step instead.

    Returns:
        `(ids, log_probs)`: the sampled ids and, for each, the `(V,)` distribution it was
        drawn from (before filtering).
    """
    if not len(prompt_ids):
        raise ValueError("generate needs a prompt of at least one token.")
    rng = np.random.default_rng(seed)
    memory, length = model.initial_memory(1, mem_len)
    context = np.asarray(prompt_ids, "int32")[None]  # (1, P)
    sampled, distributions = [], []
    for _ in range(num_tokens):
        if memory is None:
            hidden = model.forward(context, training=False)[0]
        else:
            hidden, memory, length = model.forward(context, memory, length, training=False)
        log_probs = ops.convert_to_numpy(model.log_probs(hidden[:, -1:]))[0, 0]  # (V,)
        probs = filter_log_probs(log_probs, temperature, top_k, top_p)
        token = int(rng.choice(len(probs), p=probs))
        sampled.append(token)
        distributions.append(log_probs)
        step = np.array([[token]], "int32")
        context = np.concatenate([context, step], axis=1) if memory is None else step
    return sampled, distributions
