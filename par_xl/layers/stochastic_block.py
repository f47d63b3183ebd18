"""A PAR block: attention, feed-forward or identity, chosen by Gumbel-softmax."""

import keras

from par_xl.layers.feed_forward import FeedForward
from par_xl.layers.gumbel_choice import GumbelChoice
from par_xl.layers.initializers import default_initializer
from par_xl.layers.relative_attention import RelativeAttention

CHOICES = "AFI"  # attention, feed-forward, identity: the order of the choice weights


def validate_architecture(architecture, num_layers, name="architecture"):
    """Checks that `architecture` is `num_layers` letters from CHOICES, one per block.

    Args:
        architecture: e.g. `"AAFAFI"`.
        num_layers: how many blocks it describes.
        name: the argument (or flag) named in the error message.

    Returns:
        `architecture`, unchanged.

    Raises:
        ValueError: "<name> must be ...", saying what was expected and what was received.
    """
    if len(architecture) != num_layers or set(architecture) - set(CHOICES):
        letters = "letter" if num_layers == 1 else "letters"
        raise ValueError(
            f"{name} must be {num_layers} {letters} from {', '.join(CHOICES)} (one per layer), "
            f"received {architecture!r}."
        )
    return architecture


@keras.saving.register_keras_serializable(package="par_xl")
class StochasticBlock(keras.layers.Layer):
    """One layer of the PAR supernet (Mandava et al. 2020, arXiv 2009.04534).

    Branches, each post-norm as in Transformer-XL:
        A: LayerNorm(x + Dropout(RelativeAttention(x, memory)))
        F: LayerNorm(x + Dropout(FeedForward(x)))
        I: x
    The supernet block (`choice=None`) returns `sum_k w_k * branch_k` with per-example
    weights `w` from a `GumbelChoice`. A block built with a fixed `choice` ('A', 'F' or 'I')
    holds only that sublayer, so a derived architecture is a genuinely smaller model.

    Args:
        num_heads: N.
        head_size: H.
        inner_size: d_ffn of the feed-forward branch.
        dropout_rate: residual dropout rate (also inside the feed-forward branch).
        attention_dropout_rate: dropout rate on attention probabilities.
        choice: `None` for the supernet, or one of 'A', 'F', 'I'.
        tau, straight_through, tau_is_trainable, choice_at_inference, seed: see `GumbelChoice`.
        kernel_initializer: initializer of every projection.

    Call arguments:
        inputs: `(B, T, D)`.
        memory: `(B, M, D)` or `None`; only the attention branch reads it.
        position_encoding: `(K, D)`.
        mask: `(T, K)` boolean.
        training: enables dropout and Gumbel noise.

    Returns:
        `(B, T, D)`.
    """

    def __init__(
        self,
        num_heads,
        head_size,
        inner_size,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        choice=None,
        tau=1.0,
        straight_through=False,
        tau_is_trainable=False,
        choice_at_inference="expected",
        seed=None,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if choice is not None:
            validate_architecture(choice, 1, name="choice")
        self.num_heads = num_heads
        self.head_size = head_size
        self.inner_size = inner_size
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.choice = choice
        self.tau = tau
        self.straight_through = straight_through
        self.tau_is_trainable = tau_is_trainable
        self.choice_at_inference = choice_at_inference
        self.seed = seed
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or default_initializer()
        )
        self.residual_dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    @property
    def uses_attention(self):
        """Whether the block may attend, hence needs memory."""
        return self.choice in (None, "A")

    def build(self, inputs_shape, *args, **kwargs):
        common = dict(dtype=self.dtype_policy, kernel_initializer=self.kernel_initializer)
        norm = dict(epsilon=1e-5, dtype=self.dtype_policy)
        if self.choice in (None, "A"):
            self.attention = RelativeAttention(
                self.num_heads,
                self.head_size,
                attention_dropout_rate=self.attention_dropout_rate,
                name="attention",
                **common,
            )
            self.attention.build(inputs_shape)
            self.attention_norm = keras.layers.LayerNormalization(name="attention_norm", **norm)
            self.attention_norm.build(inputs_shape)
        if self.choice in (None, "F"):
            self.feed_forward = FeedForward(
                self.inner_size, dropout_rate=self.dropout_rate, name="feed_forward", **common
            )
            self.feed_forward.build(inputs_shape)
            self.feed_forward_norm = keras.layers.LayerNormalization(
                name="feed_forward_norm", **norm
            )
            self.feed_forward_norm.build(inputs_shape)
        if self.choice is None:
            self.gumbel = GumbelChoice(
                len(CHOICES),
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

    def _attention_branch(self, inputs, memory, position_encoding, mask, training):
        attended = self.attention(inputs, memory, position_encoding, mask, training=training)
        return self.attention_norm(inputs + self.residual_dropout(attended, training=training))

    def _feed_forward_branch(self, inputs, training):
        transformed = self.feed_forward(inputs, training=training)
        return self.feed_forward_norm(
            inputs + self.residual_dropout(transformed, training=training)
        )

    def call(self, inputs, memory, position_encoding, mask, training=None):
        if self.choice == "A":
            return self._attention_branch(inputs, memory, position_encoding, mask, training)
        if self.choice == "F":
            return self._feed_forward_branch(inputs, training)
        if self.choice == "I":
            return inputs
        weights = self.gumbel(inputs, training=training)[:, None, None, :]  # (B, 1, 1, 3)
        attention = self._attention_branch(inputs, memory, position_encoding, mask, training)
        feed_forward = self._feed_forward_branch(inputs, training)
        return (
            weights[..., 0] * attention + weights[..., 1] * feed_forward + weights[..., 2] * inputs
        )

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
            tau=self.tau,
            straight_through=self.straight_through,
            tau_is_trainable=self.tau_is_trainable,
            choice_at_inference=self.choice_at_inference,
            seed=self.seed,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
