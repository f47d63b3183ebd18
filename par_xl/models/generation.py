"""Sampling text from a PARTransformerXL: the prompt read in chunks, new tokens in one loop.

How a sample is made
--------------------
`read_prompt` reads the prompt, but for its last token, through `forward` in chunks of
`chunk_length` positions, filling a `ModelState` whose XL memory has a fixed shape `(B, M, D)`
per attention-capable block, as its kNN stores `(B, N, C, H)` per block with memorizing
attention and its LEAP sums per block with LEAP attention have (the loop carries them; a ScaNN
memory, `knn_backend="scann"`, goes beside the state, filled in place on the host, without
XLA). Then `sample` runs one compiled loop
(`keras.ops.fori_loop` inside `tf.function` or `jax.jit`), a step per new token: one position
through `forward` over the state, the full distribution (`log_probs`), temperature / top-k /
nucleus filtering, an inverse-CDF draw, and the sampled id fed back. The memory keeps its
shape and is masked by its valid length, so a step costs the same whatever the prompt's
length; Python runs once per sample, not per token. The model's own state variables are never
touched.

Each prompt position sees between M and M + chunk - 1 earlier positions (Transformer-XL
evaluation with segments of `chunk_length`); each new token sees the M before it. A model
without memory (`mem_len=0`) has only its context: it gets a memory as long as the whole
context (prompt and sample), so that it sees everything, as if recomputing the prefix. A read
prompt can be sampled from any number of times; `generate` does both steps.

Filtering and drawing never sort the vocabulary (XLA's sort on CPU costs ~5 ms a row of
12,000): top-k and top-p are thresholds (`filter_probabilities`), the draw inverts the
cumulative distribution, in two levels, at one uniform per new token and row (`draw`). The
uniforms are drawn by NumPy from the seed before the loop: the same seed gives the same tokens
on either backend, with XLA on or off (up to float rounding at an interval's boundary). The
compiled functions are kept per model and traced again only for new shapes (B, M, chunk,
number of tokens) or filtering settings; a prompt of any length reuses them (it is left-padded
to whole chunks; for a model without memory, M follows the context, so each length traces
anew).
"""

import dataclasses
import math

import numpy as np
from keras import ops

from par_xl.models.compiled import compiled_function


