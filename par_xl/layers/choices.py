"""The block choices of the PAR search: one registry entry per letter.

A `StochasticBlock` offers some of these letters: a supernet block mixes or samples them, a
derived block holds one. Everything that depends on a letter reads its entry here: which
sublayers a block builds for it (and `derive()` copies), how its residual branch is applied,
whether it attends (so the block keeps XL memory), remembers (so the block keeps a kNN store)
or carries a recurrent state of its own (LEAP's sums, the block-recurrent cell's state vectors),
its cost per token (`par_xl.cost.flops`), and its name and colour in logs and pictures. Adding a
choice is adding one entry.

Shape letters as in `par_xl.layers.relative_attention` (B, T, M, K, D, N, H), plus C the kNN
store's capacity (`knn_memory_size`), k its neighbours per query (`knn_neighbors`), W the
window of sliding-window attention (`window`), S the block-recurrent cell's state vectors
(`recurrent_states`) and its block (`recurrent_block_size`).
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import keras

from par_xl.layers import block_recurrent_state, leap_state
from par_xl.layers.block_recurrent import BlockRecurrentAttention
from par_xl.layers.feed_forward import FeedForward
from par_xl.layers.gated_feed_forward import GATED, GatedFeedForward, matching_inner_size
from par_xl.layers.leap_attention import LeapAttention
from par_xl.layers.memorizing_attention import MemorizingAttention
from par_xl.layers.relative_attention import RelativeAttention
from par_xl.layers.window_attention import WindowAttention


@dataclasses.dataclass(frozen=True, eq=False)
class Choice:
    """One block choice.

    Attributes:
        letter: its one-letter code in architectures and `--choices`, e.g. "A".
        name: what it is, for logs, pictures and legends.
        color: its matplotlib colour in pictures.
        sublayers: `{attribute name: make(block, name) -> layer}`: the sublayers a block
            builds for it, in this order, each named after its attribute. `derive()` copies
            exactly these from the supernet; their names are the checkpoints' weight paths.
        attends: whether the branch reads the block's XL memory (the block then keeps one).
        remembers: whether the branch searches and fills the block's kNN store (the block then
            keeps one: a `KNNState`, see `par_xl.memory.exact_state`). At most one letter of a
            block may remember: its branch's store is the block's new store.
        apply: `apply(block, inputs, memory, position_encoding, mask, training, knn_state,
            document_starts, recurrent_state)` -> `(output, knn_state, recurrent_state)`: the
            branch's `(B, T, D)` output from `(B, T, D)` inputs, and the block's kNN store and
            recurrent state after it (`None` in a block without one; a branch that does not
            use one returns it as given; the arguments after `inputs` are a `BranchContext`). See
            `StochasticBlock.call`.
        macs_per_token: `macs_per_token(block, segment_length, mem_len, batch_size,
            position_projection)` -> matrix multiply-adds per input token of the branch over
            `(B, T)` batches and M memory positions; `position_projection` counts the
            projection of the K relative positions, shared by the batch (see `par_xl.cost.flops`).
        recurrent_state: `None`, or for a branch that carries a state of its own from segment
            to segment (besides the XL memory and the kNN store), `recurrent_state(block,
            batch_size)` -> its state in an empty stream: a NamedTuple of zeros whose first
            axis is the B streams (L: `LeapState`; R: `BlockRecurrentState`). The model carries
            it like the XL memory (`par_xl.models.state`). At most one letter of a block may
            have one.
    """

    letter: str
    name: str
    color: str
    sublayers: Mapping[str, Callable]
    attends: bool
    remembers: bool
    apply: Callable
    macs_per_token: Callable
    recurrent_state: Callable | None = None


def _layer_norm(block, name):
    return keras.layers.LayerNormalization(epsilon=1e-5, name=name, dtype=block.dtype_policy)


def _relative_attention(block, name, layer_class=RelativeAttention, **extra):
    return layer_class(
        block.num_heads,
        block.head_size,
        attention_dropout_rate=block.attention_dropout_rate,
        kernel_initializer=block.kernel_initializer,
        name=name,
        dtype=block.dtype_policy,
        **{"position": block.position, **extra},
    )


def _memorizing_attention(block, name):
    return _relative_attention(block, name, MemorizingAttention, num_neighbors=block.knn_neighbors)


def _window_attention(block, name):
    return _relative_attention(block, name, WindowAttention, window=block.window_length,
                               position="t5")  # fmt: skip


def _leap_attention(block, name):
    return LeapAttention(
        block.num_heads,
        block.head_size,
        kernel_initializer=block.kernel_initializer,
        name=name,
        dtype=block.dtype_policy,
    )


def _gated_inner_size(block):
    return matching_inner_size(block.num_heads * block.head_size, block.inner_size,
                               block.ffn_activation)  # fmt: skip


def _gated_feed_forward(block, name):
    return GatedFeedForward(
        _gated_inner_size(block),
        activation=block.ffn_activation,
        dropout_rate=block.dropout_rate,
        kernel_initializer=block.kernel_initializer,
        name=name,
        dtype=block.dtype_policy,
    )


def _block_recurrent_attention(block, name):
    return BlockRecurrentAttention(
        block.num_heads,
        block.head_size,
        num_states=block.recurrent_states,
        block_size=block.recurrent_block_size,
        gate=block.recurrent_gate,
        inner_size=block.inner_size,
        attention_dropout_rate=block.attention_dropout_rate,
        kernel_initializer=block.kernel_initializer,
        name=name,
        dtype=block.dtype_policy,
    )


def _feed_forward(block, name):
    return FeedForward(
        block.inner_size,
        dropout_rate=block.dropout_rate,
        kernel_initializer=block.kernel_initializer,
        name=name,
        dtype=block.dtype_policy,
    )


class BranchContext(NamedTuple):
    """What `StochasticBlock.call` gives a branch besides its `(B, T, D)` inputs, in
    `Choice.apply`'s order: the XL memory, position encoding, mask, training flag, kNN store,
    document starts and recurrent state (`None` where the block has none)."""

    memory: Any
    position_encoding: Any
    mask: Any
    training: Any
    knn_state: Any = None
    document_starts: Any = None
    recurrent_state: Any = None


def _residual(sublayer, make, run):
    """The `sublayers` and `apply` of a letter whose branch is Transformer-XL's post-norm
    residual around one sublayer: `<sublayer>_norm(inputs + Dropout(transformed))`.

    `make(block, name)` builds the sublayer; `run(layer, inputs, context)` ->
    `(transformed (B, T, D), knn_state, recurrent_state)` calls it with what it reads of the
    `BranchContext`, and passes on the store and state it does not use."""

    def apply(block, inputs, *arguments, **keywords):
        context = BranchContext(*arguments, **keywords)
        transformed, knn_state, recurrent_state = run(getattr(block, sublayer), inputs, context)
        dropped = block.residual_dropout(transformed, training=context.training)
        return getattr(block, f"{sublayer}_norm")(inputs + dropped), knn_state, recurrent_state

    return {"sublayers": {sublayer: make, f"{sublayer}_norm": _layer_norm}, "apply": apply}


def _over_memory(layer, inputs, c):
    """A, W: attention over `[XL memory; segment]`."""
    attended = layer(inputs, c.memory, c.position_encoding, c.mask, training=c.training)
    return attended, c.knn_state, c.recurrent_state


def _position_wise(layer, inputs, c):
    """F, G: each position on its own."""
    return layer(inputs, training=c.training), c.knn_state, c.recurrent_state


def _memorizing(layer, inputs, c):
    """M: also searches and fills the block's kNN store."""
    attended, knn_state = layer(inputs, c.memory, c.position_encoding, c.mask, c.knn_state,
                                training=c.training, document_starts=c.document_starts)  # fmt: skip
    return attended, knn_state, c.recurrent_state


