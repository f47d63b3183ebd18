"""Training beyond one device: tf.distribute strategies, and global batches split by rows.

`--strategy` (train.py):
  default       one device, no strategy: the run exactly as it always was.
  mirrored      one machine, all its GPUs (without GPUs, its CPU devices): MirroredStrategy.
  multi_worker  several machines, each running the same command with its own `TF_CONFIG`:
                MultiWorkerMirroredStrategy (collective all-reduce).
  tpu           a Cloud TPU or Colab TPU named by `--tpu`: TPUStrategy.

TensorFlow does the work: variables mirrored on every replica, gradients all-reduced, Keras's
`fit` running the step on every replica. What is ours is the data and the XL memory.

The global batch. A built split's batches (`batch_size` B rows in `metadata.json`) are global
batches. With R replicas (all workers together), each step trains on one global batch and
replica r receives its rows `r*b .. (r+1)*b - 1`, b = B / R, of every batch, in order
(`distribute_rows`): so replica r always sees the same context-batching streams, and its part
of the XL memory (`par_xl.distribution.replicas`) continues them. B must be a multiple of R.
A run under R replicas computes what one device computes on the same data (same global batch,
same losses up to float rounding, same memory), and its checkpoints restore on any number of
replicas.
To keep b rows per device on R devices, build the data with `--batch_size=R*b`
(build_data.py); a different B cuts the text into different streams, so it is a different
run.

Sharding. Each input pipeline (one per worker) reads every record of the split and keeps its
replicas' rows: tf.data's auto-sharding, which would deal whole batches (or files) to workers
and break the streams, is switched off explicitly (`AutoShardPolicy.OFF`). Every worker
therefore needs the data directory, like the chief. `verify_rows` checks at start that each
replica gets its own rows.

Two Keras 3 limits under MirroredStrategy and MultiWorkerMirroredStrategy (`check_config`):
`jit_compile=True` compiles the whole replicated step for one device and fails
(keras-team/keras#19005), so those strategies run the step as a TensorFlow graph; and
`steps_per_execution` > 1 puts the gradient all-reduce inside a `tf.cond`, which fails
(keras-team/keras#19246). On a TPU, TPUStrategy compiles every step with XLA anyway, and
several steps per execution are what keep it busy.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from par_xl.configs import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
_XLA_ISSUE = "keras-team/keras#19005"
_STEPS_ISSUE = "keras-team/keras#19246"


def make_strategy(name="default", tpu=""):
    """The `tf.distribute.Strategy` of `--strategy=name`, or None for `default` (one device).

    Call it first, before any other TensorFlow work: MultiWorkerMirroredStrategy and the TPU
    system must be set up before TensorFlow initializes its devices.

    Args:
        name: one of STRATEGIES.
        tpu: `--tpu`: a TPU name or `grpc://` address, "local" on a TPU VM (Colab's TPU
            runtime included), "" to resolve it from the environment (Cloud TPU).

    Raises:
        ConfigError naming the flag: an unknown name, no TF_CONFIG, no TPU.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {STRATEGIES}, received {name!r}.")
    if name == "default":
        return None
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ConfigError(
            f"--strategy=tpu: no TPU at --tpu={tpu!r} ({str(error).splitlines()[0]}). On a TPU "
            "VM, Colab's TPU runtime included, pass --tpu=local; else the TPU's name or "
            "grpc:// address."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def check_tf_config():
    """Raises ConfigError unless `TF_CONFIG` describes a cluster and this process's task in
    it, as MultiWorkerMirroredStrategy reads it."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ConfigError(
            "--strategy=multi_worker reads the cluster from the TF_CONFIG environment variable, "
            'which is not set: e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}}\' on the first machine, '
            '"index": 1 on the second (docs/devices.md).'
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        addresses = cluster[task["type"]]
        addresses[int(task["index"])]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ConfigError(
            f"TF_CONFIG is not a cluster with this task in it ({type(error).__name__}: "
            f'{error}): it needs "cluster" (task type -> addresses) and "task" (its type and '
            "index)."
        ) from None


def jit_compile_for(strategy_name, jit_compile, default):
    """`--jit_compile` under `--strategy`: unset, `default()` (XLA on GPU/TPU) on one device and
    off under a strategy (see the module docstring; `check_config` refuses it on). Always off
    for Keras on a TPU, where TPUStrategy compiles every step with XLA itself."""
    if strategy_name == "tpu":
        return False
    if jit_compile is None:
        return default() if strategy_name == "default" else False
    return jit_compile


def check_config(strategy, train_config):
    """Raises ConfigError for training settings Keras 3 cannot run under `strategy` (see the
    module docstring)."""
    if strategy is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return
    name = f"--strategy={strategy_name(strategy)}"
    if train_config.jit_compile:
        raise ConfigError(
            f"--jit_compile does not work with {name}: Keras 3 compiles the whole replicated "
            f"step for one device ({_XLA_ISSUE}). Leave it unset: the replicas run TensorFlow "
            "graphs."
        )
    if train_config.steps_per_execution > 1:
        raise ConfigError(
            f"--steps_per_execution={train_config.steps_per_execution} does not work with "
            f"{name}: Keras 3 runs the gradient all-reduce inside a tf.cond there "
            f"({_STEPS_ISSUE}). Use --steps_per_execution=1."
        )


def adapt_model(model, strategy):
    """Works around two failures of Keras's `fit` under tf.distribute (Keras 3.15, TF 2.20)
    on a built `model`, for `strategy`.

    - Before each `fit` / `evaluate` under a strategy, Keras's TensorFlow trainer takes the
      first batch and reduces it across replicas to build whatever is unbuilt. Our models are
      built before they train, and under a multi-worker strategy that reduction of an
      `(inputs, labels)` structure fails ("Attempt to convert a value (PerReplica...) to a
      Tensor"). So the model skips it (and saves that extra batch).
    - Under a multi-worker strategy Keras averages each step's logs with
      `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars ("Invalid reduction
      dimension 0 for input with 0 dimensions"). So the model's step returns its scalar logs
      as `(1,)` tensors there: the reduction averages them over all replicas into scalars.

    Both are instance attributes on this model only: other models and one-device training are
    untouched.
    """
    if not model.built:
        raise ValueError("adapt_model needs a built model.")
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        compute_metrics = model.compute_metrics

        def vector_logs(*args, **kwargs):
            logs = compute_metrics(*args, **kwargs)
            return {k: tf.reshape(v, (1,)) if v.shape.rank == 0 else v for k, v in logs.items()}

        model.compute_metrics = vector_logs


def replica_batch_size(strategy, batch_size):
    """b = B / R, the rows of each global batch one replica trains on (B with no strategy).

    Raises ConfigError if R does not divide B, naming the data's batch size and the fix.
    """
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if batch_size % replicas:
        fits = [replicas * n for n in (batch_size // replicas, batch_size // replicas + 1) if n]
        raise ConfigError(
            f"the data's batch_size={batch_size} (build_data.py --batch_size) must be a "
            f"multiple of the {replicas} replicas of --strategy: each replica trains on "
            f"batch_size / {replicas} rows of every batch. Build the data with --batch_size="
            f"{' or '.join(map(str, fits))}, or train on other devices."
        )
    return batch_size // replicas


def distribute_rows(strategy, make_dataset, batch_size):
    """`make_dataset()`'s global batches split by rows: replica r gets rows `r*b .. (r+1)*b-1`
    of every batch, in order (see the module docstring).

    Args:
        strategy: a `tf.distribute.Strategy`.
        make_dataset: returns a `tf.data.Dataset` of global batches, `(inputs, labels)` with a
            leading axis of `batch_size` rows (inputs may be a dict); called once per input
            pipeline (worker).
        batch_size: B.

    Returns:
        A `tf.distribute.DistributedDataset` for `fit` and `strategy.run`.
    """
    replicas = strategy.num_replicas_in_sync
    rows = replica_batch_size(strategy, batch_size)

    def dataset_fn(context):
        # Replicas are numbered worker by worker: this pipeline's replicas are
        # `pipeline * local .. (pipeline + 1) * local - 1`, and `verify_rows` checks it.
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local * rows

        def split(*batch):  # (B, ...) -> `local` elements of (b, ...), in replica order
            def own(t):
                return tf.reshape(t[first : first + local * rows], (local, rows, *t.shape[1:]))

            return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(own, batch))

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF  # we shard by rows ourselves
        )
        dataset = make_dataset().flat_map(split).with_options(options)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def verify_rows(strategy, batch_size, seq_len=1):
    """Raises RuntimeError unless `distribute_rows` gives each replica its own rows.

    Feeds two global batches whose rows hold their batch and row index and asks every replica
    what it received. A collective under a multi-worker strategy (every worker calls it).
    """
    rows = replica_batch_size(strategy, batch_size)
    index = np.arange(2 * batch_size, dtype="int32").reshape(2, batch_size, 1)
    probe = np.broadcast_to(index, (2, batch_size, seq_len))

    def make_dataset():
        return tf.data.Dataset.from_tensor_slices((probe, probe))

    dataset = distribute_rows(strategy, make_dataset, batch_size)

    @tf.function(autograph=False)
    def received(inputs, labels):
        def replica(inputs, labels):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return tf.stack([replica, tf.shape(inputs)[0], inputs[0, 0], inputs[-1, -1]])

        return strategy.gather(strategy.run(replica, args=(inputs, labels)), axis=0)

    for step, (inputs, labels) in enumerate(dataset):
        seen = received(inputs, labels).numpy().reshape(-1, 4)
        for replica, count, first, last in seen:
            expected = step * batch_size + replica * rows
            if (count, first, last) != (rows, expected, expected + rows - 1):
                raise RuntimeError(
                    f"replica {replica} received rows {first - step * batch_size}.."
                    f"{last - step * batch_size} ({count}) of batch {step}, not its own rows "
                    f"{replica * rows}..{(replica + 1) * rows - 1}: this device topology "
                    "numbers its replicas otherwise than worker by worker, which distribute_rows "
                    "assumes. Train with another --strategy or device layout."
                )


def worker_role(strategy):
    """`(is_chief, name)` of this process: the chief (`"chief"` in TF_CONFIG, else worker 0)
    owns the run directory; another worker gets a name such as `"worker-1"`. Always the chief
    without a multi-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True, "chief"
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:  # a single worker without TF_CONFIG
        return True, "chief"
    cluster = resolver.cluster_spec().as_dict()
    first_worker = task_type == "worker" and task_id == 0 and "chief" not in cluster
    return task_type == "chief" or first_worker, f"{task_type}-{task_id}"


def model_strategy(model):
    """The strategy `model`'s variables are distributed by (it was created in the strategy's
    scope), or None: one device, or the JAX backend."""
    variables = model.trainable_variables
    if keras.backend.backend() != "tensorflow" or not variables:
        return None
    value = variables[0].value
    if not isinstance(value, tf.distribute.DistributedValues):
        return None
    return value.distribute_strategy


def strategy_name(strategy):
    """The `--strategy` value of a strategy object, e.g. "multi_worker" (MirroredStrategy's
    multi-worker sibling is a CollectiveAllReduceStrategy to `type()`)."""
    if strategy is None:
        return "default"
    for name, kind in (
        ("multi_worker", tf.distribute.MultiWorkerMirroredStrategy),
        ("mirrored", tf.distribute.MirroredStrategy),
        ("tpu", tf.distribute.TPUStrategy),
    ):
        if isinstance(strategy, kind):
            return name
    return type(strategy).__name__


def describe(strategy):
    """One line for the log: the strategy, its replicas and this worker's share."""
    if strategy is None:
        return "one device (no tf.distribute strategy)"
    local = len(strategy.extended.worker_devices)
    return (f"--strategy={strategy_name(strategy)}: {strategy.num_replicas_in_sync} replicas, "
            f"{local} on this worker")  # fmt: skip


def jax_data_parallel(devices=None):
    """The JAX backend's data parallelism with the XL memory sharded along the batch axis.

    `keras.distribution.DataParallel` replicates every variable, the memory state included,
    so each device would hold (and receive, every step) all B rows. This distribution splits
    the batch over `devices` like DataParallel (device d gets rows `d*b .. (d+1)*b - 1`) and
    lays out `memory_i` `(B, M, D)` and `valid_memory_length` `(B,)` along the same batch axis,
    so each device keeps the memory of its own rows; every other variable is replicated.

    Example:
        >>> keras.distribution.set_distribution(jax_data_parallel())  # doctest: +SKIP
        >>> model = PARTransformerXL(...)  # then compile, fit as on one device
    """
    devices = devices or keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((len(devices),), ["batch"], devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[r".*/memory_\d+"] = ("batch", None, None)  # matched against the whole path
    layout_map[r".*/valid_memory_length"] = ("batch",)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
