"""Adaptive softmax over a frequency-ordered vocabulary (Grave et al. 2017, arXiv 1609.04309)."""

import keras
import numpy as np
from keras import ops

from par_xl.cutoffs import tail_width, validate_cutoffs
from par_xl.layers.initializers import default_initializer


@keras.saving.register_keras_serializable(package="par_xl")
class AdaptiveSoftmax(keras.layers.Layer):
    """Two-level softmax: a head over frequent tokens and clusters, tails of rare tokens.

    With cutoffs `c_1 < ... < c_C` the head scores tokens `[0, c_1)` plus one logit per tail
    cluster; tail cluster i scores tokens `[c_i, c_{i+1})` from the hidden state projected to
    `d_i = tail_width(D, proj_factor, i)` (`D // proj_factor**i`, at least 1) dimensions, so
    rare tokens cost less. `log p(w) = log p_head(w)` for head tokens and
    `log p_head(cluster i) + log p_i(w)` for tail tokens. With no cutoffs this is a plain
    softmax.

    The loss (`loss`) never forms the full-vocabulary softmax: the head is scored for every
    position, a tail cluster only for the positions whose label falls in it, up to
    `tail_capacities[i]` of them in a static slice (so XLA sees fixed shapes); a batch with more
    takes a dense branch that scores all positions, so the loss is exact either way. With no
    capacity every tail is scored densely. `log_probs` forms the full distribution, for
    evaluation and generation.

    Weights are stored as embedding tables, cluster i as `tail_embedding_i (n_i, d_i)` and
    `tail_projection_i (d_i, D)`: the output score of a token is `(h P_i^T) . E_i[w]`. `embed`
    uses the same tables as an adaptive input embedding (Baevski & Auli 2019), which is how
    the model ties input and output embeddings.

    Args:
        vocab_size: V; ids must be ordered by decreasing frequency for the clusters to pay.
        cutoffs: strictly increasing ids in `(0, V)`; empty for a plain softmax.
        proj_factor: width divisor per tail cluster.
        tail_capacities: per tail cluster, how many positions per call the loss scores
            sparsely (e.g. `par_xl.data.label_statistics.max_tail_labels_per_batch` of the
            training data); `None` scores every position.
        kernel_initializer: initializer of all tables and projections.

    `loss`, `log_probs`, `embed` and `call` compute in the weights' dtype (float32 under mixed
    precision, as an output layer should): the weights are never autocast; `embed` casts its
    vectors to the compute dtype at the end.

    Call arguments:
        inputs: `(..., D)` hidden states.

    Returns:
        `(..., V)` normalized log-probabilities (same as `log_probs`).
    """

    def __init__(
        self,
        vocab_size,
        cutoffs=(),
        proj_factor=4,
        tail_capacities=None,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, received {vocab_size}.")
        if proj_factor < 1:
            raise ValueError(f"proj_factor must be >= 1, received {proj_factor}.")
        self.vocab_size = vocab_size
        self.cutoffs = validate_cutoffs(cutoffs, vocab_size)
        self.proj_factor = proj_factor
        if tail_capacities is not None:
            tail_capacities = [int(c) for c in tail_capacities]
            if len(tail_capacities) != len(self.cutoffs) or min(tail_capacities, default=1) < 1:
                raise ValueError(
                    f"tail_capacities must hold one positive size per tail cluster "
                    f"({len(self.cutoffs)}), received {tail_capacities}."
                )
        self.tail_capacities = tail_capacities
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )
        self.bounds = [0, *self.cutoffs, vocab_size]  # cluster i covers [bounds[i], bounds[i+1])

    @property
    def num_tails(self):
        return len(self.cutoffs)

    def tail_slice_rows(self, i, rows):
        """How many of `rows` positions the loss scores tail cluster i on (1-based): its
        capacity, or all rows when it has none or they fit."""
        return min(self.tail_capacities[i - 1], rows) if self.tail_capacities else rows

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        self.width = width
        head_size = self.bounds[1]

        def weight(name, shape, initializer=None):
            # Never autocast: the tables are read in their own dtype, also inside `call` and
            # inside a mixed-precision model's call (the tied input embedding).
            return self.add_weight(
                name=name,
                shape=shape,
                initializer=initializer or self.kernel_initializer,
                autocast=False,
            )

        self.head_embedding = weight("head_embedding", (head_size, width))  # (c_1, D)
        self.cluster_kernel = weight("cluster_kernel", (width, self.num_tails))  # (D, C)
        self.head_bias = weight("head_bias", (head_size + self.num_tails,), "zeros")
        self.tails = []
        for i in range(1, self.num_tails + 1):
            size = self.bounds[i + 1] - self.bounds[i]
            reduced = tail_width(width, self.proj_factor, i)
            self.tails.append(
                (
                    weight(f"tail_embedding_{i}", (size, reduced)),  # (n_i, d_i)
                    weight(f"tail_projection_{i}", (reduced, width)),  # (d_i, D)
                    weight(f"tail_bias_{i}", (size,), "zeros"),  # (n_i,)
                )
            )
        self.built = True

    def _head_logits(self, hidden):
        return (
            ops.concatenate(
                [
                    ops.matmul(hidden, ops.transpose(self.head_embedding)),  # (..., c_1)
                    ops.matmul(hidden, self.cluster_kernel),  # (..., C)
                ],
                axis=-1,
            )
            + self.head_bias
        )

    def _tail_logits(self, hidden, i):
        embedding, projection, bias = self.tails[i - 1]
        reduced = ops.matmul(hidden, ops.transpose(projection))  # (..., d_i)
        return reduced, ops.matmul(reduced, ops.transpose(embedding)) + bias  # (..., n_i)

    def _tail_logits_one_product(self, hidden, i):
        """Tail cluster i's logits `(..., n_i)` with the bias inside the product,
        `[h P_i^T, 1] . [E_i, b_i]^T`: XLA on CPU turns a product with its bias add fused into
        a slow loop, which made `log_probs` twice as slow in generation's one-position steps."""
        embedding, projection, bias = self.tails[i - 1]
        reduced = ops.matmul(hidden, ops.transpose(projection))  # (..., d_i)
        ones = ops.ones_like(reduced[..., :1])
        table = ops.concatenate([embedding, bias[:, None]], axis=1)  # (n_i, d_i + 1)
        return ops.matmul(ops.concatenate([reduced, ones], axis=-1), ops.transpose(table))

    def _head_nll(self, hidden, target):
        """`-log p_head(target)` for `(P, D)` states and `(P,)` head ids."""
        logits = ops.cast(self._head_logits(hidden), "float32")  # (P, c_1 + C)
        rows = ops.concatenate([self.head_embedding, ops.transpose(self.cluster_kernel)], axis=0)
        picked = ops.sum(hidden * ops.take(rows, target, axis=0), axis=-1)
        picked = ops.cast(picked + ops.take(self.head_bias, target), "float32")  # (P,)
        return ops.logsumexp(logits, axis=-1) - picked

    def _tail_nll(self, hidden, local, i):
        """`-log p_i(local)` for `(R, D)` states and `(R,)` ids local to tail cluster i."""
        embedding, _, bias = self.tails[i - 1]
        reduced, logits = self._tail_logits(hidden, i)  # (R, d_i), (R, n_i)
        picked = ops.sum(reduced * ops.take(embedding, local, axis=0), axis=-1)
        picked = ops.cast(picked + ops.take(bias, local), "float32")  # (R,)
        return ops.logsumexp(ops.cast(logits, "float32"), axis=-1) - picked

    def _tail_loss(self, hidden, labels, i):
        """Tail cluster i's share of the NLL, `(P,)`, zero for tokens outside the cluster.

        With a capacity below P, only the rows whose label is in the cluster are scored:
        `top_k` on the membership puts them first, in a static `(capacity,)` slice. A batch
        with more members than that takes the dense branch, so the loss is always exact.
        """
        low, high = self.bounds[i], self.bounds[i + 1]
        member = ops.logical_and(labels >= low, labels < high)  # (P,)
        local = ops.clip(labels - low, 0, high - low - 1)
        rows = labels.shape[0]
        capacity = self.tail_slice_rows(i, rows)

        def dense():
            return ops.where(member, self._tail_nll(hidden, local, i), 0.0)

        if capacity == rows:
            return dense()

        _, index = ops.top_k(ops.cast(member, "float32"), k=capacity)  # members first
        nll = self._tail_nll(ops.take(hidden, index, axis=0), ops.take(local, index), i)
        nll = ops.where(ops.take(member, index), nll, 0.0)  # (capacity,)
        gathered = ops.scatter(index[:, None], nll, (rows,))
        fits = ops.sum(ops.cast(member, "int32")) <= capacity
        return ops.where(fits, gathered, ops.cond(fits, lambda: ops.zeros((rows,)), dense))

    def loss(self, hidden, labels):
        """Per-token negative log-likelihood `-log p(labels)`, `(...)`, float32.

        Args:
            hidden: `(..., D)`.
            labels: `(...)` integer ids in `[0, V)`.
        """
        shape = ops.shape(labels)  # tensors for symbolic sizes
        hidden = ops.reshape(ops.cast(hidden, self.variable_dtype), (-1, hidden.shape[-1]))
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))  # (P,)
        head_size = self.bounds[1]
        cluster = ops.zeros_like(labels)  # 0 for head tokens, i for tail cluster i
        for i, low in enumerate(self.cutoffs, start=1):
            cluster = ops.where(labels >= low, i, cluster)
        nll = self._head_nll(hidden, ops.where(cluster == 0, labels, head_size + cluster - 1))
        for i in range(1, self.num_tails + 1):
            nll = nll + self._tail_loss(hidden, labels, i)
        return ops.reshape(nll, shape)

    def log_probs(self, hidden):
        """Full normalized log-distribution over the vocabulary, `(..., V)`, float32."""
        hidden = ops.cast(hidden, self.variable_dtype)
        head = ops.log_softmax(ops.cast(self._head_logits(hidden), "float32"), axis=-1)
        head_size = self.bounds[1]
        parts = [head[..., :head_size]]
        for i in range(1, self.num_tails + 1):
            cluster_log_prob = head[..., head_size + i - 1 : head_size + i]
            tail_logits = ops.cast(self._tail_logits_one_product(hidden, i), "float32")
            parts.append(cluster_log_prob + ops.log_softmax(tail_logits, axis=-1))
        return ops.concatenate(parts, axis=-1)

    def call(self, inputs):
        return self.log_probs(inputs)

    def embed(self, ids):
        """Adaptive input embedding from the same tables: `(...)` ids -> `(..., D)`."""
        ids = ops.cast(ids, "int32")
        head_size = self.bounds[1]
        vectors = ops.take(self.head_embedding, ops.clip(ids, 0, head_size - 1), axis=0)
        vectors = ops.where((ids < head_size)[..., None], vectors, 0.0)
        for i in range(1, self.num_tails + 1):
            embedding, projection, _ = self.tails[i - 1]
            low, high = self.bounds[i], self.bounds[i + 1]
            local = ops.take(embedding, ops.clip(ids - low, 0, high - low - 1), axis=0)
            in_cluster = ops.logical_and(ids >= low, ids < high)[..., None]
            vectors = vectors + ops.where(in_cluster, ops.matmul(local, projection), 0.0)
        return ops.cast(vectors, self.compute_dtype)

    def initialize_biases(self, frequencies):
        """Sets the biases so that zero hidden states predict the unigram distribution.

        Head token i gets `log p(i)`, the logit of tail cluster c `log P(c)`, token i of
        cluster c `log p(i | c)`: the model starts at the unigram perplexity instead of
        relearning token frequencies through a small learning rate ("init the output bias to
        the data's distribution").

        Args:
            frequencies: `(V,)` counts or probabilities per id; zeros get a small floor.
        """
        probs = np.asarray(frequencies, "float64")
        if probs.shape != (self.vocab_size,) or probs.min() < 0 or not probs.sum() > 0:
            raise ValueError(
                f"frequencies must be {self.vocab_size} non-negative values with a positive "
                f"sum, received shape {probs.shape}."
            )
        probs = probs / probs.sum() + 1e-8
        probs /= probs.sum()
        head_size = self.bounds[1]
        masses = [probs[lo:hi].sum() for lo, hi in zip(self.bounds[1:-1], self.bounds[2:])]
        self.head_bias.assign(np.log(np.concatenate([probs[:head_size], masses])))
        for i, (_, _, bias) in enumerate(self.tails, start=1):
            low, high = self.bounds[i], self.bounds[i + 1]
            bias.assign(np.log(probs[low:high] / probs[low:high].sum()))

    def compute_output_shape(self, inputs_shape):
        return (*inputs_shape[:-1], self.vocab_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            cutoffs=list(self.cutoffs),
            proj_factor=self.proj_factor,
            tail_capacities=self.tail_capacities,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
