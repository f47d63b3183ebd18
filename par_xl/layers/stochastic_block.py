"""A PAR block: attention, feed-forward or identity, chosen by Gumbel-softmax."""

import keras
from keras import ops

from par_xl.layers.feed_forward import FeedForward
from par_xl.layers.gumbel_choice import GumbelChoice
from par_xl.layers.initializers import default_initializer
from par_xl.layers.relative_attention import RelativeAttention

CHOICES = "AFI"  # attention, feed-forward, identity: the order of the choice weights
# How a supernet block trains: every branch, mixed by per-example Gumbel-softmax weights (PAR),
# or one sampled branch per batch, the only one computed (GDAS).
SEARCHES = ("all_branches", "single_path")


def validate_search(search):
    """Checks that `search` is one of SEARCHES; returns it."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, received {search!r}.")
    return search


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
    The supernet block (`choice=None`) trains in one of two ways (`search`):
        "all_branches": `sum_k w_k * branch_k` with per-example weights `w` from a
            `GumbelChoice` (PAR); every branch is computed.
        "single_path": one branch per batch, sampled from the choice probabilities, is the
            only one computed; its output is scaled by a gate that is 1 in the forward pass and
            carries the gradient to the choice logits (`GumbelChoice.single_choice`, GDAS).
    At inference, `choice_at_inference="expected"` mixes every branch by the choice
    probabilities; `"argmax"` computes only the preferred branch.
    A block built with a fixed `choice` ('A', 'F' or 'I') holds only that sublayer, so a
    derived architecture is a genuinely smaller model.

    Args:
        num_heads: N.
        head_size: H.
        inner_size: d_ffn of the feed-forward branch.
        dropout_rate: residual dropout rate (also inside the feed-forward branch).
        attention_dropout_rate: dropout rate on attention probabilities.
        choice: `None` for the supernet, or one of 'A', 'F', 'I'.
        search: "all_branches" or "single_path" (supernet only).
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
        search="all_branches",
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
        self.search = validate_search(search)
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
        branches = [  # in CHOICES order
            lambda: self._attention_branch(inputs, memory, position_encoding, mask, training),
            lambda: self._feed_forward_branch(inputs, training),
            lambda: inputs,
        ]
        if self.choice is not None:
            return branches[CHOICES.index(self.choice)]()
        one_branch = (
            self.search == "single_path" if training else self.choice_at_inference == "argmax"
        )
        if one_branch:
            index, gate = self.gumbel.single_choice(training)
            return self._switch(index, branches) * gate
        weights = self.gumbel(inputs, training=training)[:, None, None, :]  # (B, 1, 1, 3)
        return sum(weights[..., k] * branch() for k, branch in enumerate(branches))

    def _switch(self, index, branches):
        """`branches[index]()`, computing only that branch.

        The dropout layers' seed states go through the switch as explicit inputs and outputs:
        a branch that draws noise advances them inside it, which the JAX backend's stateless
        tracing cannot carry out of a `lax.switch` otherwise (a leaked tracer).
        """
        states = [
            layer.seed_generator.state
            for layer in self._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Dropout) and hasattr(layer, "seed_generator")
        ]
        values = [ops.convert_to_tensor(state) for state in states]

        def threaded(branch):
            def run():
                for state, value in zip(states, values):
                    state.assign(value)
                return branch(), [ops.convert_to_tensor(state) for state in states]

            return run

        output, values = ops.switch(index, [threaded(branch) for branch in branches])
        for state, value in zip(states, values):
            state.assign(value)
        return output

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
            search=self.search,
            tau=self.tau,
            straight_through=self.straight_through,
            tau_is_trainable=self.tau_is_trainable,
            choice_at_inference=self.choice_at_inference,
            seed=self.seed,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
