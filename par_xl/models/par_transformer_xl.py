"""The PAR Transformer-XL language model: supernet and derived architectures.

The model carries a recurrent state from segment to segment, the XL memory, the kNN stores and
the recurrent states of blocks that offer L (LEAP's sums) or R (the block-recurrent cell's
state vectors):
`forward` is the stateless core (a segment and a `ModelState` in, hidden states and the new
state out); `call`, which `fit` runs, keeps the state in variables between batches
(`par_xl.models.state`: why variables, per replica, checkpointed). `derive` turns a supernet
into the fixed architecture it prefers (`par_xl.models.derivation`).

Document boundaries (`document_boundaries=True`, inputs `{"token_ids", "document_starts"}`): no
position attends across a document start, and a row's memory holds only the positions since its
last start, so its valid count is cut there: a stream's memory is cleared at each document start,
its kNN stores too (a query at or after a start retrieves nothing of earlier documents), and
LEAP's sums restart there, and the block-recurrent state starts again from its initial state.
"""

import math

import keras
import numpy as np
from keras import ops

from par_xl.distribution import replicas
from par_xl.layers.adaptive_softmax import AdaptiveSoftmax
from par_xl.layers.block_recurrent import validate_recurrent
from par_xl.layers.choices import (
    DEFAULT_CHOICES,
    in_registry_order,
    validate_architecture,
    validate_choices,
)
from par_xl.layers.initializers import default_initializer
from par_xl.layers.relative_attention import causal_memory_mask, sinusoid_positions
from par_xl.layers.stochastic_block import StochasticBlock
from par_xl.memory.backends import BACKENDS
from par_xl.models import derivation
from par_xl.models.metrics import LanguageModelMetrics
from par_xl.models.state import CarriedState, ModelState


def validate_shape(d_model, num_heads, num_layers, mem_len):
    """Raises ValueError, naming the argument first, for a shape the model cannot take."""
    if d_model % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}.")
    if d_model % 2:
        raise ValueError(f"d_model must be even (sinusoid encodings), received {d_model}.")
    if num_layers < 1:
        raise ValueError(f"num_layers must be positive, received {num_layers}.")
    if mem_len < 0:
        raise ValueError(f"mem_len must be >= 0, received {mem_len}.")


