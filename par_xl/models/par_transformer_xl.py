"""The PAR Transformer-XL language model: supernet and derived architectures.

How the XL memory is carried
----------------------------
`model.fit` over context-batched data must give every batch the memory of the previous one,
under `jit_compile=True` and on the JAX backend. The memory is therefore model state: one
non-trainable variable `(B, M, D)` per attention-capable block plus a per-row count of valid
slots, `valid_memory_length` `(B,)`, created in `build` from the (static) batch size of the data.
`call` reads them, runs the segment, and assigns the new memory, exactly like a
BatchNormalization layer updates its moving statistics: TensorFlow assigns the variables
inside the compiled step, JAX's stateless training loop returns them as updated non-trainable
state. The memory is written through `stop_gradient`, so it never receives gradients. Other
designs fail one of the three requirements: Python-side caches do not survive
`tf.function`/`jax.jit`, and passing memory as model inputs/outputs does not fit `fit`'s
`(inputs, labels)` data contract.

`forward` is the stateless core (memory in, memory out) that `call` wraps; generation and
tests use it directly with any batch size and memory size M.

Several devices: each replica of a tf.distribute strategy trains on fixed rows of every batch,
so the memory is per-stream state kept per replica (`par_xl.replicas`: ON_READ variables with
no aggregation, built for the replica's rows), never averaged or broadcast; `get_memory` /
`set_memory` and checkpoints see all B streams, as one device holds them.

The memory is right-aligned and masked: after `reset_memory()` no slot is valid, so the first
segment attends to nothing but itself, exactly as with no memory at all; each segment makes
`min(M, seen)` slots valid, counted per row (stream). Memory of block l is its *input* in the
previous segment (Transformer-XL), so only blocks that can attend keep one.

Document boundaries (`document_boundaries=True`, inputs `{"token_ids", "document_starts"}`): no
position attends across a document start, and a row's memory holds only the positions since its
last start, so its valid count is cut there: a stream's memory is cleared at each document start.
"""

import math

import keras
import numpy as np
from keras import ops