def validate_sampling(num_tokens, temperature, top_k, top_p):
    """Raises ValueError, naming the argument first, for sampling settings that cannot work."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, received {num_tokens}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, received {temperature}.")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: all tokens), received {top_k}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], received {top_p}.")


def filter_probabilities(log_probs, temperature=1.0, top_k=0, top_p=1.0):
    """Next-token distribution after temperature, top-k and nucleus (top-p) filtering.

    Both filters are thresholds, so no step sorts the vocabulary: top-k keeps the tokens at
    least as likely as the k-th (`top_k`), top-p the tokens at least as likely as the least
    likely one of the nucleus, found by bisection (`nucleus_threshold`). Tokens tied with the
    last one kept are all kept.

    Args:
        log_probs: `(B, V)` normalized log-probabilities.
        temperature: > 0; below 1 sharpens, above 1 flattens.
        top_k: keep the k most likely tokens (0: all).
        top_p: keep the smallest set of most likely tokens whose mass (at this temperature)
            reaches top_p (1: all); with top_k too, both filters apply.

    Returns:
        `(B, V)` float32 probabilities at this temperature, the filtered tokens' set to zero;
        not renormalized (`draw` needs no normalization, and saves the pass).
    """
    log_probs = ops.cast(log_probs, "float32")
    if temperature == 1:
        probabilities = ops.exp(log_probs)  # normalized already
    else:
        probabilities = ops.softmax(log_probs / temperature, axis=-1)  # (B, V)
    keep, candidates = None, probabilities  # where the nucleus's last token is looked for
    if top_k and top_k < log_probs.shape[-1]:
        # Unsorted: XLA on CPU sorts the whole row for a sorted top-k, ~50x slower.
        values, indices = ops.top_k(log_probs, k=top_k, sorted=False)  # (B, k)
        keep = log_probs >= ops.min(values, axis=-1, keepdims=True)  # (B, V)
        # The nucleus ends among the k most likely tokens, or holds them all (threshold 0).
        candidates = ops.take_along_axis(probabilities, indices, axis=-1)  # (B, k)
    if top_p < 1:
        nucleus = probabilities >= nucleus_threshold(candidates, top_p)
        keep = nucleus if keep is None else ops.logical_and(keep, nucleus)
    return probabilities if keep is None else ops.where(keep, probabilities, 0.0)


def nucleus_threshold(probabilities, top_p):
    """The probability of the least likely token of each row's nucleus, `(B, 1)`.

    The nucleus is the smallest set of most likely tokens whose mass reaches `top_p`; its
    least likely token has the largest probability t with `sum(p[p >= t]) >= top_p`. The mass
    falls as t grows, so t is found by bisection, exactly: non-negative float32 numbers order
    as their bit patterns (int32) do, and 31 halvings cover them all. Given only the most
    likely tokens (`(B, k)`, any order), it is 0 when their mass is below `top_p`.
    """
    bits = ops.view(probabilities, "int32")  # (B, V), ordered as the probabilities
    low = ops.zeros(bits.shape[:1], "int32")  # mass at or above low reaches top_p
    high = ops.max(bits, axis=-1)  # (B,), the answer is in [low, high]

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low + 1) // 2
        mass = ops.sum(ops.where(bits >= middle[:, None], probabilities, 0.0), axis=-1)
        enough = mass >= top_p
        return ops.where(enough, middle, low), ops.where(enough, high, middle - 1)

    low, _ = ops.fori_loop(0, 31, halve, (low, high))
    return ops.view(low, "float32")[:, None]


def draw(weights, uniform):
    """Inverse-CDF sampling: the token whose interval of the cumulative weights holds `uniform`.

    In two levels, so that no step runs a cumulative sum over the whole vocabulary (XLA on CPU
    computes one as a windowed reduction, ~8x slower): the block of ceil(sqrt(V)) tokens whose
    interval holds the target, then the token within the block.

    Args:
        weights: `(B, V)` non-negative, proportional to the distribution (from
            `filter_probabilities`).
        uniform: `(B,)` in [0, 1).

    Returns:
        `(B,)` int32 ids; never one of weight zero.
    """
    batch, vocab_size = weights.shape
    size = math.isqrt(vocab_size - 1) + 1  # tokens per block
    count = -(-vocab_size // size)  # blocks
    padded = ops.pad(weights, [(0, 0), (0, count * size - vocab_size)])
    blocks = ops.reshape(padded, (batch, count, size))  # (B, count, size)
    totals = ops.sum(blocks, axis=-1)  # (B, count)
    target = ops.cast(uniform, weights.dtype)[:, None] * ops.sum(totals, axis=-1, keepdims=True)
    block, before = _invert(totals, target)
    row = ops.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]  # (B, size)
    token, _ = _invert(row, target - before)
    return block * size + token


def _invert(weights, target):
    """The index whose interval of the cumulative `(B, n)` weights holds the `(B, 1)` target,
    never one of weight zero (rounding may put the target past the end), and the mass before
    it, `(B, 1)`."""
    cumulative = ops.cumsum(weights, axis=-1)  # (B, n)
    index = ops.sum(ops.cast(cumulative <= target, "int32"), axis=-1)  # (B,)
    possible = ops.cast(ops.flip(weights > 0, axis=-1), "int32")
    last = weights.shape[-1] - 1 - ops.cast(ops.argmax(possible, axis=-1), "int32")
    index = ops.minimum(index, last)[:, None]  # (B, 1)
    before = ops.take_along_axis(cumulative - weights, index, axis=-1)  # (B, 1)
    return index[:, 0], before


def _read(model, ids, starts, state, knn_memories):
    """One prompt chunk through `forward`: the state after it. `starts` marks where the
    prompt begins in a left-padded chunk: nothing sees the padding."""
    return model.forward(ids, state, False, starts, knn_memories)[1]


def _sample(model, token, state, knn_memories, uniforms, temperature, top_k, top_p):
    """The sampling loop: `(B,)` last prompt token, `ModelState` (and `inference_state`'s
    ScaNN memories, beside it), `(N, B)` uniforms -> `(B, N)` sampled ids and the `(B, N)`
    log-probability of each under the model (before filtering)."""
    num_tokens, batch = uniforms.shape

    def step(i, loop_state):
        token, state, sampled, scores = loop_state
        hidden, state = model.forward(token[:, None], state, False, None, knn_memories)
        log_probs = model.log_probs(hidden[:, 0])  # (B, V)
        probabilities = filter_probabilities(log_probs, temperature, top_k, top_p)
        token = draw(probabilities, ops.take(uniforms, i, axis=0))  # (B,)
        score = ops.take_along_axis(log_probs, token[:, None], axis=-1)  # (B, 1)
        sampled = ops.slice_update(sampled, (0, i), token[:, None])
        scores = ops.slice_update(scores, (0, i), ops.cast(score, "float32"))
        return token, state, sampled, scores

    sampled = ops.zeros((batch, num_tokens), "int32")
    scores = ops.zeros((batch, num_tokens), "float32")
    return ops.fori_loop(0, num_tokens, step, (token, state, sampled, scores))[2:]


@dataclasses.dataclass(frozen=True)
class PromptState:
    """A read prompt, what `sample` continues from (any number of times: it is not changed).

    Attributes:
        token: `(B,)` the prompt's last token, the loop's first input.
        state: the `ModelState` after the rest of the prompt (empty for a model that neither
            attends nor carries a recurrent state: its context cannot matter).
        whole_context: the memory holds the whole context and grows with the sample (a model
            without memory, or `mem_len=0`).
        single: the prompt was a list of ids (`sample` then returns lists).
        knn_memories: with `knn_backend="scann"`, `{block name: ScannKNNMemory.get_state()}`
            after the prompt (the state's kNN stores are exact ones otherwise); `sample` puts
            them back into the model's ScaNN memories, which rebuild their searchers.
    """

    token: np.ndarray
    state: object
    whole_context: bool
    single: bool
    knn_memories: dict


def _compile_with_xla(model, jit_compile):
    """`jit_compile` (None: XLA unless the model searches ScaNN on the host); refused with
    ScaNN, which cannot run inside XLA."""
    if model.knn_blocks and model.knn_backend == "scann":
        if jit_compile:
            raise ValueError(
                "jit_compile must be False with knn_backend='scann': ScaNN searches its kNN "
                "memory on the host, outside XLA."
            )
        return False
    return True if jit_compile is None else jit_compile


def read_prompt(model, prompt_ids, mem_len=None, chunk_length=None, jit_compile=None):
    """Reads all but the last prompt token into an XL memory, in chunks through `forward`.

    Args:
        model: a built `PARTransformerXL` (supernet or derived); its state variables are
            untouched.
        prompt_ids: a non-empty list of ids, or a `(B, P)` array of B prompts of one length.
        mem_len: M while sampling (default: the model's; longer works too, as in
            Transformer-XL evaluation); 0, or a model trained without memory: the whole
            context, so that every position sees all before it.
        chunk_length: prompt positions per `forward` call (default M).
        jit_compile: compile the chunk's step with XLA (TensorFlow; JAX always does); `None`:
            unless the model searches with ScaNN (`knn_backend="scann"`, which refuses XLA).

    Returns:
        A `PromptState`.
    """
    prompt = np.asarray(prompt_ids, "int32")
    single = prompt.ndim == 1
    prompt = prompt[None] if single else prompt  # (B, P)
    if prompt.ndim != 2 or not prompt.shape[1]:
        raise ValueError(
            f"prompt_ids must hold at least one token, as a list or a (B, P) array; received "
            f"shape {np.shape(prompt_ids)}."
        )
    mem_len = model.mem_len if mem_len is None else mem_len
    if mem_len < 0:
        raise ValueError(f"mem_len must be >= 0, received {mem_len}.")
    whole_context = not mem_len
    context = prompt[:, :-1]  # the last prompt token is the loop's first input
    mem_len = mem_len or max(context.shape[1], 1)  # `sample` adds room for the new tokens
    chunk_length = mem_len if chunk_length is None else chunk_length
    if chunk_length < 1:
        raise ValueError(f"chunk_length must be positive, received {chunk_length}.")

    jit_compile = _compile_with_xla(model, jit_compile)
    state, memories = model.inference_state(prompt.shape[0], mem_len)
    if (state.xl_memory or state.recurrent) and context.shape[1]:
        # Left-padded to whole chunks, the prompt marked as a document starting after the
        # padding: one traced shape for every prompt length.
        padding = -context.shape[1] % chunk_length
        context = np.pad(context, [(0, 0), (padding, 0)])
        starts = np.zeros_like(context)
        starts[:, padding] = 1
        read = compiled_function(model, _read, jit_compile)
        for i in range(0, context.shape[1], chunk_length):
            chunk = slice(i, i + chunk_length)
            state = read(context[:, chunk], starts[:, chunk], state, memories)
    saved = {name: memory.get_state() for name, memory in memories.items()}
    return PromptState(prompt[:, -1], state, whole_context, single, saved)


def sample(
    model, prompt, num_tokens, temperature=1.0, top_k=0, top_p=1.0, seed=0, jit_compile=None
):
    """Samples `num_tokens` ids after a read prompt, in one compiled loop.

    Args:
        model: the model that read the prompt.
        prompt: a `PromptState` from `read_prompt`.
        num_tokens: N > 0.
        temperature, top_k, top_p: see `filter_probabilities`; `top_k=1` is greedy decoding.
        seed: the sample's seed: same seed, same tokens.
        jit_compile: compile the loop with XLA (TensorFlow; JAX always does). The step is small
            matrix-vector work, so XLA's fused loop beats TensorFlow's per-op dispatch.
            `None`: unless the model searches with ScaNN (which refuses XLA).

    Returns:
        `(ids, log_probs)`: the sampled ids and the model's log-probability of each (before
        filtering), as lists for a list prompt, else `(B, N)` arrays.
    """
    validate_sampling(num_tokens, temperature, top_k, top_p)
    jit_compile = _compile_with_xla(model, jit_compile)
    memories = {}
    if prompt.knn_memories:  # ScaNN: the model's memories (`inference_state`), refilled
        memories = model.inference_state(len(prompt.token), 0)[1]
    for name, memory in memories.items():
        memory.set_state(prompt.knn_memories[name])  # the prompt's entries, searchers rebuilt
    state = prompt.state
    if prompt.whole_context:  # room for the new tokens: memory is right-aligned
        room = [(0, 0), (num_tokens, 0), (0, 0)]
        state = state._replace(
            xl_memory={name: ops.pad(m, room) for name, m in state.xl_memory.items()}
        )
    uniforms = np.random.default_rng(seed).random((num_tokens, len(prompt.token)))
    # The filtering settings (arguments 4, 5, 6) are static: each new value traces anew.
    loop = compiled_function(model, _sample, jit_compile, static_argnums=(4, 5, 6))
    ids, scores = loop(
        prompt.token, state, memories, uniforms.astype("float32"), float(temperature),
        int(top_k), float(top_p),
    )  # fmt: skip
    ids, scores = ops.convert_to_numpy(ids), ops.convert_to_numpy(scores)
    if prompt.single:
        return ids[0].tolist(), scores[0].tolist()
    return ids, scores


def generate(
    model,
    prompt_ids,
    num_tokens,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    mem_len=None,
    chunk_length=None,
    jit_compile=None,
):
    """Samples `num_tokens` ids after `prompt_ids`: `read_prompt`, then `sample` (see both).

    Returns:
        `(ids, log_probs)`: the sampled ids and the model's log-probability of each (before
        filtering), as lists for a list prompt, else `(B, N)` arrays.
    """
    validate_sampling(num_tokens, temperature, top_k, top_p)  # before reading the prompt
    prompt = read_prompt(model, prompt_ids, mem_len, chunk_length, jit_compile)
    return sample(model, prompt, num_tokens, temperature, top_k, top_p, seed, jit_compile)
