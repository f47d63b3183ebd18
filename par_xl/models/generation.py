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
uniforms are a hash of the seed, the token's step and the row, computed in the loop
(`sampling_uniforms`): the same seed gives the same tokens on either backend, with XLA on or
off, and in an exported SavedModel (`par_xl.serving`), up to float rounding at an interval's
boundary. The compiled functions are kept per model and traced again only for new shapes (B, M,
chunk, number of tokens) or filtering settings; a prompt of any length reuses them (it is
left-padded to whole chunks; for a model without memory, M follows the context, so each length
traces anew). Prompts of different lengths make one batch: each is marked as a document that
starts after its padding (`forget_padding` empties the state of one-token prompts), so each row
samples what its prompt alone would.
"""

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from par_xl.memory import exact_state
from par_xl.models.compiled import compiled_function
from par_xl.models.sampling_uniforms import seed_words, uniforms
from par_xl.models.state import ModelState


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

    The settings are Python numbers, each value traced anew (a filter that is off is left out
    of the program), or scalar tensors, one program for every value (an exported SavedModel's,
    `par_xl.serving`): each filter then sits behind `ops.cond`, so that one that is off costs
    nothing either, and top-k is a bisection too (`top_k_threshold`). Both keep the same tokens.

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
    vocab_size = log_probs.shape[-1]
    probabilities = _switch(
        temperature == 1,
        lambda: ops.exp(log_probs),  # normalized already
        lambda: ops.softmax(log_probs / temperature, axis=-1),  # (B, V)
    )
    keep, candidates = None, probabilities  # where the nucleus's last token is looked for
    if not _is_number(top_k):
        keep = _switch(
            ops.logical_and(top_k > 0, top_k < vocab_size),
            lambda: log_probs >= top_k_threshold(log_probs, top_k),
            lambda: ops.ones_like(log_probs, "bool"),
        )
    elif top_k and top_k < vocab_size:
        # Unsorted: XLA on CPU sorts the whole row for a sorted top-k, ~50x slower.
        values, indices = ops.top_k(log_probs, k=top_k, sorted=False)  # (B, k)
        keep = log_probs >= ops.min(values, axis=-1, keepdims=True)  # (B, V)
        # The nucleus ends among the k most likely tokens, or holds them all (threshold 0).
        candidates = ops.take_along_axis(probabilities, indices, axis=-1)  # (B, k)
    if not _is_number(top_p) or top_p < 1:
        nucleus = _switch(
            top_p < 1,
            lambda: probabilities >= nucleus_threshold(candidates, top_p),
            lambda: ops.ones_like(log_probs, "bool"),
        )
        keep = nucleus if keep is None else ops.logical_and(keep, nucleus)
    return probabilities if keep is None else ops.where(keep, probabilities, 0.0)


def _is_number(value):
    return isinstance(value, int | float | np.number)


def _switch(condition, if_true, if_false):
    """`if_true()` or `if_false()`: chosen in Python for a Python bool, else by `ops.cond`."""
    if isinstance(condition, bool | np.bool_):
        return if_true() if condition else if_false()
    return ops.cond(condition, if_true, if_false)


def top_k_threshold(log_probs, top_k):
    """The k-th largest log-probability of each row, `(B, 1)`, for a tensor `top_k` in [1, V].

    By bisection, like `nucleus_threshold`: the distances `-log p` are non-negative, so they
    order as their bit patterns (int32) do; the k-th smallest distance is the smallest d with
    `count(-log p <= d) >= k`, and 31 halvings find it exactly.
    """
    bits = ops.view(0.0 - log_probs, "int32")  # (B, V); 0.0 - x: never a negative zero
    low, high = ops.min(bits, axis=-1), ops.max(bits, axis=-1)  # (B,): the answer is in between

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low) // 2
        count = ops.sum(ops.cast(bits <= middle[:, None], "int32"), axis=-1)
        enough = count >= top_k
        return ops.where(enough, low, middle + 1), ops.where(enough, middle, high)

    low, _ = ops.fori_loop(0, 31, halve, (low, high))
    return 0.0 - ops.view(low[:, None], "float32")  # (B, 1): a static last axis to view


def nucleus_threshold(probabilities, top_p):
    """The probability of the least likely token of each row's nucleus, `(B, 1)`.

    The nucleus is the smallest set of most likely tokens whose mass reaches `top_p`; its
    least likely token has the largest probability t with `sum(p[p >= t]) >= top_p`. The mass
    falls as t grows, so t is found by bisection, exactly: non-negative float32 numbers order
    as their bit patterns (int32) do, and 31 halvings cover them all. Given only the most
    likely tokens (`(B, k)`, any order), it is 0 when their mass is below `top_p`.
    """
    bits = ops.view(probabilities, "int32")  # (B, V), ordered as the probabilities
    low = ops.zeros_like(bits[:, 0])  # (B,): mass at or above low reaches top_p
    high = ops.max(bits, axis=-1)  # (B,), the answer is in [low, high]

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low + 1) // 2
        mass = ops.sum(ops.where(bits >= middle[:, None], probabilities, 0.0), axis=-1)
        enough = mass >= top_p
        return ops.where(enough, middle, low), ops.where(enough, high, middle - 1)

    low, _ = ops.fori_loop(0, 31, halve, (low, high))
    return ops.view(low[:, None], "float32")  # (B, 1): a static last axis to view


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
    vocab_size = weights.shape[-1]
    size = math.isqrt(vocab_size - 1) + 1  # tokens per block
    count = -(-vocab_size // size)  # blocks
    padded = ops.pad(weights, [(0, 0), (0, count * size - vocab_size)])
    blocks = ops.reshape(padded, (-1, count, size))  # (B, count, size)
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


def read_chunk(model, ids, starts, state, knn_memories):
    """One prompt chunk through `forward`: the state after it. `starts` marks where the
    prompt begins in a left-padded chunk: nothing sees the padding."""
    return model.forward(ids, state, False, starts, knn_memories)[1]


def sampling_loop(
    model, token, state, knn_memories, seed, num_tokens, length, temperature, top_k, top_p
):
    """The sampling loop: `(B,)` last prompt token, `ModelState` (and `inference_state`'s
    ScaNN memories, beside it), `(2,)` uint32 seed (`sampling_uniforms.seed_words`) -> `(B,
    length)` sampled ids and the `(B, length)` log-probability of each under the model (before
    filtering), of which the first `num_tokens` columns are sampled (the rest are zeros).
    `length` is static, the size of the buffers; `num_tokens` may be a tensor (one program for
    every count, as a SavedModel takes it)."""
    batch = ops.shape(token)[0]  # a tensor for a symbolic batch

    def step(i, loop_state):
        token, state, sampled, scores = loop_state
        hidden, state = model.forward(token[:, None], state, False, None, knn_memories)
        log_probs = model.log_probs(hidden[:, 0])  # (B, V)
        probabilities = filter_probabilities(log_probs, temperature, top_k, top_p)
        token = draw(probabilities, uniforms(seed, i, batch))  # (B,)
        score = ops.take_along_axis(log_probs, token[:, None], axis=-1)  # (B, 1)
        sampled = ops.slice_update(sampled, (0, i), token[:, None])
        scores = ops.slice_update(scores, (0, i), ops.cast(score, "float32"))
        return token, state, sampled, scores

    sampled = ops.zeros((batch, length), "int32")
    scores = ops.zeros((batch, length), "float32")
    return ops.fori_loop(0, num_tokens, step, (token, state, sampled, scores))[2:]


def forget_padding(state, context_lengths, initial):
    """The state after a left-padded prompt was read (`read_prompt`), with no padding in it.

    A row whose context holds a token has its start marked after the padding, which nothing
    then sees; a row of a one-token prompt has no context, so nothing to mark: its XL memory
    and kNN stores are emptied here (exact stores; `read_prompt` clears ScaNN ones), and its
    recurrent states (LEAP's sums) are those of `initial` again.

    Args:
        state: a `ModelState`.
        context_lengths: `(B,)` int32, each row's prompt tokens read into the state.
        initial: the `ModelState` of empty streams the prompt was read from.
    """
    context_lengths = ops.cast(context_lengths, "int32")
    empty = context_lengths == 0

    def rows_of_initial(now, before):
        where = ops.reshape(empty, (-1,) + (1,) * (len(now.shape) - 1))
        return ops.where(where, before, now)

    return ModelState(
        state.xl_memory,
        ops.minimum(state.valid_length, context_lengths),
        {name: exact_state.clear(store, empty) for name, store in state.knn.items()},
        keras.tree.map_structure(rows_of_initial, state.recurrent, initial.recurrent),
    )


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


def check_generates(model):
    """Raises ValueError for a model that cannot generate token by token: one with
    block-recurrent attention (R), whose state is updated once per block of
    recurrent_block_size positions, from the block's start, which reading one position per
    call would change (meliad does not generate with recurrence either)."""
    if any("R" in block.offered for block in model.blocks):
        raise ValueError(
            "A model with block-recurrent attention (R) cannot generate token by token: its "
            "state is updated once per block of recurrent_block_size positions, from the "
            "block's start, which reading one position per call would change (meliad does not "
            "generate with recurrence either)."
        )


def read_prompt(model, prompt_ids, mem_len=None, chunk_length=None, jit_compile=None):
    """Reads all but the last prompt token into an XL memory, in chunks through `forward`.

    Args:
        model: a built `PARTransformerXL` (supernet or derived); its state variables are
            untouched.
        prompt_ids: a non-empty list of ids; a `(B, P)` array of B prompts of one length; or a
            list of B non-empty lists of ids, of any lengths (each row's sample is the one its
            prompt would get alone, for the same seed and row).
        mem_len: M while sampling (default: the model's; longer works too, as in
            Transformer-XL evaluation); 0, or a model trained without memory: the whole
            context, so that every position sees all before it.
        chunk_length: prompt positions per `forward` call (default M).
        jit_compile: compile the chunk's step with XLA (TensorFlow; JAX always does); `None`:
            unless the model searches with ScaNN (`knn_backend="scann"`, which refuses XLA).

    Returns:
        A `PromptState`.

    Raises:
        ValueError: a bad prompt or setting, or a model with block-recurrent attention (R).
    """
    check_generates(model)
    prompt, lengths, single = _prompt_rows(prompt_ids)  # (B, P) right-aligned, (B,)
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
    initial = state
    if (state.xl_memory or state.recurrent) and context.shape[1]:
        # Left-padded to whole chunks, each prompt marked as a document starting after its
        # padding: one traced shape for every prompt length.
        padding = -context.shape[1] % chunk_length
        context = np.pad(context, [(0, 0), (padding, 0)])
        starts = np.zeros_like(context)
        rows = np.flatnonzero(lengths > 1)  # the rows with a context to mark
        starts[rows, context.shape[1] - (lengths[rows] - 1)] = 1
        read = compiled_function(model, read_chunk, jit_compile)
        for i in range(0, context.shape[1], chunk_length):
            chunk = slice(i, i + chunk_length)
            state = read(context[:, chunk], starts[:, chunk], state, memories)
        state = forget_padding(state, lengths - 1, initial)
        for memory in memories.values():
            memory.clear(lengths == 1)
    saved = {name: memory.get_state() for name, memory in memories.items()}
    return PromptState(prompt[:, -1], state, whole_context, single, saved)


def _prompt_rows(prompt_ids):
    """`(prompts, lengths, single)`: `(B, P)` int32 prompts right-aligned (left-padded with 0),
    their `(B,)` lengths, and whether `prompt_ids` was one list of ids."""
    rows = prompt_ids if isinstance(prompt_ids, list | tuple) else [None]
    if rows and all(np.ndim(row) == 1 for row in rows):  # B lists of ids, any lengths
        rows = [np.asarray(row, "int32") for row in rows]
        single = False
    else:
        prompt = np.asarray(prompt_ids, "int32")
        single = prompt.ndim == 1
        rows = list(prompt[None] if single else prompt) if prompt.ndim in (1, 2) else []
    lengths = np.array([len(row) for row in rows], "int32")
    if not len(rows) or not lengths.min():
        raise ValueError(
            "prompt_ids must hold at least one token per prompt, as a list, a (B, P) array or "
            f"B lists; received {prompt_ids!r:.200}."
        )
    prompts = np.zeros((len(rows), lengths.max()), "int32")
    for padded, row in zip(prompts, rows):
        padded[len(padded) - len(row) :] = row
    return prompts, lengths, single


def sample(
    model, prompt, num_tokens, temperature=1.0, top_k=0, top_p=1.0, seed=0, jit_compile=None
):
    """Samples `num_tokens` ids after a read prompt, in one compiled loop.

    Args:
        model: the model that read the prompt.
        prompt: a `PromptState` from `read_prompt`.
        num_tokens: N > 0.
        temperature, top_k, top_p: see `filter_probabilities`; `top_k=1` is greedy decoding.
        seed: the sample's seed, an integer: same seed, same tokens (`sampling_uniforms`).
        jit_compile: compile the loop with XLA (TensorFlow; JAX always does). The step is small
            matrix-vector work, so XLA's fused loop beats TensorFlow's per-op dispatch.
            `None`: unless the model searches with ScaNN (which refuses XLA).

    Returns:
        `(ids, log_probs)`: the sampled ids and the model's log-probability of each (before
        filtering), as lists for a list prompt, else `(B, N)` arrays.
    """
    validate_sampling(num_tokens, temperature, top_k, top_p)
    seed = seed_words(seed)
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
    # The count, the buffers' length and the filtering settings (arguments 4 to 8) are
    # static: each new value traces anew.
    loop = compiled_function(model, sampling_loop, jit_compile, static_argnums=(4, 5, 6, 7, 8))
    ids, scores = loop(
        prompt.token, state, memories, seed, int(num_tokens), int(num_tokens),
        float(temperature), int(top_k), float(top_p),
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
