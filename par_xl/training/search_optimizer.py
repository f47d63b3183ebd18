"""The two optimizers of an architecture search: one for the weights, one for the choice logits.

PAR (arXiv 2009.04534), DARTS (1806.09055), GDAS and FBNet all give the architecture parameters
an optimizer of their own, with a learning rate about 100x the weights', and PAR keeps them
frozen while the weights warm up. `SearchOptimizer` is one Keras optimizer (what `fit`,
checkpoints and `--strategy` see) made of two:

    weights       every trainable variable but the choice logits (the run's `--opt_name`, with
                  its warm-up-cosine schedule);
    architecture  the choice logits (`model.architecture_variables`): `--arch_optimizer`,
                  `--arch_lr`, `--arch_beta_1`, `--arch_weight_decay`.

Which step updates what (s = the global step, 0 before the first batch):
    s < start_step   the weights only; the logits stay exactly as initialised.
    afterwards, with `arch_fraction` f = 0 (joint): both, on every batch.
    with f > 0 (first-order bilevel, as PAR and DARTS): a fraction f of the batches are
                  architecture batches, which update only the logits; the others update only
                  the weights. Batch s is an architecture batch when floor((s + 1 - start) f)
                  > floor((s - start) f): evenly spread, every 1/f-th batch for f = 1/k.
Every batch is still read by the forward pass in order, so the XL memory and the kNN stores
advance on all of them (context batching stays intact): an architecture batch is a slice of
the training stream the weights never fit, the held-out data the bilevel problem asks for,
interleaved rather than cut off so that no stream is broken.

Each inner optimizer counts its own updates (Adam's bias correction, the weights' schedule):
the trainer gives the weights' schedule the number of weight updates (`weight_steps`).
`iterations` is the global step. The state is the inner optimizers' variables after the
global step's, so checkpoints hold it and `--resume` continues exactly.

A conditional update differs by backend. TensorFlow on one device: `ops.cond` around the
inner `apply`. JAX, whose conditionals cannot assign state, and TensorFlow under a tf.distribute
strategy, where the inner update is a merge call that no conditional may hold: the inner
`apply` always runs and every variable it wrote (weights, slots, its step) gets its old value
back where the condition fails (`ops.where`; Keras's JAX optimizer does the same for gradient
accumulation). That costs one more optimizer update on the steps it is undone.
"""

import math

import keras
from keras import ops


def make_architecture_optimizer(name, learning_rate, beta_1=0.5, weight_decay=1e-3):
    """The `--arch_optimizer` for the choice logits: Adam (DARTS' betas (beta_1, 0.999)) or
    SGD with momentum 0.9; `weight_decay` decoupled (AdamW-style), as Keras applies it."""
    if name == "adam":
        return keras.optimizers.Adam(
            learning_rate, beta_1=beta_1, beta_2=0.999, weight_decay=weight_decay or None
        )
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=weight_decay or None)
    raise ValueError(f"arch_optimizer must be 'adam' or 'sgd', received {name!r}.")


def is_architecture_step(step, start_step, arch_fraction):
    """Whether global step `step` (0-based) updates the architecture only: a Python bool for
    ints, a boolean tensor for tensors (the module docstring's rule; False for f = 0)."""
    if not arch_fraction:
        return False if isinstance(step, int) else ops.zeros((), "bool")
    if isinstance(step, int):
        since = step - start_step
        return since >= 0 and math.floor((since + 1) * arch_fraction) > math.floor(
            since * arch_fraction
        )
    since = ops.cast(step, "float32") - float(start_step)
    crosses = ops.floor((since + 1.0) * arch_fraction) > ops.floor(since * arch_fraction)
    return ops.logical_and(since >= 0.0, crosses)


def count_architecture_steps(first, last, start_step, arch_fraction):
    """How many of the global steps `first .. last - 1` are architecture batches."""
    if not arch_fraction:
        return 0
    lo, hi = max(first, start_step) - start_step, max(last, start_step) - start_step
    return math.floor(hi * arch_fraction) - math.floor(lo * arch_fraction)


