"""Adaptive softmax over a frequency-ordered vocabulary (Grave et al. 2017, arXiv 1609.04309)."""

import keras
from keras import ops

from par_xl.layers.initializers import default_initializer


def validate_cutoffs(cutoffs, vocab_size):
    """Cutoffs must be strictly increasing integers in `(0, vocab_size)`."""
    cutoffs = [int(c) for c in cutoffs]
    if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])) or (
        cutoffs and not 0 < cutoffs[0] <= cutoffs[-1] < vocab_size
    ):
        raise ValueError(
            f"cutoffs must be strictly increasing and within (0, vocab_size={vocab_size}), "
            f"received {cutoffs}."
        )
    return cutoffs


@keras.saving.register_keras_serializable(package="par_xl")
class AdaptiveSoftmax(keras.layers.Layer):
    """Two-level softmax: a head over frequent tokens and clusters, tails of rare tokens.

    With cutoffs `c_1 < ... < c_C` the head scores tokens `[0, c_1)` plus one logit per tail
    cluster; tail cluster i scores tokens `[c_i, c_{i+1})` from the hidden state projected to
    `D // proj_factor**i` dimensions, so rare tokens cost less. `log p(w) = log p_head(w)` for
    head tokens and `log p_head(cluster i) + log p_i(w)` for tail tokens. With no cutoffs this
    is a plain softmax.

    The training loss (`loss`) computes each cluster's normalizer densely for every position,
    so all shapes are static under XLA, and never forms the full-vocabulary softmax;
    `log_probs` forms it, for evaluation and generation.

    Weights are stored as embedding tables, cluster i as `tail_embedding_i (n_i, d_i)` and
    `tail_projection_i (d_i, D)`: the output score of a token is `(h P_i^T) . E_i[w]`. `embed`
    uses the same tables as an adaptive input embedding (Baevski & Auli 2019), which is how
    the model ties input and output embeddings.

    Args:
        vocab_size: V; ids must be ordered by decreasing frequency for the clusters to pay.
        cutoffs: strictly increasing ids in `(0, V)`; empty for a plain softmax.
        proj_factor: width divisor per tail cluster.
        kernel_initializer: initializer of all tables and projections.

    Call arguments:
        inputs: `(..., D)` hidden states.

    Returns:
        `(..., V)` normalized log-probabilities (same as `log_probs`).
    """

    def __init__(self, vocab_size, cutoffs=(), proj_factor=4, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, received {vocab_size}.")
        if proj_factor < 1:
            raise ValueError(f"proj_factor must be >= 1, received {proj_factor}.")
        self.vocab_size = vocab_size
        self.cutoffs = validate_cutoffs(cutoffs, vocab_size)
        self.proj_factor = proj_factor
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )
        self.bounds = [0, *self.cutoffs, vocab_size]  # cluster i covers [bounds[i], bounds[i+1])

    @property
    def num_tails(self):
        return len(self.cutoffs)

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        self.width = width
        head_size = self.bounds[1]

        def weight(name, shape, initializer=None):
            return self.add_weight(
                name=name, shape=shape, initializer=initializer or self.kernel_initializer
            )

        self.head_embedding = weight("head_embedding", (head_size, width))  # (c_1, D)
        self.cluster_kernel = weight("cluster_kernel", (width, self.num_tails))  # (D, C)
        self.head_bias = weight("head_bias", (head_size + self.num_tails,), "zeros")
        self.tails = []
        for i in range(1, self.num_tails + 1):
            size = self.bounds[i + 1] - self.bounds[i]
            reduced = max(1, width // self.proj_factor**i)
            self.tails.append(
                (
                    weight(f"tail_embedding_{i}", (size, reduced)),  # (n_i, d_i)
                    weight(f"tail_projection_{i}", (reduced, width)),  # (d_i, D)
                    weight(f"tail_bias_{i}", (size,), "zeros"),  # (n_i,)
                )
            )
        self.built = True

    def _head_log_probs(self, hidden):
        logits = ops.concatenate(
            [
                ops.einsum("...d,vd->...v", hidden, self.head_embedding),  # (..., c_1)
                ops.matmul(hidden, self.cluster_kernel),  # (..., C)
            ],
            axis=-1,
        )
        return ops.log_softmax(ops.cast(logits + self.head_bias, "float32"), axis=-1)

    def _tail_log_probs(self, hidden, i):
        embedding, projection, bias = self.tails[i - 1]
        reduced = ops.einsum("...d,rd->...r", hidden, projection)  # (..., d_i)
        logits = ops.einsum("...r,vr->...v", reduced, embedding) + bias  # (..., n_i)
        return ops.log_softmax(ops.cast(logits, "float32"), axis=-1)

    def loss(self, hidden, labels):
        """Per-token negative log-likelihood `-log p(labels)`, `(...)`, float32.

        Args:
            hidden: `(..., D)`.
            labels: `(...)` integer ids in `[0, V)`.
        """
        labels = ops.cast(labels, "int32")
        head_size = self.bounds[1]
        cluster = ops.zeros_like(labels)  # 0 for head tokens, i for tail cluster i
        for i, low in enumerate(self.cutoffs, start=1):
            cluster = ops.where(labels >= low, i, cluster)
        head_target = ops.where(cluster == 0, labels, head_size + cluster - 1)
        head = self._head_log_probs(hidden)
        log_prob = ops.take_along_axis(head, head_target[..., None], axis=-1)[..., 0]
        for i in range(1, self.num_tails + 1):
            local = ops.clip(labels - self.bounds[i], 0, self.bounds[i + 1] - self.bounds[i] - 1)
            tail = self._tail_log_probs(hidden, i)
            picked = ops.take_along_axis(tail, local[..., None], axis=-1)[..., 0]
            log_prob = log_prob + ops.where(cluster == i, picked, 0.0)
        return -log_prob

    def log_probs(self, hidden):
        """Full normalized log-distribution over the vocabulary, `(..., V)`, float32."""
        head = self._head_log_probs(hidden)
        head_size = self.bounds[1]
        parts = [head[..., :head_size]]
        for i in range(1, self.num_tails + 1):
            cluster_log_prob = head[..., head_size + i - 1 : head_size + i]
            parts.append(cluster_log_prob + self._tail_log_probs(hidden, i))
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
        return vectors

    def compute_output_shape(self, inputs_shape):
        return (*inputs_shape[:-1], self.vocab_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            cutoffs=list(self.cutoffs),
            proj_factor=self.proj_factor,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