from par_xl import replicas
from par_xl.layers.adaptive_softmax import AdaptiveSoftmax
from par_xl.layers.initializers import default_initializer
from par_xl.layers.relative_attention import causal_memory_mask, sinusoid_positions
from par_xl.layers.stochastic_block import CHOICES, StochasticBlock, validate_architecture
from par_xl.metrics import LanguageModelMetrics


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
    Gumbel-softmax choice among attention, feed-forward and identity; `derive()` turns it
    into the fixed architecture it prefers (`choice_probabilities()`), e.g. `"AAFAFI"`.

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
        architecture: `None` for the supernet, else a string over "AFI" of length num_layers.
        search: how the supernet trains: "all_branches" (PAR: every branch, mixed per example)
            or "single_path" (one sampled branch per block and batch; see `StochasticBlock`).
        tau, straight_through, tau_is_trainable: Gumbel-softmax settings (see `GumbelChoice`).
        choice_at_inference: `"expected"` (every branch, mixed by the softmax of the choice
            logits) or `"argmax"` (only the preferred branch); `None` picks the one the search
            trains for: "expected" for all_branches, "argmax" for single_path.
        initializer_range: standard deviation of the normal weight initializer.
        document_boundaries: read `document_starts` from dict inputs and never attend across
            a document start (through the memory included).
        seed: seed of the Gumbel noise generators.

    Call arguments:
        inputs: `(B, T)` int token ids, or a dict `{"token_ids": (B, T), "document_starts":
            (B, T) 0/1}` (what `load_dataset(..., document_starts=True)` yields; the starts are
            ignored unless `document_boundaries`); B must equal the batch size the model was
            built with when `mem_len > 0` (the memory state has that batch size).
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
        search="all_branches",
        tau=1.0,
        straight_through=False,
        tau_is_trainable=False,
        choice_at_inference=None,
        initializer_range=0.02,
        document_boundaries=False,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        validate_shape(d_model, num_heads, num_layers, mem_len)
        if architecture is not None:
            validate_architecture(architecture, num_layers)
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
                choice=None if architecture is None else architecture[i],
                search=search,
                tau=tau,
                straight_through=straight_through,
                tau_is_trainable=tau_is_trainable,
                choice_at_inference=choice_at_inference,
                seed=None if seed is None else seed + i,
                kernel_initializer=initializer,
                name=f"block_{i}",
                dtype=self.dtype_policy,
            )
            for i in range(num_layers)
        ]
        self.lm_metrics = LanguageModelMetrics()
        self.memory = []  # per attention-capable block, (B, M, D), set in build
        self.valid_memory_length = None  # (B,) valid slots per row, set in build

    @property
    def memory_blocks(self):
        """Indices of the blocks that keep memory (those that may attend)."""
        return [i for i, block in enumerate(self.blocks) if block.uses_attention]

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
        if self.mem_len and self.memory_blocks and batch is not None:
            # Per-stream state: one component per replica under tf.distribute (see
            # `par_xl.replicas`), an ordinary variable otherwise.
            with keras.name_scope(self.name, caller=self):
                self.memory = [
                    replicas.stream_variable(
                        f"memory_{i}", (batch, self.mem_len, self.d_model), self.variable_dtype
                    )
                    for i in self.memory_blocks
                ]
                self.valid_memory_length = replicas.stream_variable(
                    "valid_memory_length", (batch,), "int32"
                )
        self.built = True

    def embed(self, ids):
        """Scaled input embedding: `(B, T)` ids -> `(B, T, D)`."""
        vectors = self.output_layer.embed(ids) if self.embedding is None else self.embedding(ids)
        return vectors * ops.cast(math.sqrt(self.d_model), vectors.dtype)

    def initial_memory(self, batch_size, mem_len=None):
        """Empty memory for `forward`: a list of `(B, M, D)` zeros and a valid length of 0."""
        mem_len = self.mem_len if mem_len is None else mem_len
        if not (mem_len and self.memory_blocks):
            return None, 0
        shape = (batch_size, mem_len, self.d_model)
        return [ops.zeros(shape, self.compute_dtype) for _ in self.memory_blocks], 0

    def forward(
        self, inputs, memory=None, valid_memory_length=0, training=None, document_starts=None
    ):
        """Stateless core: one segment given the previous segments' memory.

        Args:
            inputs: `(B, T)` ids.
            memory: `None`, or one `(B, M, D)` tensor per block in `memory_blocks`; any M.
            valid_memory_length: how many trailing memory slots hold real states, <= M: a scalar,
                or `(B,)` per row.
            training: enables dropout and Gumbel noise.
            document_starts: `None`, or `(B, T)` 0/1: position t starts a new document, which
                sees nothing before t (see the module docstring).

        Returns:
            `(hidden (B, T, D), new_memory, new_valid_memory_length)`; the new memory keeps
            the last M block inputs of `[memory; segment]`, without gradients.
        """
        segment = inputs.shape[1]
        mem_len = memory[0].shape[1] if memory else 0
        hidden = self.embedding_dropout(self.embed(inputs), training=training)  # (B, T, D)
        positions = sinusoid_positions(mem_len + segment, self.d_model, self.compute_dtype)
        positions = self.embedding_dropout(positions, training=training)  # (K, D)
        document_index = None
        if document_starts is not None:
            document_index = ops.cumsum(ops.cast(document_starts, "int32"), axis=1)  # (B, T)
        mask = causal_memory_mask(
            segment, mem_len, valid_memory_length, document_index
        )  # (B, T, K)
        memory_iter = iter(memory or [])
        new_memory = []
        for block in self.blocks:
            block_memory = next(memory_iter) if block.uses_attention and mem_len else None
            if block_memory is not None:
                block_memory = ops.cast(block_memory, hidden.dtype)
                extended = ops.concatenate([block_memory, hidden], axis=1)  # (B, M + T, D)
                new_memory.append(ops.stop_gradient(extended[:, -mem_len:]))  # (B, M, D)
            hidden = block(hidden, block_memory, positions, mask, training=training)
        hidden = self.output_dropout(hidden, training=training)
        if not mem_len:
            return hidden, None, 0
        new_length = valid_memory_length + segment
        if document_index is not None:  # positions since the row's last start, if it has one
            last = document_index[:, -1:]  # (B, 1)
            since_start = ops.sum(ops.cast(document_index == last, "int32"), axis=1)  # (B,)
            new_length = ops.where(last[:, 0] > 0, since_start, new_length)
        return hidden, new_memory, ops.minimum(new_length, mem_len)

    def call(self, inputs, training=None):
        document_starts = None
        if isinstance(inputs, dict):
            if self.document_boundaries:
                document_starts = inputs["document_starts"]
            inputs = inputs["token_ids"]
        built_batch = getattr(self, "_batch_shape", (None,))[0]
        inputs, document_starts = (_with_batch(x, built_batch) for x in (inputs, document_starts))
        if not self.memory:
            if self.mem_len and self.memory_blocks:
                raise ValueError(
                    "This model has mem_len > 0 but no memory state: build it with a static "
                    "batch size (e.g. call it on a batch), or use `forward` with explicit memory."
                )
            return self.forward(inputs, training=training, document_starts=document_starts)[0]
        batch = self.memory[0].shape[0]
        if inputs.shape[0] is not None and inputs.shape[0] != batch:
            raise ValueError(
                f"The memory state was built for batch size {batch} (per replica), received "
                f"inputs of shape {tuple(inputs.shape)}. Use `forward` with "
                "`initial_memory(batch_size)` for other batch sizes."
            )
        memory = [ops.stop_gradient(v) for v in self.memory]
        hidden, new_memory, new_length = self.forward(
            inputs, memory, self.valid_memory_length, training, document_starts
        )
        for variable, value in zip(self.memory, new_memory):
            variable.assign(ops.cast(value, variable.dtype))
        self.valid_memory_length.assign(
            ops.cast(ops.broadcast_to(new_length, self.valid_memory_length.shape), "int32")
        )
        return hidden

    @property
    def memory_variables(self):
        """The memory state: `memory_i` `(B, M, D)` per block in `memory_blocks`, then
        `valid_memory_length` `(B,)`; empty without memory. Per replica under tf.distribute
        (B rows per replica): read and write it whole with `get_memory` / `set_memory`."""
        if self.valid_memory_length is None:
            return []
        return [*self.memory, self.valid_memory_length]

    def reset_memory(self):
        """Empties the memory state (start of an epoch, of an evaluation, of a new text)."""
        replicas.clear_streams(self.memory_variables)

    def get_memory(self):
        """The memory state as numpy arrays, in `memory_variables` order, with all streams:
        under tf.distribute the replicas' rows gathered in replica order, which is the memory
        one device would hold after the same global batches. A collective under a multi-worker
        strategy (every worker calls it)."""
        return replicas.read_streams(self.memory_variables)

    def set_memory(self, values):
        """Assigns arrays shaped as `get_memory` returns them; each replica takes its rows."""
        replicas.write_streams(self.memory_variables, values)

    def save_own_variables(self, store):
        # Keras's order (its `Layer.save_own_variables`), the memory state written as global
        # arrays (`get_memory`): a checkpoint restores under any number of replicas.
        memory = {id(v): value for v, value in zip(self.memory_variables, self.get_memory())}
        for i, variable in enumerate(self._own_variables()):
            store[f"{i}"] = memory.get(id(variable), variable)

    def load_own_variables(self, store):
        variables = self._own_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"{self.name} has {len(variables)} variables of its own (the memory state), the "
                f"saved weights {len(store.keys())}: another model configuration."
            )
        memory = {id(v) for v in self.memory_variables}
        for i, variable in enumerate(variables):
            if id(variable) not in memory:
                variable.assign(store[f"{i}"])
        index = {id(v): i for i, v in enumerate(variables)}
        self.set_memory([store[f"{index[id(v)]}"] for v in self.memory_variables])

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

    def choice_probabilities(self):
        """The search state: choice probabilities `(num_layers, 3)` over "AFI" (one-hot rows
        for fixed blocks) and the architecture they prefer, their argmax string."""
        rows = []
        for block in self.blocks:
            if block.choice is None:
                rows.append(ops.convert_to_numpy(block.gumbel.probabilities()))
            else:
                rows.append(np.eye(len(CHOICES))[CHOICES.index(block.choice)])
        probabilities = np.stack(rows).astype("float32")
        return probabilities, "".join(CHOICES[i] for i in probabilities.argmax(axis=1))

    def derive(self, architecture=None):
        """The fixed-architecture model this supernet prefers, with its trained weights.

        Each block keeps only its chosen sublayer, with the supernet's weights for it; the
        embedding and adaptive softmax are copied too. The result trains and serializes like
        any `PARTransformerXL`; its memory starts empty.
        """
        if not self.built:
            raise ValueError("derive() needs a built model: call it on a batch first.")
        architecture = architecture or self.choice_probabilities()[1]
        derived = self.__class__.from_config({**self.get_config(), "architecture": architecture})
        derived.build(self._batch_shape)
        if self.embedding is not None:
            derived.embedding.set_weights(self.embedding.get_weights())
        derived.output_layer.set_weights(self.output_layer.get_weights())
        sublayers = {
            "A": ("attention", "attention_norm"),
            "F": ("feed_forward", "feed_forward_norm"),
        }
        for source, target in zip(self.blocks, derived.blocks):
            for name in sublayers.get(target.choice, ()):
                getattr(target, name).set_weights(getattr(source, name).get_weights())
        return derived

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
            search=self.search,
            tau=self.tau,
            straight_through=self.straight_through,
            tau_is_trainable=self.tau_is_trainable,
            choice_at_inference=self.choice_at_inference,
            initializer_range=self.initializer_range,
            document_boundaries=self.document_boundaries,
            seed=self.seed,
        )
        return config