class SearchOptimizer(keras.optimizers.Optimizer):
    """An optimizer for the weights and another for the choice logits (module docstring).

    Args:
        weights: the optimizer of every variable not in `architecture_variables`.
        architecture: the optimizer of the choice logits.
        architecture_variables: the choice logits (`PARTransformerXL.architecture_variables`),
            or a function returning them when the optimizer is built (a model's logits exist
            once it is built).
        start_step: the global step from which the logits train (`--arch_start_step`).
        arch_fraction: the share of batches that update only the logits after `start_step`;
            0 updates both on every batch (`--arch_fraction`, in [0, 1)).
    """

    def __init__(self, weights, architecture, architecture_variables, start_step=0,
                 arch_fraction=0.0, name="search_optimizer", **kwargs):  # fmt: skip
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        if not 0.0 <= arch_fraction < 1.0:
            raise ValueError(f"arch_fraction must be in [0, 1), received {arch_fraction}.")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, received {start_step}.")
        self.weights_optimizer = weights
        self.architecture_optimizer = architecture
        self._architecture_variables = architecture_variables
        self._architecture_keys = None
        self.start_step = int(start_step)
        self.arch_fraction = float(arch_fraction)

    def _split(self, values, variables):
        """`(weights' values, weights' variables, logits' values, logits' variables)`."""
        parts = ([], [], [], [])
        for value, variable in zip(values, variables):
            logit = self._var_key(variable) in self._architecture_keys
            parts[2 * logit].append(value)
            parts[2 * logit + 1].append(variable)
        return parts

    def build(self, variables):
        logits = self._architecture_variables
        logits = logits() if callable(logits) else logits
        self._architecture_keys = {self._var_key(v) for v in logits}
        super().build(variables)
        _, weights, _, logits = self._split(variables, variables)
        self.weights_optimizer.build(weights)
        self.architecture_optimizer.build(logits)

    @property
    def variables(self):
        # The global step's first: checkpoints and JAX's optimizer state list all three.
        inner = self.weights_optimizer.variables + self.architecture_optimizer.variables
        return self._variables[:] + inner

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        elif not self.built:
            self.build(list(trainable_variables))
        weight_grads, weights, logit_grads, logits = self._split(grads, trainable_variables)
        step = self._iterations
        if self.arch_fraction:
            arch_step = is_architecture_step(step, self.start_step, self.arch_fraction)
            weight_step = ops.logical_not(arch_step)
            self._apply_if(weight_step, self.weights_optimizer, weight_grads, weights)
            self._apply_if(arch_step, self.architecture_optimizer, logit_grads, logits)
        else:
            self.weights_optimizer.apply(weight_grads, weights)
            active = step >= self.start_step
            self._apply_if(active, self.architecture_optimizer, logit_grads, logits)
        self._iterations.assign_add(1)

    def _apply_if(self, condition, optimizer, grads, variables):
        """`optimizer.apply(grads, variables)` where `condition` (a boolean scalar) holds."""
        if not variables:
            return
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if not tf.distribute.has_strategy():
                ops.cond(condition, lambda: optimizer.apply(grads, variables), lambda: None)
                return
        state = list(variables) + optimizer.variables
        before = [ops.copy(v.value) for v in state]
        optimizer.apply(grads, variables)
        _keep_where(condition, state, before)

    @property
    def learning_rate(self):
        """The weights' learning rate (what the logs show as `learning_rate`)."""
        return self.weights_optimizer.learning_rate


def _keep_where(condition, variables, before):
    """Each variable keeps its new value where `condition` holds, else gets `before` back.

    JAX: plain assignments (inside the trainer's stateless scope). TensorFlow under a
    tf.distribute strategy, where the optimizer updates in a merge call that no conditional may
    hold (`merge_call` inside `tf.cond` fails): a merge call of its own, which writes every
    device's copy of a mirrored variable with that device's values.
    """
    if keras.backend.backend() != "tensorflow":
        for variable, old in zip(variables, before):
            variable.assign(ops.where(condition, variable.value, old))
        return
    import tensorflow as tf

    def restore(strategy, condition, before):
        for variable, old in zip(variables, before):
            strategy.extended.update(
                variable.value, lambda v, c, o: v.assign(tf.where(c, v, o)), args=(condition, old),
                group=False,
            )  # fmt: skip

    tf.distribute.get_replica_context().merge_call(restore, args=(condition, before))
