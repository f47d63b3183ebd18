"""Per-stream model state under data parallelism: each replica keeps the rows it is fed.

Context batching makes row i of every batch one stream of text, and data parallelism gives
replica r of R the same rows of every global batch of B rows: rows `r*b .. (r+1)*b - 1`,
b = B / R (`par_xl.distribution.strategies.distribute_rows`). State that follows the streams,
the XL memory `(B, M, D)` and its valid lengths `(B,)` (and the kNN memory once the model
uses it), is therefore per replica: replica r's rows of it belong to replica r alone. It must
never be averaged or broadcast across replicas, yet a checkpoint must hold all B rows, so that
it restores under any number of replicas.

TensorFlow (`tf.distribute`): `stream_variable` makes a non-trainable variable with
`synchronization="on_read"` and `aggregation="none"`. Without a strategy it is an ordinary
variable (nothing changes, bit for bit). Created in a strategy's scope, it holds one `(b, ...)`
component per replica; inside the replicated step (`fit`, `evaluate`) each replica reads and
assigns its own component and nothing crosses replicas: no all-reduce, no broadcast. Reading
it from outside the step (cross-replica context) would need a reduction, and with aggregation
"none" TensorFlow raises instead of averaging: a mistake is loud, never silent. Whole-state
access goes through this module instead: `read_streams` gathers the replicas' components into
one global `(B, ...)` array in replica order (the single-device layout), `write_streams`
gives replica r rows `r*b .. (r+1)*b - 1` of a global array, `clear_streams` zeroes every
replica. Checkpoints, evaluation and the memory reset use them, so a checkpoint written under
any strategy holds the same global arrays as one written on one device.

JAX (`keras.distribution`): variables are global `(B, ...)` arrays; a layout that shards them
along the batch axis (`par_xl.distribution.strategies.jax_data_parallel`) keeps each device's
rows on that device. The functions below then read and write whole arrays.

Only these functions import TensorFlow, and only on the TensorFlow backend: the model that
uses them runs on either backend.
"""

import keras
import numpy as np
from keras import ops


def _tensorflow():
    """The `tensorflow` module on the TensorFlow backend, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf


def replicas_in_sync():
    """R: the replicas of the `tf.distribute` strategy in scope, 1 without one (or on JAX, where
    the step sees global arrays)."""
    tf = _tensorflow()
    return tf.distribute.get_strategy().num_replicas_in_sync if tf else 1


def scale_loss(loss):
    """`loss / R`. A replica's loss is the mean over its own rows and tf.distribute sums the
    replicas' gradients, so `1 / R` makes the sum the gradient of the global batch's mean loss
    (what Keras's built-in losses do). Unchanged with one replica."""
    replicas = replicas_in_sync()
    if replicas == 1:
        return loss
    return loss * ops.cast(1.0 / replicas, loss.dtype)


def stream_variable(name, shape, dtype="float32"):
    """A zero-initialized, non-trainable per-stream state variable; the first axis of `shape` is
    the batch rows one replica sees. Create it inside the owning layer's `build` (its name
    scope) and assign it in `call`."""
    return keras.Variable(
        initializer="zeros",
        shape=shape,
        dtype=dtype,
        trainable=False,
        synchronization="on_read",
        aggregation="none",
        name=name,
    )


def is_per_replica(variable):
    """Whether `variable` holds one component per replica (a `tf.distribute` variable)."""
    tf = _tensorflow()
    return bool(tf) and isinstance(variable.value, tf.distribute.DistributedValues)


def _strategy(variables):
    strategies = {id(v.value.distribute_strategy): v.value.distribute_strategy for v in variables}
    if len(strategies) != 1:
        raise ValueError("stream-state variables of several strategies cannot be read together.")
    return next(iter(strategies.values()))


_FUNCTIONS = {}  # (kind, variables' ids) -> (variables, tf.function), the last few used


def _function(kind, variables, make):
    """The `tf.function` `make()` for these variables, made once (not retraced each call)."""
    key = (kind, *map(id, variables))
    if key not in _FUNCTIONS:
        while len(_FUNCTIONS) >= 16:
            _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
        _FUNCTIONS[key] = (variables, make())  # the variables keep their ids taken
    return _FUNCTIONS[key][1]


def read_streams(variables):
    """The global value of each variable: `(R * b, ...)` numpy arrays, replica r's rows at
    `r*b .. (r+1)*b - 1`; an ordinary variable's value as it is.

    Under a multi-worker strategy this is a collective: every worker must call it.
    """
    variables = list(variables)
    if not any(is_per_replica(v) for v in variables):
        return [ops.convert_to_numpy(v) for v in variables]
    tf = _tensorflow()
    strategy = _strategy(variables)

    def make():
        @tf.function(autograph=False)
        def gather():
            def local():  # replica context: each replica's own component
                return [tf.identity(v.value) for v in variables]

            per_replica = strategy.run(local)
            return [strategy.gather(value, axis=0) for value in per_replica]

        return gather

    return [value.numpy() for value in _function("read", variables, make)()]


def write_streams(variables, values):
    """Assigns global arrays: each replica takes its rows (see `read_streams`), an ordinary
    variable the whole array. Raises ValueError if an array does not have R * b rows."""
    variables = list(variables)
    values = [np.asarray(value) for value in values]
    if len(values) != len(variables):
        raise ValueError(f"expected {len(variables)} arrays, received {len(values)}.")
    if not any(is_per_replica(v) for v in variables):
        for variable, value in zip(variables, values):
            _check_rows(variable, value, 1)
            variable.assign(value)
        return
    tf = _tensorflow()
    strategy = _strategy(variables)
    for variable, value in zip(variables, values):
        _check_rows(variable, value, strategy.num_replicas_in_sync)

    def make():
        @tf.function(autograph=False)
        def scatter(values):
            def assign():  # replica context: replica r keeps rows r*b .. (r+1)*b - 1
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                for variable, value in zip(variables, values):
                    rows = variable.shape[0]
                    own = value[replica * rows : (replica + 1) * rows]
                    variable.value.assign(tf.cast(own, variable.dtype), read_value=False)

            strategy.run(assign)

        return scatter

    _function("write", variables, make)([tf.convert_to_tensor(value) for value in values])


def clear_streams(variables):
    """Zeroes every replica's rows of each variable (an ordinary variable: all of it)."""
    for variable in variables:
        zeros = ops.zeros(variable.shape, variable.dtype)
        if is_per_replica(variable):
            # Cross-replica assign of an ON_READ variable: the same value on every replica.
            variable.value.assign(zeros, read_value=False)
        else:
            variable.assign(zeros)


def _check_rows(variable, value, replicas):
    rows = variable.shape[0] * replicas
    expected = (rows, *variable.shape[1:])
    if tuple(value.shape) != tuple(expected):
        where = f"{replicas} replicas x {variable.shape[0]} rows" if replicas > 1 else "it"
        raise ValueError(
            f"{variable.name} holds {rows} streams ({where}) of shape {tuple(variable.shape[1:])}, "
            f"received an array of shape {tuple(value.shape)}: the data's batch size differs."
        )
