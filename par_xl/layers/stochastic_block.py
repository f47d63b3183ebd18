"""A PAR block: one of several choices (attention, feed-forward, identity, memorizing
attention...), chosen by Gumbel-softmax."""

import keras
from keras import ops

from par_xl.layers.choices import (
    CHOICES,
    DEFAULT_CHOICES,
    validate_architecture,
    validate_choices,
)
from par_xl.layers.gated_feed_forward import validate_ffn_activation
from par_xl.layers.gumbel_choice import GumbelChoice
from par_xl.layers.initializers import default_initializer
from par_xl.layers.positions import validate_position
from par_xl.memory.knn_memory import KNNMemory

# How a supernet block trains: every branch, mixed by per-example Gumbel-softmax weights (PAR),
# or one sampled branch per batch, the only one computed (GDAS).
SEARCHES = ("all_branches", "single_path")


def validate_search(search):
    """Checks that `search` is one of SEARCHES; returns it."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, received {search!r}.")
    return search


@keras.saving.register_keras_serializable(package="par_xl")
class StochasticBlock(keras.layers.Layer):
    """One layer of the PAR supernet (Mandava et al. 2020, arXiv 2009.04534).

    Branches, one per letter of `choices` (`par_xl.layers.choices`), each post-norm as in
    Transformer-XL:
        A: LayerNorm(x + Dropout(RelativeAttention(x, memory)))
        F: LayerNorm(x + Dropout(FeedForward(x)))
        I: x
        M: LayerNorm(x + Dropout(MemorizingAttention(x, memory, knn_state)))
        W: LayerNorm(x + Dropout(WindowAttention(x, memory)))
        L: LayerNorm(x + Dropout(LeapAttention(x, recurrent_state)))
        G: LayerNorm(x + Dropout(GatedFeedForward(x)))
        R: LayerNorm(x + Dropout(BlockRecurrentAttention(x, memory, recurrent_state)))
    A block that offers M (`remembers`) keeps a kNN store, given and returned by each call:
    the M branch searches it and adds the segment; the other branches pass it through. In
    "all_branches" the M branch always runs, so the store gets every segment; in "single_path"
    (and argmax inference) only when M is the branch computed. A block that offers L or R
    (`recurs`) keeps that letter's recurrent state (`LeapState`, `BlockRecurrentState`) the same
    way, except that a branch that passes it through forgets it in the rows where a document
    starts (it would otherwise carry an earlier document's state past the start).
    The supernet block (`choice=None`) trains in one of two ways (`search`):
        "all_branches": `sum_k w_k * branch_k` with per-example weights `w` from a
            `GumbelChoice` over `choices` (PAR); every branch is computed.
        "single_path": one branch per batch, sampled from the choice probabilities, is the
            only one computed; its output is scaled by a gate that is 1 in the forward pass and
            carries the gradient to the choice logits (`GumbelChoice.single_choice`, GDAS).
    At inference, `choice_at_inference="expected"` mixes every branch by the choice
    probabilities; `"argmax"` computes only the preferred branch.
    A block built with a fixed `choice` (a registry letter) holds only that choice's
    sublayers, so a derived architecture is a genuinely smaller model.

    Args:
        num_heads: N.
        head_size: H.
        inner_size: d_ffn of the feed-forward branch.
        dropout_rate: residual dropout rate (also inside the feed-forward branch).
        attention_dropout_rate: dropout rate on attention probabilities.
        choices: the supernet block's candidate letters, in the order of its choice logits,
            e.g. "AFI"; for a fixed block, the letters its model searched.
        choice: `None` for the supernet, or the block's fixed letter, e.g. 'A'.
        search: "all_branches" or "single_path" (supernet only).
        tau, straight_through, tau_is_trainable, choice_at_inference, seed: see `GumbelChoice`.
        kernel_initializer: initializer of every projection.
        knn_neighbors: k, the entries the M branch retrieves per query and head.
        knn_memory_size: C, the kNN store's entries per stream and head (the M branch's cost).
        window: W, the predecessors the W branch sees; `None`: the segment length the block is
            built with (`window_length` holds the value used).
        position: the A and M branches' position term, "xl", "rotary" or "t5"
            (`par_xl.layers.positions`).
        ffn_activation: the G branch's, one of `gated_feed_forward.FFN_ACTIVATIONS`.
        recurrent_states: S, the R branch's state vectors per stream.
        recurrent_block_size: the R branch's block: its state is updated after every block of
            this many positions of a segment.
        recurrent_gate: the R branch's state update, "fixed" or "lstm"
            (`par_xl.layers.block_recurrent`).

    Call arguments:
        inputs: `(B, T, D)`.
        memory: `(B, M, D)` or `None`; only the branches that attend read it.
        position_encoding: `(K, D)`.
        mask: `(B, T, K)` boolean (B may be 1).
        knn_state: the block's kNN store (`KNNState` of B rows, N heads, C slots, size H, or a
            `KNNMemory`) if it `remembers`, else `None`.
        training: enables dropout and Gumbel noise.
        document_starts: `None`, or `(B, T)` 0/1; the M branch's store and the L or R branch's
            state forget at a start.
        recurrent_state: the block's recurrent state (of its letter with a `recurrent_state`
            in the registry: L's `LeapState` or R's `BlockRecurrentState` of B rows) if it
            `recurs`, else `None`.

    Returns:
        `(B, T, D)`; a block that `remembers` or `recurs` returns `(output (B, T, D),
        knn_state, recurrent_state)` with the one(s) it keeps, after the call: `(output,
        knn_state)`, `(output, recurrent_state)` or all three.
    """

    def __init__(
        self,
        num_heads,
        head_size,
        inner_size,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        choices=DEFAULT_CHOICES,
        choice=None,
        search="all_branches",
        tau=1.0,
        straight_through=False,
        tau_is_trainable=False,
        choice_at_inference="expected",
        seed=None,
        kernel_initializer=None,
        knn_neighbors=32,
        knn_memory_size=2048,
        window=None,
        position="xl",
        ffn_activation="swiglu",
        recurrent_states=16,
        recurrent_block_size=16,
        recurrent_gate="fixed",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if choice is not None:
            validate_architecture(choice, 1, name="choice")
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be a positive integer or None, received {window!r}.")
        self.num_heads = num_heads
        self.head_size = head_size
        self.inner_size = inner_size
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.choices = validate_choices(choices)
        self.choice = choice
        self.search = validate_search(search)
        self.tau = tau
        self.straight_through = straight_through
        self.tau_is_trainable = tau_is_trainable
        self.choice_at_inference = choice_at_inference
        self.seed = seed
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )
        self.knn_neighbors = knn_neighbors
        self.knn_memory_size = knn_memory_size
        self.window = window
        self.window_length = window  # `window`, or the segment length once built
        self.position = validate_position(position, head_size)
        self.ffn_activation = validate_ffn_activation(ffn_activation)
        self.recurrent_states = recurrent_states
        self.recurrent_block_size = recurrent_block_size
        self.recurrent_gate = recurrent_gate
        recurrent = [c for c in self.offered if CHOICES[c].recurrent_state is not None]
        if len(recurrent) > 1:
            raise ValueError(
                f"A block may offer one letter with a recurrent state, received "
                f"{''.join(recurrent)!r} in {self.offered!r}."
            )
        self.residual_dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    @property
    def offered(self):
        """The letters the block may compute: its `choices` (supernet) or its fixed `choice`."""
        return self.choices if self.choice is None else self.choice

    @property
    def uses_attention(self):
        """Whether the block may attend, hence needs XL memory."""
        return any(CHOICES[letter].attends for letter in self.offered)

    @property
    def remembers(self):
        """Whether the block may search and fill a kNN store, hence keeps one."""
        return any(CHOICES[letter].remembers for letter in self.offered)

    @property
    def recurs(self):
        """Whether the block may carry a recurrent state of its own (L's or R's), hence keeps
        one."""
        return any(CHOICES[letter].recurrent_state is not None for letter in self.offered)

    def empty_recurrent_state(self, batch_size):
        """The state of its recurrent letter in an empty stream, of `batch_size` rows (see
        `Choice.recurrent_state`); `None` if the block does not `recurs`."""
        for letter in self.offered:
            if CHOICES[letter].recurrent_state is not None:
                return CHOICES[letter].recurrent_state(self, batch_size)
        return None

    def build(self, inputs_shape, *args, **kwargs):
        if self.window is None and "W" in self.offered and inputs_shape[1] is None:
            raise ValueError(
                "window=None (the segment length) needs a static segment length, received "
                f"inputs of shape {tuple(inputs_shape)}: give the window."
            )
        self.window_length = self.window or inputs_shape[1]
        # In registry order, whatever the order of `choices`: the weights' order is fixed.
        for letter, choice in CHOICES.items():
            if letter in self.offered:
                for name, make in choice.sublayers.items():
                    sublayer = make(self, name)
                    setattr(self, name, sublayer)
                    sublayer.build(inputs_shape)
        if self.choice is None:
            self.gumbel = GumbelChoice(
                len(self.choices),
                tau=self.tau,
                straight_through=self.straight_through,
                tau_is_trainable=self.tau_is_trainable,
                choice_at_inference=self.choice_at_inference,
                seed=self.seed,
                name="gumbel",
                dtype=self.dtype_policy,
            )
            self.gumbel.build()
        self.built = True

    def call(
        self,
        inputs,
        memory,
        position_encoding,
        mask,
        knn_state=None,
        training=None,
        document_starts=None,
        recurrent_state=None,
    ):
        passed = _forgotten_at_starts(recurrent_state, document_starts)

        def branch(letter):
            apply = CHOICES[letter].apply
            own = recurrent_state if CHOICES[letter].recurrent_state is not None else passed
            arguments = (memory, position_encoding, mask, training, knn_state, document_starts,
                         own)  # fmt: skip
            return lambda: apply(self, inputs, *arguments)

        if self.choice is not None:
            output, knn_state, recurrent_state = branch(self.choice)()
        else:
            output, knn_state, recurrent_state = self._search(
                inputs, branch, knn_state, recurrent_state, training
            )
        kept = [state for state, keeps in ((knn_state, self.remembers),
                                           (recurrent_state, self.recurs)) if keeps]  # fmt: skip
        return (output, *kept) if kept else output

    def _search(self, inputs, branch, knn_state, recurrent_state, training):
        """The supernet's `(output, knn_state, recurrent_state)`: one branch or every branch
        (see the class)."""
        branches = [branch(letter) for letter in self.choices]  # the choice logits' order
        one_branch = (
            self.search == "single_path" if training else self.choice_at_inference == "argmax"
        )
        if one_branch:
            index, gate = self.gumbel.single_choice(training)
            output, store, recurrent_state = self._switch(index, branches, knn_state)
            return output * gate, store, recurrent_state
        weights = self.gumbel(inputs, training=training)[:, None, None, :]  # (B, 1, 1, C)
        output, new_store, new_recurrent = 0.0, knn_state, recurrent_state
        for k, (letter, run) in enumerate(zip(self.choices, branches)):
            transformed, store, recurrent = run()
            output = output + weights[..., k] * transformed
            if CHOICES[letter].remembers:  # at most one letter: its store is the block's
                new_store = store
            if CHOICES[letter].recurrent_state is not None:  # at most one letter, too
                new_recurrent = recurrent
        return output, new_store, new_recurrent

    def _switch(self, index, branches, knn_state=None):
        """`branches[index]()`, `(output, knn_state, recurrent_state)`, computing only that
        branch.

        The dropout layers' seed states go through the switch as explicit inputs and outputs:
        a branch that draws noise advances them inside it, which the JAX backend's stateless
        tracing cannot carry out of a `lax.switch` otherwise (a leaked tracer). The kNN store
        and the recurrent state go through it if the block keeps them (every branch returns
        them with the same structure); the others as `None`, outside it (a switch cannot
        return `None`). A `KNNMemory` object (ScaNN's, filled in place) is no tensor either:
        it stays outside, returned as given (`knn_state`).
        """
        states = [
            layer.seed_generator.state
            for layer in self._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Dropout) and hasattr(layer, "seed_generator")
        ]
        values = [ops.convert_to_tensor(state) for state in states]

        in_place = isinstance(knn_state, KNNMemory)
        # output, knn_state, recurrent_state
        keeps = (True, self.remembers and not in_place, self.recurs)

        def threaded(branch):
            def run():
                for state, value in zip(states, values):
                    state.assign(value)
                result = [x for x, keep in zip(branch(), keeps) if keep]
                return result, [ops.convert_to_tensor(state) for state in states]

            return run

        result, values = ops.switch(index, [threaded(branch) for branch in branches])
        for state, value in zip(states, values):
            state.assign(value)
        kept = iter(result)
        output, store, recurrent_state = (next(kept) if keep else None for keep in keeps)
        return output, knn_state if in_place else store, recurrent_state

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            head_size=self.head_size,
            inner_size=self.inner_size,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            choice=self.choice,
            choices=self.choices,
            search=self.search,
            tau=self.tau,
            straight_through=self.straight_through,
            tau_is_trainable=self.tau_is_trainable,
            choice_at_inference=self.choice_at_inference,
            seed=self.seed,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            knn_neighbors=self.knn_neighbors,
            knn_memory_size=self.knn_memory_size,
            window=self.window,
            position=self.position,
            ffn_activation=self.ffn_activation,
            recurrent_states=self.recurrent_states,
            recurrent_block_size=self.recurrent_block_size,
            recurrent_gate=self.recurrent_gate,
        )
        return config


def _forgotten_at_starts(state, document_starts):
    """A recurrent state (a NamedTuple of `(B, ...)` arrays) with the rows where a document
    starts in `document_starts` `(B, T)` emptied (zeros, what `Choice.recurrent_state` gives an
    empty stream): what a branch that does not use the state passes on. `state` as given
    without starts."""
    if state is None or document_starts is None:
        return state
    rows = ops.any(ops.cast(document_starts, "int32") > 0, axis=1)  # (B,)

    def forget(x):
        where = ops.reshape(rows, (-1,) + (1,) * (len(x.shape) - 1))
        return ops.where(where, ops.zeros_like(x), x)

    return type(state)(*map(forget, state))