def validate_knn(num_layers, architecture, choices, knn_layers, knn_memory_size, knn_neighbors,
                 knn_backend):  # fmt: skip
    """Raises ValueError, naming the argument first, for kNN-memory settings that cannot work.

    `knn_layers` are the blocks that use memorizing attention ("M"): in a supernet they offer M
    in place of A (so `choices` must hold A, and no M, which would offer it everywhere); with a
    fixed `architecture` they must be its M blocks (or be left out: the letters say it).
    """
    if not all(isinstance(i, int) and 0 <= i < num_layers for i in knn_layers) or len(
        set(knn_layers)
    ) != len(knn_layers):
        raise ValueError(
            f"knn_layers must be distinct block indices in [0, {num_layers}), received "
            f"{list(knn_layers)}."
        )
    if architecture is not None:
        blocks = [i for i, letter in enumerate(architecture) if letter == "M"]
        if knn_layers and sorted(knn_layers) != blocks:
            raise ValueError(
                f"knn_layers={sorted(knn_layers)} must be the M blocks of "
                f"architecture={architecture!r}, {blocks}, or be left out (the architecture "
                "says which blocks use the kNN memory)."
            )
    elif knn_layers and "M" in choices:
        raise ValueError(
            f"knn_layers={sorted(knn_layers)} cannot be given with choices={choices!r}: an M in "
            "choices offers memorizing attention in every block already. Give one of them."
        )
    elif knn_layers and "A" not in choices:
        raise ValueError(
            f"knn_layers={sorted(knn_layers)} needs an A in choices={choices!r}: its blocks "
            "offer M (memorizing attention) in place of A."
        )
    for name, value in (("knn_neighbors", knn_neighbors), ("knn_memory_size", knn_memory_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, received {value!r}.")
    if knn_memory_size < knn_neighbors:
        raise ValueError(
            f"knn_memory_size must be at least knn_neighbors={knn_neighbors}, received "
            f"{knn_memory_size}."
        )
    if knn_backend not in BACKENDS:
        raise ValueError(f"knn_backend must be one of {BACKENDS}, received {knn_backend!r}.")


def _with_batch(x, batch):
    """`x` with its static batch size: tf.distribute's multi-step loop (steps_per_execution > 1)
    hands each replica `(None, T)` batches, but the model's shapes need B (the memory's)."""
    if x is None or batch is None or x.shape[0] is not None:
        return x
    return ops.reshape(x, (batch, *x.shape[1:]))


def _memory_length(state):
    """M of a `ModelState`: the length of its XL memory (0 without one)."""
    return next(iter(state.xl_memory.values())).shape[1] if state.xl_memory else 0


def _next_valid_length(valid_length, segment, mem_len, document_index):
    """`(B,)` int32 valid memory slots after a segment of `segment` tokens: one more per token
    up to M, or the positions since the row's last document start, if it has one."""
    new_length = valid_length + segment
    if document_index is not None:
        last = document_index[:, -1:]  # (B, 1)
        since_start = ops.sum(ops.cast(document_index == last, "int32"), axis=1)  # (B,)
        new_length = ops.where(last[:, 0] > 0, since_start, new_length)
    return ops.cast(ops.minimum(new_length, mem_len), "int32")


@keras.saving.register_keras_serializable(package="par_xl")
class PARTransformerXL(CarriedState, keras.Model):
    """Pay Attention when Required Transformer-XL (Mandava et al. 2020, arXiv 2009.04534).

    Embedding scaled by `sqrt(D)` -> dropout -> N `StochasticBlock`s with XL memory ->
    dropout -> `AdaptiveSoftmax`. The supernet (`architecture=None`) learns, per block, a
    Gumbel-softmax choice among `choices` (by default attention, feed-forward and identity,
    "AFI"; `par_xl.layers.choices`); `derive()` turns it into the fixed architecture it
    prefers (`choice_probabilities()`), e.g. `"AAFAFI"`.

    Args:
        vocab_size: V.
        d_model: D.
        num_heads: N; must divide D.
        d_ffn: inner width of feed-forward blocks.
        num_layers: number of blocks.
        mem_len: M, memory positions per block carried across calls (0 for none).
        dropout_rate: embedding, residual and feed-forward dropout.
        attention_dropout_rate: dropout on attention probabilities.
        cutoffs: adaptive-softmax cutoffs (ids ordered by frequency); empty for a plain softmax.
        proj_factor: adaptive-softmax width divisor per tail cluster.
        tail_capacities: per tail cluster, positions per batch scored sparsely by the loss
            (see `AdaptiveSoftmax`); `None` scores all. Speed only: the loss is exact anyway.
        tie_embeddings: use the adaptive softmax's tables as the input embedding.
        architecture: `None` for the supernet, else num_layers registry letters, e.g. "AAFAFI".
        choices: the letters every supernet block chooses among, in the order of its choice
            logits (2 or more distinct registry letters).
        search: how the supernet trains: "all_branches" (PAR: every branch, mixed per example)
            or "single_path" (one sampled branch per block and batch; see `StochasticBlock`).
        tau, straight_through, tau_is_trainable: Gumbel-softmax settings (see `GumbelChoice`).
        choice_at_inference: `"expected"` (every branch, mixed by the softmax of the choice
            logits) or `"argmax"` (only the preferred branch); `None` picks the one the search
            trains for: "expected" for all_branches, "argmax" for single_path.
        initializer_range: standard deviation of the normal weight initializer.
        document_boundaries: read `document_starts` from dict inputs and never attend across
            a document start (through the memory included); the kNN stores forget there too.
        seed: seed of the Gumbel noise generators.
        knn_layers: block indices that use memorizing attention (the "M" choice, with a kNN
            memory): in a supernet they offer M in place of A; with an `architecture`, its M
            letters say it (these must agree, or be left out). `choices` with an M offers it in
            every supernet block instead.
        knn_memory_size: C, the kNN store's entries per stream and head (at least k).
        knn_neighbors: k, the entries retrieved per query and head.
        knn_backend: the store evaluation and generation search: "exact" (the training
            store's exact search, any backend, XLA included), or "scann" (ScaNN on the host, for
            large stores: TensorFlow without XLA only). Training always uses the exact store.
        window: W, the predecessors a W block (sliding-window attention) sees; its cache is
            the block's XL memory, so M >= W gives every position exactly W. `None`: the
            segment length the model is built with.
        position: the position term of attention (A) and memorizing attention (M): "xl"
            (Transformer-XL's), "rotary" or "t5" (`par_xl.layers.positions`).
        ffn_activation: the gated feed-forward's (G): "swiglu", "geglu" (gated, inner width
            set for F's parameter count), "gelu" or "relu" (F's form).
        recurrent_states: S, the state vectors per stream of a block-recurrent block (R).
        recurrent_block_size: W: an R block updates its state after every W positions of a
            segment (T / W updates per segment, through which gradients flow; W >= T leaves
            the update's own weights without gradient: `par_xl.layers.block_recurrent`).
        recurrent_gate: an R block's state update: "fixed" (meliad's fixed:skip) or "lstm"
            (lstm:single).

    Call arguments:
        inputs: `(B, T)` int token ids, or a dict `{"token_ids": (B, T), "document_starts":
            (B, T) 0/1}` (what `load_dataset(..., document_starts=True)` yields; the starts are
            ignored unless `document_boundaries`); B must equal the batch size the model was
            built with when `mem_len > 0` (the state variables have that batch size).
        training: enables dropout and Gumbel noise.

    Returns:
        `(B, T, D)` final hidden states; `log_probs(hidden)` turns them into `(B, T, V)`
        log-probabilities, and `fit`/`evaluate` compute the adaptive-softmax loss from them.

    Example:
        >>> model = PARTransformerXL(vocab_size=100, d_model=16, num_heads=2, d_ffn=32,
        ...                          num_layers=2, mem_len=4, cutoffs=[20, 60])
        >>> model.compile(optimizer="adam")
        >>> model.fit(dataset_of_input_label_pairs, epochs=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        vocab_size,
        d_model=128,
        num_heads=4,
        d_ffn=512,
        num_layers=6,
        mem_len=16,
        dropout_rate=0.1,
        attention_dropout_rate=0.0,
        cutoffs=(),
        proj_factor=4,
        tail_capacities=None,
        tie_embeddings=False,
        architecture=None,
        choices=DEFAULT_CHOICES,
        search="all_branches",
        tau=1.0,
        straight_through=False,
        tau_is_trainable=False,
        choice_at_inference=None,
        initializer_range=0.02,
        document_boundaries=False,
        seed=None,
        knn_layers=(),
        knn_memory_size=2048,
        knn_neighbors=32,
        knn_backend="exact",
        window=None,
        position="xl",
        ffn_activation="swiglu",
        recurrent_states=16,
        recurrent_block_size=16,
        recurrent_gate="fixed",
        **kwargs,
    ):
        super().__init__(**kwargs)
        validate_shape(d_model, num_heads, num_layers, mem_len)
        validate_choices(choices)
        if architecture is not None:
            validate_architecture(architecture, num_layers)
        validate_knn(num_layers, architecture, choices, knn_layers, knn_memory_size,
                     knn_neighbors, knn_backend)  # fmt: skip
        validate_recurrent(recurrent_states, recurrent_block_size, recurrent_gate)
        knn_layers = sorted(knn_layers)
        if knn_backend == "scann" and keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"knn_backend='scann' needs the TensorFlow backend (ScaNN searches on the host, "
                f"outside jax.jit), received the {keras.backend.backend()} backend: use 'exact'."
            )
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_ffn = d_ffn
        self.num_layers = num_layers
        self.mem_len = mem_len
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.proj_factor = proj_factor
        self.tie_embeddings = tie_embeddings
        self.architecture = architecture
        self.choices = choices
        self.search = search
        self.tau = tau
        self.straight_through = straight_through
        self.tau_is_trainable = tau_is_trainable
        if choice_at_inference is None:
            choice_at_inference = "argmax" if search == "single_path" else "expected"
        self.choice_at_inference = choice_at_inference
        self.initializer_range = initializer_range
        self.document_boundaries = document_boundaries
        self.seed = seed
        self.knn_layers = knn_layers
        self.knn_memory_size = knn_memory_size
        self.knn_neighbors = knn_neighbors
        self.knn_backend = knn_backend
        self.window = window
        self.position = position
        self.ffn_activation = ffn_activation
        self.recurrent_states = recurrent_states
        self.recurrent_block_size = recurrent_block_size
        self.recurrent_gate = recurrent_gate

        initializer = default_initializer(initializer_range)
        self.output_layer = AdaptiveSoftmax(
            vocab_size,
            cutoffs=cutoffs,
            proj_factor=proj_factor,
            tail_capacities=tail_capacities,
            kernel_initializer=initializer,
            name="adaptive_softmax",
            dtype=self.dtype_policy,
        )
        self.cutoffs = self.output_layer.cutoffs
        self.embedding = None
        if not tie_embeddings:
            self.embedding = keras.layers.Embedding(
                vocab_size,
                d_model,
                embeddings_initializer=initializer,
                name="embedding",
                dtype=self.dtype_policy,
            )
        self.embedding_dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)
        self.output_dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)
        self.blocks = [
            StochasticBlock(
                num_heads,
                d_model // num_heads,
                d_ffn,
                dropout_rate=dropout_rate,
                attention_dropout_rate=attention_dropout_rate,
                choices=self._block_choices(i),
                choice=None if architecture is None else architecture[i],
                search=search,
                tau=tau,
                straight_through=straight_through,
                tau_is_trainable=tau_is_trainable,
                choice_at_inference=choice_at_inference,
                seed=None if seed is None else seed + i,
                kernel_initializer=initializer,
                knn_neighbors=knn_neighbors,
                knn_memory_size=knn_memory_size,
                window=window,
                position=position,
                ffn_activation=ffn_activation,
                recurrent_states=recurrent_states,
                recurrent_block_size=recurrent_block_size,
                recurrent_gate=recurrent_gate,
                name=f"block_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(num_layers)
        ]
        self.lm_metrics = LanguageModelMetrics()
        # The search's cost term in the training loss (`par_xl.cost.objective.CostObjective`),
        # set by the trainer; None: cross-entropy alone. Not part of the configuration.
        self.cost_objective = None
        # The state variables `call` carries (see the module docstring), set in build.
        self.xl_memory = {}  # {block name: (B, M, D)} per block in `memory_blocks`
        self.valid_length = None  # (B,) valid memory slots per row
        self.knn_store = {}  # {block name: KNNState of variables} per block in `knn_blocks`
        self.recurrent_state = {}  # {block name: its state, of variables} per `recurrent_blocks`
        self._knn_memories = {}  # batch size -> `inference_state`'s ScaNN stores

    def _block_choices(self, i):
        """The letters supernet block i chooses among: `choices`, with M in place of A in
        `knn_layers` (a fixed block's are its model's, for `choice_letters`)."""
        if self.architecture is None and i in self.knn_layers:
            return self.choices.replace("A", "M")
        return self.choices

    @property
    def memory_blocks(self):
        """Indices of the blocks that keep XL memory (those that may attend)."""
        return [i for i, block in enumerate(self.blocks) if block.uses_attention]

    @property
    def knn_blocks(self):
        """Indices of the blocks that keep a kNN store (those that may use memorizing
        attention, "M")."""
        return [i for i, block in enumerate(self.blocks) if block.remembers]

    @property
    def recurrent_blocks(self):
        """Indices of the blocks that keep a recurrent state of their own (those that may use
        LEAP attention, "L", or block-recurrent attention, "R")."""
        return [i for i, block in enumerate(self.blocks) if block.recurs]

    def build(self, inputs_shape):
        if isinstance(inputs_shape, dict):
            inputs_shape = inputs_shape["token_ids"]
        self._batch_shape = tuple(inputs_shape)
        batch, segment = inputs_shape[:2]
        hidden_shape = (batch, segment, self.d_model)
        if self.embedding is not None:
            self.embedding.build(inputs_shape)
        self.output_layer.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        if self.keeps_state and batch is not None:
            with keras.name_scope(self.name, caller=self):
                self._build_state_variables(batch)
        self.built = True

    def embed(self, ids):
        """Scaled input embedding: `(B, T)` ids -> `(B, T, D)`."""
        vectors = self.output_layer.embed(ids) if self.embedding is None else self.embedding(ids)
        return vectors * ops.cast(math.sqrt(self.d_model), vectors.dtype)

    def forward(self, inputs, state=None, training=None, document_starts=None, knn_memories=None):
        """Stateless core: one segment given the previous segments' state.

        Args:
            inputs: `(B, T)` ids.
            state: a `ModelState` (from `initial_state`, a previous `forward`, or `get_state`),
                any M; its `valid_length` may also be a scalar. `None`: no memory at all, the
                segment sees only itself (and empty kNN stores).
            training: enables dropout and Gumbel noise.
            document_starts: `None`, or `(B, T)` 0/1: position t starts a new document, which
                sees nothing before t (see the module docstring).
            knn_memories: `None`, or `{block name: KNNMemory}` (`inference_state`'s ScaNN
                stores): searched and filled in place instead of the state's stores.

        Returns:
            `(hidden (B, T, D), new_state)`: the new state keeps the last M block inputs of
            `[memory; segment]`, without gradients, a `(B,)` int32 valid length, and the kNN
            stores with the segment added (but those of `knn_memories`, updated in place); it
            is `None` when `state` is.
        """
        segment = inputs.shape[1]
        stateless = state is None
        if stateless:  # no memory at all, and empty kNN stores and recurrent states
            empty = self.initial_state(inputs.shape[0], 0)
            state = ModelState({}, 0, empty.knn, empty.recurrent)
        mem_len = _memory_length(state)
        hidden = self.embedding_dropout(self.embed(inputs), training=training)  # (B, T, D)
        positions = sinusoid_positions(mem_len + segment, self.d_model, self.compute_dtype)
        positions = self.embedding_dropout(positions, training=training)  # (K, D)
        document_index = None
        if document_starts is not None:
            document_index = ops.cumsum(ops.cast(document_starts, "int32"), axis=1)  # (B, T)
        mask = causal_memory_mask(segment, mem_len, state.valid_length, document_index)
        hidden, new_memory, new_knn, new_recurrent = self._run_blocks(
            hidden, state, positions, mask, training, document_starts, knn_memories or {}
        )
        hidden = self.output_dropout(hidden, training=training)
        if stateless:
            return hidden, None
        new_length = _next_valid_length(state.valid_length, segment, mem_len, document_index)
        new_length = ops.broadcast_to(new_length, ops.shape(inputs)[:1])  # (B,)
        return hidden, ModelState(new_memory, new_length, new_knn, new_recurrent)

    def _run_blocks(self, hidden, state, positions, mask, training, document_starts, memories):
        """The blocks over one segment: `(hidden (B, T, D), new XL memory, new kNN stores, new
        recurrent states)`.

        `positions` `(K, D)` and `mask` `(B, T, K)` cover the K = M + T keys; `memories` are
        `forward`'s `knn_memories`, searched and filled in place instead of the state's stores.
        """
        mem_len = _memory_length(state)
        new_memory, new_knn, new_recurrent = {}, {}, {}
        for block in self.blocks:
            block_memory = None
            if mem_len and block.uses_attention:
                block_memory = ops.cast(state.xl_memory[block.name], hidden.dtype)
                extended = ops.concatenate([block_memory, hidden], axis=1)  # (B, M + T, D)
                new_memory[block.name] = ops.stop_gradient(extended[:, -mem_len:])  # (B, M, D)
            carried = {}
            if block.remembers:  # a KNNMemory object of `memories` is updated in place
                carried["knn_state"] = memories.get(block.name, state.knn.get(block.name))
            if block.recurs:
                carried["recurrent_state"] = state.recurrent[block.name]
            if not carried:
                hidden = block(hidden, block_memory, positions, mask, training=training)
                continue
            hidden, *after = block(
                hidden, block_memory, positions, mask, training=training,
                document_starts=document_starts, **carried,
            )  # fmt: skip
            if block.remembers and block.name not in memories:
                new_knn[block.name] = after[0]
            if block.recurs:
                new_recurrent[block.name] = after[-1]
        return hidden, new_memory, new_knn, new_recurrent

    def split_inputs(self, inputs):
        """`(token_ids (B, T), document_starts (B, T) or None)` from `call`'s inputs: ids, or
        a dict whose starts count only with `document_boundaries`."""
        if not isinstance(inputs, dict):
            return inputs, None
        starts = inputs["document_starts"] if self.document_boundaries else None
        return inputs["token_ids"], starts

    def call(self, inputs, training=None):
        inputs, document_starts = self.split_inputs(inputs)
        built_batch = getattr(self, "_batch_shape", (None,))[0]
        inputs, document_starts = (_with_batch(x, built_batch) for x in (inputs, document_starts))
        if self.valid_length is None:
            if self.keeps_state:
                raise ValueError(
                    "This model carries state (mem_len > 0, or kNN memory) but has no state "
                    "variables: build it with a static batch size (e.g. call it on a batch), or "
                    "use `forward` with explicit state."
                )
            return self.forward(inputs, training=training, document_starts=document_starts)[0]
        batch = self.valid_length.shape[0]
        if inputs.shape[0] is not None and inputs.shape[0] != batch:
            raise ValueError(
                f"The state variables were built for batch size {batch} (per replica), received "
                f"inputs of shape {tuple(inputs.shape)}. Use `forward` with "
                "`initial_state(batch_size)` for other batch sizes."
            )
        hidden, new_state = self.forward(
            inputs, self._read_state_variables(), training, document_starts
        )
        self._assign_state_variables(new_state)
        return hidden

    def log_probs(self, hidden):
        """`(B, T, D)` hidden states -> `(B, T, V)` normalized log-probabilities."""
        return self.output_layer.log_probs(hidden)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean adaptive-softmax NLL of the labels `y` given the hidden states `y_pred`; in
        training, with the search's cost term when `cost_objective` is set."""
        token_nll = self.output_layer.loss(y_pred, _with_batch(y, y_pred.shape[0]))  # (B, T)
        self.lm_metrics.update_state(token_nll)
        loss = ops.mean(token_nll)
        if training and self.cost_objective is not None:
            cost = self.cost_objective.expected_cost(self)
            loss = ops.cast(self.cost_objective.loss(loss, cost, self.num_layers), loss.dtype)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return replicas.scale_loss(loss)  # the mean over this replica's rows, / replicas

    # Architecture search.

    @property
    def choice_layers(self):
        return [block.gumbel for block in self.blocks if block.choice is None]

    @property
    def architecture_variables(self):
        """What the search learns: each supernet block's choice logits (and its tau, when
        trainable); `par_xl.training.search_optimizer` gives them an optimizer of their own."""
        return [v for layer in self.choice_layers for v in layer.trainable_variables]

    def set_tau(self, value):
        """Sets the Gumbel-softmax temperature of every supernet block."""
        for choice in self.choice_layers:
            choice.tau.assign(value)

    @property
    def choice_letters(self):
        """The letters the blocks offer or hold, in registry order: the columns of
        `choice_probabilities` (by default "AFI", also for a derived model)."""
        return in_registry_order("".join(b.choices + (b.choice or "") for b in self.blocks))

    def choice_probabilities(self):
        """The search state: choice probabilities `(num_layers, C)` over `choice_letters`
        (0 for a letter a block does not offer, one-hot rows for fixed blocks) and the
        architecture they prefer, their argmax string."""
        letters = self.choice_letters
        probabilities = np.zeros((len(self.blocks), len(letters)), "float32")
        for row, block in zip(probabilities, self.blocks):
            if block.choice is None:
                columns = [letters.index(letter) for letter in block.choices]
                row[columns] = ops.convert_to_numpy(block.gumbel.probabilities())
            else:
                row[letters.index(block.choice)] = 1.0
        return probabilities, "".join(letters[i] for i in probabilities.argmax(axis=1))

    def derive(self, architecture=None):
        """The fixed-architecture model this supernet prefers (`derivation.derive`)."""
        return derivation.derive(self, architecture)

    def copy_weights_from(self, source):
        """This built model's weights from a built `source` of the same shape
        (`derivation.copy_weights`)."""
        derivation.copy_weights(source, self)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            num_heads=self.num_heads,
            d_ffn=self.d_ffn,
            num_layers=self.num_layers,
            mem_len=self.mem_len,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            cutoffs=list(self.cutoffs),
            proj_factor=self.proj_factor,
            tail_capacities=self.output_layer.tail_capacities,
            tie_embeddings=self.tie_embeddings,
            architecture=self.architecture,
            choices=self.choices,
            search=self.search,
            tau=self.tau,
            straight_through=self.straight_through,
            tau_is_trainable=self.tau_is_trainable,
            choice_at_inference=self.choice_at_inference,
            initializer_range=self.initializer_range,
            document_boundaries=self.document_boundaries,
            seed=self.seed,
            knn_layers=list(self.knn_layers),
            knn_memory_size=self.knn_memory_size,
            knn_neighbors=self.knn_neighbors,
            knn_backend=self.knn_backend,
            window=self.window,
            position=self.position,
            ffn_activation=self.ffn_activation,
            recurrent_states=self.recurrent_states,
            recurrent_block_size=self.recurrent_block_size,
            recurrent_gate=self.recurrent_gate,
        )
        return config
