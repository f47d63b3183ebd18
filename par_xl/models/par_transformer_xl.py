"""The PAR Transformer-XL language model: supernet and derived architectures.

The model state
---------------
The recurrent state is a `ModelState` (`par_xl.models.state`): the XL memory, `(B, M, D)` per
block that may attend, keyed by block name, its valid length per row, `(B,)`, and the kNN
store (`KNNState`, `par_xl.memory.exact_state`) of each block that may use memorizing
attention ("M", `knn_layers`): per row and head the keys and values of its last C positions,
searched for the k nearest of each query (Wu et al. 2022, arXiv 2203.08913). `forward`
is the stateless core: one segment and a state in, hidden states and the new state out, any
batch size and memory size M. Generation and evaluation carry the state themselves, as
tensors through their compiled loops.

`model.fit` over context-batched data must also give every batch the memory of the previous
one, under `jit_compile=True` and on the JAX backend. For it the state is also kept in
non-trainable variables, `memory_<i>` per block in `memory_blocks`, `valid_memory_length`,
and the kNN stores' `knn_{keys,values,position,length}_<i>` per block in `knn_blocks`, created
in `build` from the (static) batch size of the data; checkpoints hold them, so a resumed run
continues with the same stores. `call` reads them into a `ModelState`, calls `forward`, and
assigns the new state, exactly like a BatchNormalization layer updates its moving statistics:
TensorFlow assigns the variables inside the compiled step, JAX's stateless training loop
returns them as updated non-trainable state. The memory is written through `stop_gradient`, so
it never receives gradients. Other designs fail one of the three requirements: Python-side
caches do not survive `tf.function`/`jax.jit`, and passing the state as model inputs/outputs
does not fit `fit`'s `(inputs, labels)` data contract.

Several devices: each replica of a tf.distribute strategy trains on fixed rows of every batch,
so the state variables are per-stream state kept per replica (`par_xl.replicas`: ON_READ
variables with no aggregation, built for the replica's rows), never averaged or broadcast;
`get_state` / `set_state` and checkpoints see all B streams, as one device holds them.

The memory is right-aligned and masked: in an `initial_state` (or after `reset_state()`) no
slot is valid, so the first segment attends to nothing but itself, exactly as with no memory
at all; each segment makes `min(M, seen)` slots valid, counted per row (stream). Memory of
block l is its *input* in the previous segment (Transformer-XL), so only blocks that can
attend keep one.

kNN stores with `knn_backend="scann"`: training searches the exact store above (in the state
variables); evaluation and generation search a `ScannKNNMemory` per block instead
(`inference_state`), an object on the host that is not a tensor: it goes beside the state
(`forward(..., knn_memories=...)`), filled in place, in eager code or a `tf.function` without
XLA.

Document boundaries (`document_boundaries=True`, inputs `{"token_ids", "document_starts"}`): no
position attends across a document start, and a row's memory holds only the positions since its
last start, so its valid count is cut there: a stream's memory is cleared at each document start,
its kNN stores too (a query at or after a start retrieves nothing of earlier documents).
"""

import math

import keras
import numpy as np
from keras import ops

from par_xl import replicas
from par_xl.layers.adaptive_softmax import AdaptiveSoftmax
from par_xl.layers.choices import (
    CHOICES,
    DEFAULT_CHOICES,
    in_registry_order,
    validate_architecture,
    validate_choices,
)
from par_xl.layers.initializers import default_initializer
from par_xl.layers.relative_attention import causal_memory_mask, sinusoid_positions
from par_xl.layers.stochastic_block import StochasticBlock
from par_xl.memory import exact_state
from par_xl.memory.exact_state import KNNState
from par_xl.memory.knn_memory import BACKENDS, create_knn_memory
from par_xl.metrics import LanguageModelMetrics
from par_xl.models.state import ModelState


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