def _leap(layer, inputs, c):
    """L: its recurrent sums instead of the XL memory."""
    attended, recurrent_state = layer(inputs, c.recurrent_state, training=c.training,
                                      document_starts=c.document_starts)  # fmt: skip
    return attended, c.knn_state, recurrent_state


def _block_recurrent(layer, inputs, c):
    """R: the XL memory and the block's recurrent state vectors."""
    attended, recurrent_state = layer(inputs, c.memory, c.position_encoding, c.mask,
                                      c.recurrent_state, training=c.training,
                                      document_starts=c.document_starts)  # fmt: skip
    return attended, c.knn_state, recurrent_state


def _apply_identity(block, inputs, *arguments, **keywords):
    context = BranchContext(*arguments, **keywords)
    return inputs, context.knn_state, context.recurrent_state


def _attention_macs(block, segment_length, mem_len, batch_size, position_projection):
    """Over `[memory; segment]`; the XL position term (`position="xl"`) adds the position scores
    and the projection of the K relative positions; rotary and T5 add no products."""
    d, t = block.num_heads * block.head_size, segment_length
    k = mem_len + t  # keys per query
    xl = block.position == "xl"
    macs = (
        d * d  # query projection
        + 2 * d * d * k / t  # key and value projections over [memory; segment]
        + (3 if xl else 2) * k * d  # content scores, (position scores,) probabilities x values
        + d * d  # output projection
    )
    if position_projection and xl:
        macs += k * d * d / (batch_size * t)  # shared by the batch
    return macs