@keras.saving.register_keras_serializable(package="par_xl")
class PARTransformerXL(keras.Model):
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        validate_shape(d_model, num_heads, num_layers, mem_len)
        validate_choices(choices)
        if architecture is not None:
            validate_architecture(architecture, num_layers)
        validate_knn(num_layers, architecture, choices, knn_layers, knn_memory_size,
                     knn_neighbors, knn_backend)  # fmt: skip
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
                name=f"block_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(num_layers)
        ]
        self.lm_metrics = LanguageModelMetrics()
        # The state variables `call` carries (see the module docstring), set in build.
        self.xl_memory = {}  # {block name: (B, M, D)} per block in `memory_blocks`
        self.valid_length = None  # (B,) valid memory slots per row
        self.knn_store = {}  # {block name: KNNState of variables} per block in `knn_blocks`
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
            # Per-stream state: one component per replica under tf.distribute (see
            # `par_xl.replicas`), an ordinary variable otherwise. Created in this order, the
            # checkpoints' (the model's own variables); the kNN stores last, so that models
            # without them keep the layout they had before the stores existed.
            with keras.name_scope(self.name, caller=self):
                self.xl_memory = {
                    self.blocks[i].name: replicas.stream_variable(
                        f"memory_{i}", (batch, self.mem_len, self.d_model), self.variable_dtype
                    )
                    for i in (self.memory_blocks if self.mem_len else [])
                }
                self.valid_length = replicas.stream_variable(
                    "valid_memory_length", (batch,), "int32"
                )
                self.knn_store = {
                    self.blocks[i].name: self._knn_variables(i, batch) for i in self.knn_blocks
                }
        self.built = True

    @property
    def keeps_state(self):
        """Whether `call` carries state from batch to batch: an XL memory or a kNN store."""
        return bool(self.mem_len and self.memory_blocks or self.knn_blocks)

    def _knn_variables(self, i, batch):
        """Block i's kNN store as state variables: a `KNNState` of `knn_keys_<i>`,
        `knn_values_<i>` `(B, N, C, H)` in the compute dtype (what the layer computes in: no
        copy of the store per step), `knn_position_<i>`, `knn_length_<i>` `(B,)`."""
        store = (batch, self.num_heads, self.knn_memory_size, self.d_model // self.num_heads)
        return KNNState(
            *(replicas.stream_variable(f"knn_{name}_{i}", store, self.compute_dtype)
              for name in ("keys", "values")),
            *(replicas.stream_variable(f"knn_{name}_{i}", (batch,), "int32")
              for name in ("position", "length")),
        )  # fmt: skip

    def embed(self, ids):
        """Scaled input embedding: `(B, T)` ids -> `(B, T, D)`."""
        vectors = self.output_layer.embed(ids) if self.embedding is None else self.embedding(ids)
        return vectors * ops.cast(math.sqrt(self.d_model), vectors.dtype)

    def initial_state(self, batch_size, mem_len=None):
        """The empty state for `forward`: `(B, M, D)` zeros per block in `memory_blocks`
        (none if M is 0), no valid slot, and an empty exact kNN store per block in
        `knn_blocks` (`(B, N, C, H)` keys and values in the compute dtype).

        Args:
            batch_size: B.
            mem_len: M (default: the model's); any M works, as in Transformer-XL evaluation.
        """
        return self._empty_state(batch_size, mem_len, self._knn_sizes(batch_size))

    def inference_state(self, batch_size, mem_len=None):
        """What evaluation and generation start from: `(state, knn_memories)`.

        With `knn_backend="exact"`, `(initial_state(...), {})`. With "scann", the state has no
        kNN stores and `knn_memories` holds a `ScannKNNMemory` per block in `knn_blocks`,
        emptied, for `forward(..., knn_memories=...)`. The model keeps one set per batch size,
        so that a compiled function traces once for them (they are not tensors: they go beside
        the state, searched and filled in place, eager or in a `tf.function` without XLA).
        """
        if self.knn_backend == "exact":
            return self.initial_state(batch_size, mem_len), {}
        if batch_size not in self._knn_memories:
            self._knn_memories[batch_size] = {
                self.blocks[i].name: create_knn_memory(
                    self.knn_backend,
                    **self._knn_sizes(batch_size),
                    num_neighbors=self.knn_neighbors,
                )  # fmt: skip
                for i in self.knn_blocks
            }
        memories = self._knn_memories[batch_size]
        for memory in memories.values():
            memory.clear()
        return self._empty_state(batch_size, mem_len), memories

    def _knn_sizes(self, batch_size):
        """The kNN store's sizes, as `exact_state.empty_state` and `create_knn_memory` take
        them."""
        return dict(
            batch_size=batch_size,
            num_heads=self.num_heads,
            capacity=self.knn_memory_size,
            key_size=self.d_model // self.num_heads,
        )

    def _empty_state(self, batch_size, mem_len=None, knn_sizes=None):
        """An empty `ModelState`, with empty exact kNN stores of `knn_sizes` if given."""
        mem_len = self.mem_len if mem_len is None else mem_len
        shape = (batch_size, mem_len, self.d_model)
        xl_memory = {}
        if mem_len:
            xl_memory = {
                self.blocks[i].name: ops.zeros(shape, self.compute_dtype)
                for i in self.memory_blocks
            }
        knn = {}
        if knn_sizes is not None:
            knn = {
                self.blocks[i].name: exact_state.empty_state(**knn_sizes, dtype=self.compute_dtype)
                for i in self.knn_blocks
            }
        return ModelState(xl_memory, ops.zeros((batch_size,), "int32"), knn)

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
        xl_memory = {} if state is None else state.xl_memory
        valid_length = 0 if state is None else state.valid_length
        knn = self.initial_state(inputs.shape[0], 0).knn if state is None else state.knn
        knn_memories = knn_memories or {}
        mem_len = next(iter(xl_memory.values())).shape[1] if xl_memory else 0
        hidden = self.embedding_dropout(self.embed(inputs), training=training)  # (B, T, D)
        positions = sinusoid_positions(mem_len + segment, self.d_model, self.compute_dtype)
        positions = self.embedding_dropout(positions, training=training)  # (K, D)
        document_index = None
        if document_starts is not None:
            document_index = ops.cumsum(ops.cast(document_starts, "int32"), axis=1)  # (B, T)
        mask = causal_memory_mask(segment, mem_len, valid_length, document_index)  # (B, T, K)
        new_memory, new_knn = {}, {}
        for block in self.blocks:
            block_memory = None
            if mem_len and block.uses_attention:
                block_memory = ops.cast(xl_memory[block.name], hidden.dtype)
                extended = ops.concatenate([block_memory, hidden], axis=1)  # (B, M + T, D)
                new_memory[block.name] = ops.stop_gradient(extended[:, -mem_len:])  # (B, M, D)
            if block.name in knn_memories:  # a KNNMemory object: updated in place
                hidden, _ = block(
                    hidden, block_memory, positions, mask, knn_state=knn_memories[block.name],
                    training=training, document_starts=document_starts,
                )  # fmt: skip
            elif block.remembers:
                hidden, new_knn[block.name] = block(
                    hidden, block_memory, positions, mask, knn_state=knn[block.name],
                    training=training, document_starts=document_starts,
                )  # fmt: skip
            else:
                hidden = block(hidden, block_memory, positions, mask, training=training)
        hidden = self.output_dropout(hidden, training=training)
        if state is None:
            return hidden, None
        new_length = valid_length + segment
        if document_index is not None:  # positions since the row's last start, if it has one
            last = document_index[:, -1:]  # (B, 1)
            since_start = ops.sum(ops.cast(document_index == last, "int32"), axis=1)  # (B,)
            new_length = ops.where(last[:, 0] > 0, since_start, new_length)
        new_length = ops.cast(ops.minimum(new_length, mem_len), "int32")
        new_length = ops.broadcast_to(new_length, ops.shape(inputs)[:1])  # (B,)
        return hidden, ModelState(new_memory, new_length, new_knn)

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
        state = ModelState(
            {name: ops.stop_gradient(v) for name, v in self.xl_memory.items()},
            self.valid_length,
            {name: KNNState(*map(ops.stop_gradient, s)) for name, s in self.knn_store.items()},
        )
        hidden, new_state = self.forward(inputs, state, training, document_starts)
        for name, variable in self.xl_memory.items():
            variable.assign(ops.cast(new_state.xl_memory[name], variable.dtype))
        self.valid_length.assign(new_state.valid_length)
        for name, variables in self.knn_store.items():
            for variable, value in zip(variables, new_state.knn[name]):
                variable.assign(ops.cast(value, variable.dtype))
        return hidden

    @property
    def state_variables(self):
        """The state variables `call` carries: `memory_i` `(B, M, D)` per block in
        `memory_blocks`, `valid_memory_length` `(B,)`, then per block in `knn_blocks` its kNN
        store's `knn_keys_i`, `knn_values_i` `(B, N, C, H)`, `knn_position_i`, `knn_length_i`
        `(B,)`; empty without them. Per replica under tf.distribute (B rows per replica): read
        and write them whole with `get_state` / `set_state`."""
        if self.valid_length is None:
            return []
        stores = [variable for store in self.knn_store.values() for variable in store]
        return [*self.xl_memory.values(), self.valid_length, *stores]

    def reset_state(self):
        """Empties the state variables (start of an epoch, of a new text): the XL memory and
        the kNN stores."""
        replicas.clear_streams(self.state_variables)

    def get_state(self):
        """The state variables as a `ModelState` of numpy arrays with all streams (`None`
        without them): under tf.distribute the replicas' rows gathered in replica order,
        which is the state one device would hold after the same global batches. A collective
        under a multi-worker strategy (every worker calls it)."""
        if self.valid_length is None:
            return None
        values = replicas.read_streams(self.state_variables)
        memory, valid_length = values[: len(self.xl_memory)], values[len(self.xl_memory)]
        stores = values[len(self.xl_memory) + 1 :]
        knn = {name: KNNState(*stores[4 * i : 4 * i + 4]) for i, name in enumerate(self.knn_store)}
        return ModelState(dict(zip(self.xl_memory, memory)), valid_length, knn)

    def set_state(self, state):
        """Assigns a `ModelState` of arrays shaped as `get_state` returns them, all streams;
        each replica takes its rows."""
        memory = [state.xl_memory[name] for name in self.xl_memory]
        stores = [value for name in self.knn_store for value in state.knn[name]]
        replicas.write_streams(self.state_variables, [*memory, state.valid_length, *stores])

    def save_own_variables(self, store):
        # Keras's order (its `Layer.save_own_variables`), the state variables written as
        # global arrays (`get_state`): a checkpoint restores under any number of replicas.
        values = replicas.read_streams(self.state_variables)
        state = {id(v): value for v, value in zip(self.state_variables, values)}
        for i, variable in enumerate(self._own_variables()):
            store[f"{i}"] = state.get(id(variable), variable)

    def load_own_variables(self, store):
        variables = self._own_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{self.name} has {len(variables)} variables of its own (the state variables), "
                f"the saved weights {len(store.keys())}: another model configuration."
            )
        state = {id(v) for v in self.state_variables}
        for i, variable in enumerate(variables):
            if id(variable) not in state:
                variable.assign(store[f"{i}"])
        index = {id(v): i for i, v in enumerate(variables)}
        values = [store[f"{index[id(v)]}"] for v in self.state_variables]
        replicas.write_streams(self.state_variables, values)

    def _own_variables(self):
        # The variables Keras saves for this layer itself (not its sublayers'), in its order.
        return self._trainable_variables + self._non_trainable_variables

    def log_probs(self, hidden):
        """`(B, T, D)` hidden states -> `(B, T, V)` normalized log-probabilities."""
        return self.output_layer.log_probs(hidden)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean adaptive-softmax NLL of the labels `y` given the hidden states `y_pred`."""
        token_nll = self.output_layer.loss(y_pred, _with_batch(y, y_pred.shape[0]))  # (B, T)
        self.lm_metrics.update_state(token_nll)
        loss = ops.mean(token_nll)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return replicas.scale_loss(loss)  # the mean over this replica's rows, / replicas

    # Architecture search.

    @property
    def choice_layers(self):
        return [block.gumbel for block in self.blocks if block.choice is None]

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
        """The fixed-architecture model this supernet prefers, with its trained weights.

        Each block keeps only its chosen sublayers (`par_xl.layers.choices`), with the
        supernet's weights for them (an M block: its attention, gate and retrieval scale); the
        embedding and adaptive softmax are copied too. The result trains and serializes like
        any `PARTransformerXL`; its state (XL memory, kNN stores) starts empty.

        Args:
            architecture: one letter per block, each one the block offers (default: the
                argmax of `choice_probabilities()`).
        """
        if not self.built:
            raise ValueError("derive() needs a built model: call it on a batch first.")
        architecture = architecture or self.choice_probabilities()[1]
        validate_architecture(architecture, self.num_layers)
        for block, letter in zip(self.blocks, architecture):
            if letter not in block.offered:
                raise ValueError(
                    f"architecture={architecture!r}: {block.name} offers {block.offered!r}, "
                    f"not {letter!r}."
                )
        knn_layers = [i for i, letter in enumerate(architecture) if letter == "M"]
        config = {**self.get_config(), "architecture": architecture, "knn_layers": knn_layers}
        derived = self.__class__.from_config(config)
        derived.build(self._batch_shape)
        derived.copy_weights_from(self)
        return derived

    def copy_weights_from(self, source):
        """Sets this built model's weights from a built `source` of the same shape (vocabulary,
        widths, heads, blocks, cutoffs): the embedding, the adaptive softmax, and in each block
        the sublayers of every letter it offers (`par_xl.layers.choices`). A supernet's choice
        logits and the state (XL memory, kNN stores) are left as they are. This is how a
        derived architecture starts from its supernet (`derive`, `train.py --init_from`).

        Raises:
            ValueError: a block of `source` lacks a sublayer this one needs (it never offered
                that letter), or the shapes differ.
        """
        if len(source.blocks) != len(self.blocks):
            raise ValueError(
                f"the source has {len(source.blocks)} blocks, this model {len(self.blocks)}."
            )
        pairs = [(source.output_layer, self.output_layer)]
        if self.embedding is not None:
            pairs.append((source.embedding, self.embedding))
        for i, (block, target) in enumerate(zip(source.blocks, self.blocks)):
            for letter in target.offered:
                for name in CHOICES[letter].sublayers:
                    if not hasattr(block, name):
                        raise ValueError(
                            f"block_{i} of the source offers {block.offered!r}, so it has no "
                            f"{name} for this model's {letter!r} ({CHOICES[letter].name})."
                        )
                    pairs.append((getattr(block, name), getattr(target, name)))
        for layer, target in pairs:
            target.set_weights(layer.get_weights())

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
        )
        return config