def _memorizing_attention_macs(block, segment_length, mem_len, batch_size,
                               position_projection):  # fmt: skip
    """The local attention's (as A's), plus per query and head the exact search's scores over
    all C slots (C * H) and the attention over the k retrieved entries (scores and values,
    2 * k * H); the store's writes and the top-k selection are no products."""
    local = _attention_macs(block, segment_length, mem_len, batch_size, position_projection)
    retrieval = block.knn_memory_size + 2 * block.knn_neighbors  # (C + 2k) * H per head
    return local + retrieval * block.num_heads * block.head_size


def _window_attention_macs(block, segment_length, mem_len, batch_size, position_projection):
    """The projections of `[min(W, M) memory slots; segment]`, and per query the scores and
    values of `min(W, M) + T` keys (W >= T) or 2W keys (W < T: chunks of W queries, the
    segment padded to whole chunks); the T5 bias is a lookup."""
    d, t = block.num_heads * block.head_size, segment_length
    window = block.window_length or t
    read = min(window, mem_len)
    keys, queries = (read + t, t) if window >= t else (2 * window, -(-t // window) * window)
    return 2 * d * d + 2 * d * d * (read + t) / t + 2 * keys * d * queries / t


def _leap_attention_macs(block, segment_length, mem_len, batch_size, position_projection):
    """Five projections (query, focus, key, value, output) and per head five products over H:
    focus logit, weighted key and value, alignment, gated value."""
    d = block.num_heads * block.head_size
    return 5 * d * d + 5 * d


def _block_recurrent_macs(block, segment_length, mem_len, batch_size, position_projection):
    """A's, plus the tokens' attention over the S state vectors (their query projection, S
    scores and S values per head, their share of the output projection), plus the state's
    update once per block of W positions (`BlockRecurrentAttention.update_macs`), spread over
    the block's tokens; a last, partial block counts as a whole one."""
    d, t = block.num_heads * block.head_size, segment_length
    local = _attention_macs(block, segment_length, mem_len, batch_size, position_projection)
    cross = 2 * d * d + 2 * block.recurrent_states * d
    blocks = -(-t // block.recurrent_block_size)  # ceil(T / W)
    update = BlockRecurrentAttention.update_macs(
        d, block.recurrent_states, min(block.recurrent_block_size, t), block.recurrent_gate,
        block.inner_size,
    )  # fmt: skip
    return local + cross + blocks * update / t


def _block_recurrent_state(block, batch_size):
    return block_recurrent_state.empty_state(
        batch_size, block.recurrent_states, block.num_heads * block.head_size
    )


def _feed_forward_macs(block, segment_length, mem_len, batch_size, position_projection):
    return 2 * block.num_heads * block.head_size * block.inner_size  # two projections


def _gated_feed_forward_macs(block, segment_length, mem_len, batch_size, position_projection):
    projections = 3 if block.ffn_activation in GATED else 2  # gate, (up,) down
    return projections * block.num_heads * block.head_size * _gated_inner_size(block)


def _leap_state(block, batch_size):
    return leap_state.empty_state(batch_size, block.num_heads, block.head_size)


def _no_macs(block, segment_length, mem_len, batch_size, position_projection):
    return 0.0


# In registry order: the order of a block's sublayers (its weights) and of the choice columns
# in `PARTransformerXL.choice_probabilities`, logs and pictures.
CHOICES = {
    choice.letter: choice
    for choice in (
        Choice(
            letter="A",
            name="attention",
            color="tab:blue",
            **_residual("attention", _relative_attention, _over_memory),
            attends=True,
            remembers=False,
            macs_per_token=_attention_macs,
        ),
        Choice(
            letter="F",
            name="feed-forward",
            color="tab:orange",
            **_residual("feed_forward", _feed_forward, _position_wise),
            attends=False,
            remembers=False,
            macs_per_token=_feed_forward_macs,
        ),
        Choice(
            letter="I",
            name="identity",
            color="tab:green",
            sublayers={},
            attends=False,
            remembers=False,
            apply=_apply_identity,
            macs_per_token=_no_macs,
        ),
        Choice(  # last: the weights and choice columns of A, F, I keep their places
            letter="M",
            name="memorizing attention",
            color="tab:purple",
            **_residual("memorizing_attention", _memorizing_attention, _memorizing),
            attends=True,
            remembers=True,
            macs_per_token=_memorizing_attention_macs,
        ),
        # After M: the weights and choice columns of A, F, I, M keep their places.
        Choice(
            letter="W",
            name="window attention",
            color="tab:cyan",
            **_residual("window_attention", _window_attention, _over_memory),
            attends=True,  # its window's cache is the XL memory
            remembers=False,
            macs_per_token=_window_attention_macs,
        ),
        Choice(
            letter="L",
            name="LEAP",  # short: the heat map's column labels
            color="tab:pink",
            **_residual("leap_attention", _leap_attention, _leap),
            attends=False,  # its state is its own sums, not the XL memory
            remembers=False,
            macs_per_token=_leap_attention_macs,
            recurrent_state=_leap_state,
        ),
        Choice(
            letter="G",
            name="gated feed-forward",
            color="tab:brown",
            **_residual("gated_feed_forward", _gated_feed_forward, _position_wise),
            attends=False,
            remembers=False,
            macs_per_token=_gated_feed_forward_macs,
        ),
        Choice(  # after G: the weights and choice columns of A, F, I, M, W, L, G keep theirs
            letter="R",
            name="block-recurrent attention",
            color="tab:red",
            **_residual("block_recurrent_attention", _block_recurrent_attention, _block_recurrent),
            attends=True,  # its tokens attend over [XL memory; segment] as A's do
            remembers=False,
            macs_per_token=_block_recurrent_macs,
            recurrent_state=_block_recurrent_state,
        ),
    )
}
DEFAULT_CHOICES = "AFI"  # what PAR searches: attention, feed-forward, identity


def in_registry_order(letters):
    """The distinct registry letters among `letters`, in registry order: e.g. "IA" -> "AI"."""
    return "".join(letter for letter in CHOICES if letter in letters)


def legend():
    """The registry's letters and names, for messages: "A (attention), F (feed-forward), ..."."""
    return ", ".join(f"{c.letter} ({c.name})" for c in CHOICES.values())


def validate_choices(choices, name="choices"):
    """Checks that `choices` is 2 or more distinct letters of the registry; returns it.

    Raises:
        ValueError: "<name> must be ...", saying what was expected and what was received.
    """
    letters = isinstance(choices, str) and set(choices) <= set(CHOICES)
    if not letters or len(set(choices)) != len(choices) or len(choices) < 2:
        raise ValueError(
            f"{name} must be 2 or more distinct letters of {legend()}, received {choices!r}."
        )
    return choices


def validate_architecture(architecture, num_layers, name="architecture"):
    """Checks that `architecture` is `num_layers` letters of the registry, one per block.

    Args:
        architecture: e.g. `"AAFAFI"`.
        num_layers: how many blocks it describes.
        name: the argument (or flag) named in the error message.

    Returns:
        `architecture`, unchanged.

    Raises:
        ValueError: "<name> must be ...", saying what was expected and what was received.
    """
    letters = isinstance(architecture, str) and set(architecture) <= set(CHOICES)
    if not letters or len(architecture) != num_layers:
        plural = "letter" if num_layers == 1 else "letters"
        raise ValueError(
            f"{name} must be {num_layers} {plural} (one per layer) of {legend()}, received "
            f"{architecture!r}."
        )
    return architecture
