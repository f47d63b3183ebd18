"""Training on several devices: rows per replica, per-replica XL memory, the same losses,
memory, evaluation and checkpoints as one device, multi-worker train.py, JAX data parallel.

Tolerance: a replica computes its rows exactly as one device does and the gradient all-reduce
only changes the order of float32 sums, so losses agree to `rtol=1e-5` and weights, memory
and evaluation to `atol=1e-5` (measured: about 1e-7). The runs use dropout 0 and a fixed
architecture: random draws (dropout masks, Gumbel noise) are made per replica (see docs/devices.md).

Several devices need TensorFlow's logical devices set before it starts, so those checks run
in fresh processes: one with 2 logical CPU devices (MirroredStrategy), two train.py workers
(MultiWorkerMirroredStrategy on 127.0.0.1), one on the JAX backend with 2 CPU devices.
"""

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from par_xl.configs import ConfigError, ModelConfig, TrainConfig
from par_xl.data import BuildConfig, build_data
from par_xl.distribution import replicas, strategies
from par_xl.models import ModelState, PARTransformerXL
from par_xl.training import trainer

REPO = Path(__file__).resolve().parents[1]


def run_python(script_text, directory, *args, env=None, timeout=240):
    """Runs `script_text` in a fresh Python with this checkout first on the path; returns the
    JSON object it printed last (fails the test on a non-zero exit)."""
    script = directory / "script.py"
    script.write_text(script_text)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    result = subprocess.run([sys.executable, str(script), *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# A model's carried state fitted on one device and on two replicas, then restored on one device.
# argv: the directory, then JSON {"model": ModelConfig's fields, "batch_shape": [B, T],
# "fields": paths into `get_state()` such as "knn/block_1/keys"}.
FIT_ON_TWO_REPLICAS = r"""
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

from par_xl.configs import ModelConfig, TrainConfig
from par_xl.distribution.strategies import distribute_rows, make_strategy
from par_xl.training.checkpoints import CheckpointManager
from par_xl.training.runs import build_model

directory, request = sys.argv[1], json.loads(sys.argv[2])
B, T = request["batch_shape"]
model_config = ModelConfig(**request["model"])
train_config = TrainConfig("-", "-", max_lr=1e-2, warmup_steps=0, jit_compile=False)
data = np.random.default_rng(0).integers(0, model_config.vocab_size, (4, 2, B, T)).astype("int32")


def read(model):
    state = model.get_state()  # all streams, gathered from the replicas
    report = {}
    for path in request["fields"]:
        value = state
        for part in path.split("/"):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        report[path] = np.asarray(value).tolist()
    return report


report = {}
for name, scope in (("one", None), ("two", make_strategy("mirrored"))):
    keras.utils.set_random_seed(0)
    model = build_model(model_config, train_config, (B, T), 100, strategy=scope)
    batches = tf.data.Dataset.from_tensor_slices((data[:, 0], data[:, 1]))
    if scope is not None:
        batches = distribute_rows(scope, lambda: batches, B)
    history = model.fit(batches, epochs=1, verbose=0, shuffle=False,
                        steps_per_epoch=None if scope is None else 4)
    report[name] = {"loss": history.history["loss"][-1], **read(model)}
    CheckpointManager(f"{directory}/{name}").save(model, 4)
keras.utils.set_random_seed(1)
restored = build_model(model_config, train_config, (B, T), 100)  # on one device
CheckpointManager(f"{directory}/two").restore(restored)
report["restored"] = read(restored)
print(json.dumps(report))
"""


def fit_on_two_replicas(directory, batch_shape, fields, **model):
    """Runs FIT_ON_TWO_REPLICAS for a small model (V 40, D 16, 2 heads, M 3, dropout 0; give
    it a fixed architecture, so that neither run draws anything, and `model`'s other
    ModelConfig fields) on 4 batches of `batch_shape` (B, T) random tokens; returns `{"one":
    {"loss", *fields}, "two": {...}, "restored": {*fields}}`: the last loss and the state's
    `fields` after fitting on one device and on 2 replicas, and the fields of a model on one
    device restored from the 2 replicas' checkpoint."""
    small = {"vocab_size": 40, "d_model": 16, "num_heads": 2, "d_ffn": 24, "num_layers": 3,
             "mem_len": 3, "cutoffs": [12], "dropout_rate": 0.0}  # fmt: skip
    request = {"model": {**small, **model}, "batch_shape": list(batch_shape),
               "fields": list(fields)}  # fmt: skip
    return run_python(FIT_ON_TWO_REPLICAS, directory, str(directory), json.dumps(request))


# One process, 2 logical CPU devices: MirroredStrategy against one device.

TWO_REPLICAS = r"""
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np
from keras import ops

from par_xl.configs import ModelConfig, TrainConfig
from par_xl.training.callbacks import LossWindow
from par_xl.training.checkpoints import CheckpointManager
from par_xl.distribution.strategies import distribute_rows, make_strategy, verify_rows
from par_xl.training.evaluation import evaluate_batches
from par_xl.training.runs import build_model

out = sys.argv[1]
strategy = make_strategy("mirrored")
B, T, V = 4, 6, 40
rng = np.random.default_rng(0)
stream = rng.integers(0, V, (9, B, T + 1)).astype("int32")
train, valid = stream[:6], stream[6:]


def batches(data, first=0, last=None):
    data = data[first:last]
    return tf.data.Dataset.from_tensor_slices((data[..., :-1], data[..., 1:]))


report = {"replicas": strategy.num_replicas_in_sync}

# Rows: replica r gets rows r*b .. (r+1)*b-1 of every batch, in order (a dict input too).
ids = np.arange(3 * B * T, dtype="int32").reshape(3, B, T)
rows = tf.data.Dataset.from_tensor_slices(({"token_ids": ids, "document_starts": ids}, ids))
report["rows"] = [
    [[int(x[0, 0]) // T for x in strategy.experimental_local_results(inputs[key])]
     for key in ("token_ids", "document_starts")]
    for inputs, _ in distribute_rows(strategy, lambda: rows, B)
]
verify_rows(strategy, B, T)
try:
    distribute_rows(strategy, lambda: rows, 3)
except ValueError as error:
    report["indivisible"] = str(error)

model_config = ModelConfig(vocab_size=V, d_model=16, num_heads=2, d_ffn=32, num_layers=2,
                           mem_len=5, cutoffs=(12,), dropout_rate=0.0, architecture="AF")
train_config = TrainConfig("-", "-", max_lr=1e-2, warmup_steps=0, jit_compile=False)


class StepLosses(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.window = LossWindow()
        self.window.restart(self.model)
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(self.window.mean())


def make(strategy):
    keras.utils.set_random_seed(0)
    return build_model(model_config, train_config, (B, T), 100, strategy=strategy)


def fit(model, strategy, first, last):
    data = batches(train, first, last)
    if strategy is not None:
        data = distribute_rows(strategy, lambda: data, B)
    losses = StepLosses()
    model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[losses],
              steps_per_epoch=None if strategy is None else last - first)
    return losses.values


def state(model):
    variables = [v for v in model.variables + model.optimizer.variables
                 if not any(v is m for m in model.state_variables)]
    return [ops.convert_to_numpy(v) for v in variables] + keras.tree.flatten(model.get_state())


def diff(a, b):
    return max(float(np.abs(np.asarray(x, "float64") - y).max()) for x, y in zip(a, b))


one, two = make(None), make(strategy)
report["initial_diff"] = diff(state(one), state(two))
report["losses_one"] = fit(one, None, 0, 4)
report["losses_two"] = fit(two, strategy, 0, 4)
report["state_diff"] = diff(state(one), state(two))

# The memory: one component per replica, each the rows it owns; never a reduction.
memory_one = keras.tree.flatten(one.get_state())  # memory_0, valid_memory_length
variable = two.xl_memory["block_0"].value
report["memory_kind"] = [type(variable).__name__, variable.synchronization.name,
                         variable.aggregation.name]
components = [[c.numpy() for c in v.value.values] for v in two.state_variables]
report["component_shapes"] = [list(c[0].shape) for c in components]
report["components_vs_rows"] = max(
    float(np.abs(c - m[r * 2:(r + 1) * 2]).max())
    for cs, m in zip(components, memory_one) for r, c in enumerate(cs)
)
report["replicas_differ"] = float(np.abs(components[0][0] - components[0][1]).max())
report["valid_lengths"] = [c.tolist() for c in components[-1]]
try:
    ops.convert_to_numpy(two.xl_memory["block_0"])
    report["cross_replica_read"] = "no error"
except ValueError as error:
    report["cross_replica_read"] = str(error)

# Evaluation on the replicas equals one device, and leaves the training memory alone.
before = keras.tree.flatten(two.get_state())
report["eval_one"] = evaluate_batches(one, batches(valid))
report["eval_two"] = evaluate_batches(two, batches(valid))
report["memory_after_eval"] = diff(before, keras.tree.flatten(two.get_state()))

# Checkpoints: 2 replicas -> one device, one device -> 2 replicas, and resume from there.
CheckpointManager(f"{out}/two").save(two, 4)
CheckpointManager(f"{out}/one").save(one, 4)
restored = make(None)
report["restored_step"] = CheckpointManager(f"{out}/two").restore(restored)
report["restore_on_one_diff"] = diff(state(restored), state(two))
CheckpointManager(f"{out}/one").restore(two)
report["restore_on_two_diff"] = diff(state(two), state(one))
report["losses_one_continued"] = fit(one, None, 4, 6)
report["losses_resumed_two"] = fit(two, strategy, 4, 6)
report["resumed_state_diff"] = diff(state(one), state(two))
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    """The report of TWO_REPLICAS (about 30 s of CPU time)."""
    directory = tmp_path_factory.mktemp("two_replicas")
    return run_python(TWO_REPLICAS, directory, str(directory))


@pytest.mark.slow
def test_each_replica_receives_its_rows_of_every_batch_in_order(two_replicas):
    report = two_replicas
    assert report["replicas"] == 2
    # Batch t holds rows 4t .. 4t+3; replica r gets rows 4t + 2r and 4t + 2r + 1.
    assert report["rows"] == [[[4 * t, 4 * t + 2]] * 2 for t in range(3)]
    assert "batch_size=3" in report["indivisible"] and "2 replicas" in report["indivisible"]


@pytest.mark.slow
def test_mirrored_training_gives_the_losses_and_weights_of_one_device(two_replicas):
    report = two_replicas
    assert report["initial_diff"] == 0
    np.testing.assert_allclose(report["losses_two"], report["losses_one"], rtol=1e-5)
    assert report["state_diff"] < 1e-5  # weights, optimizer slots, memory


@pytest.mark.slow
def test_memory_is_per_replica_never_averaged_or_broadcast(two_replicas):
    report = two_replicas
    assert report["memory_kind"] == ["SyncOnReadVariable", "ON_READ", "NONE"]
    assert report["component_shapes"] == [[2, 5, 16], [2]]  # memory_0, valid_memory_length
    assert report["components_vs_rows"] < 1e-5  # replica r holds the rows it owns
    assert report["replicas_differ"] > 1e-2  # so an average or a broadcast would show
    assert report["valid_lengths"] == [[5, 5], [5, 5]]
    assert "Could not convert" in report["cross_replica_read"]  # no silent reduction


@pytest.mark.slow
def test_evaluation_on_replicas_equals_one_device(two_replicas):
    one, two = two_replicas["eval_one"], two_replicas["eval_two"]
    assert one["batches"] == two["batches"] == 3
    for key in ("loss", "perplexity_batch_mean"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-6)
    assert two_replicas["memory_after_eval"] == 0


@pytest.mark.slow
def test_checkpoints_cross_strategies_and_resume_exactly(two_replicas):
    report = two_replicas
    assert report["restored_step"] == 4
    assert report["restore_on_one_diff"] == 0  # every variable, the memory's rows included
    assert report["restore_on_two_diff"] == 0
    np.testing.assert_allclose(
        report["losses_resumed_two"], report["losses_one_continued"], rtol=1e-5
    )
    assert report["resumed_state_diff"] < 1e-5


# In this process: one device, and the checks that need no second device.


def tiny_model(batch=2, segment=4):
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=30, d_model=8, num_heads=2, d_ffn=16, num_layers=2,
                             mem_len=3, cutoffs=[10], dropout_rate=0.0)  # fmt: skip
    model.build((batch, segment))
    return model


def test_one_device_state_is_an_ordinary_variable_read_and_written_whole():
    model = tiny_model()
    variables = model.state_variables
    assert [v.name for v in variables] == ["memory_0", "memory_1", "valid_memory_length"]
    assert variables[-1] is model.valid_length
    assert all(a is b for a, b in zip(variables, model.xl_memory.values()))
    assert not any(replicas.is_per_replica(v) for v in variables)
    model(np.ones((2, 4), "int32"))
    state = model.get_state()
    assert list(state.xl_memory) == ["block_0", "block_1"]
    for variable, value in zip(variables, [*state.xl_memory.values(), state.valid_length]):
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), value)
    model.set_state(keras.tree.map_structure(lambda value: value + 1, state))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.xl_memory["block_1"]), state.xl_memory["block_1"] + 1
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(model.valid_length), [4, 4])  # 3 + 1
    with pytest.raises(ValueError, match=r"holds 2 streams .* shape \(4, 3, 8\)"):
        model.set_state(ModelState({k: np.zeros((4, 3, 8)) for k in state.xl_memory}, np.zeros(4)))
    model.reset_state()
    assert not any(np.any(value) for value in keras.tree.flatten(model.get_state()))


def test_memory_state_takes_batches_of_unknown_static_size():
    # tf.distribute's multi-step loop hands replicas (None, T) batches.
    model, reference = tiny_model(), tiny_model()
    x = np.random.default_rng(0).integers(0, 30, (2, 4)).astype("int32")
    call = tf.function(model.__call__, input_signature=[tf.TensorSpec((None, 4), tf.int32)])
    for _ in range(2):  # memory carried
        np.testing.assert_allclose(call(x).numpy(), ops.convert_to_numpy(reference(x)),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    assert call(x).shape == (2, 4, 8)


def test_loss_is_scaled_by_the_replicas(monkeypatch):
    loss = ops.convert_to_tensor(2.0)
    assert replicas.scale_loss(loss) is loss  # one device: untouched
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    monkeypatch.setattr(type(strategy), "num_replicas_in_sync", property(lambda self: 4))
    with strategy.scope():
        assert float(replicas.scale_loss(loss)) == 0.5


class _Replicas:
    def __init__(self, count):
        self.num_replicas_in_sync = count


def test_settings_that_cannot_work_are_refused_naming_the_flag(monkeypatch):
    with pytest.raises(ConfigError, match=r"batch_size=6 .* multiple of the 4 replicas.*=4 or 8"):
        strategies.replica_batch_size(_Replicas(4), 6)
    with pytest.raises(ConfigError, match=r"--batch_size=4, or"):
        strategies.replica_batch_size(_Replicas(4), 3)
    assert strategies.replica_batch_size(_Replicas(4), 8) == 2
    assert strategies.replica_batch_size(None, 6) == 6
    with pytest.raises(ConfigError, match="--strategy must be one of"):
        strategies.make_strategy("gpus")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG environment variable, which is not set"):
        strategies.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"index": 0}}')
    with pytest.raises(ConfigError, match="TF_CONFIG is not a cluster with this task"):
        strategies.make_strategy("multi_worker")
    assert strategies.jit_compile_for("default", None, lambda: True) is True
    assert strategies.jit_compile_for("mirrored", None, lambda: True) is False
    assert strategies.jit_compile_for("tpu", True, lambda: True) is False
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    config = TrainConfig("a", "b", jit_compile=False)
    strategies.check_config(mirrored, config)
    with pytest.raises(ConfigError, match="--jit_compile does not work with --strategy=mirrored"):
        strategies.check_config(mirrored, dataclasses.replace(config, jit_compile=True))
    with pytest.raises(ConfigError, match="--steps_per_execution=2 does not work"):
        strategies.check_config(mirrored, dataclasses.replace(config, steps_per_execution=2))
    assert strategies.worker_role(mirrored) == (True, "chief")
    assert strategies.describe(mirrored) == "--strategy=mirrored: 1 replicas, 1 on this worker"


# Two train.py workers on 127.0.0.1 (MultiWorkerMirroredStrategy) against one device.


@pytest.fixture(scope="module")
def small_data(small_text_dir, tmp_path_factory):
    """The generated corpus as 4 x 8 batches with a short validation split."""
    root = tmp_path_factory.mktemp("small_data")
    text = root / "text"
    text.mkdir()
    for split, lines in (("train", 600), ("valid", 6), ("test", 6)):
        source = (small_text_dir / f"{split}.txt").read_text().splitlines()
        (text / f"{split}.txt").write_text("\n".join(source[:lines]) + "\n")
    build_data(BuildConfig(input_text=str(text), tfrecords_directory=str(root / "tf"),
                           sp_model_prefix=str(root / "sp"), vocab_size=320, batch_size=4,
                           seq_len=8, shards=2))  # fmt: skip
    return root


MODEL = dict(d_model=16, num_heads=2, d_ffn=32, num_layers=2, mem_len=6, cutoffs=(40,),
             dropout_rate=0.0, architecture="AF")  # fmt: skip
TRAIN = dict(max_steps=4, checkpoint_every=2, log_every=1, warmup_steps=2, max_lr=3e-3)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def logged_losses(run):
    text = (run / "training_log.log").read_text()
    return [float(x) for x in re.findall(r"step \d+ \| loss ([\d.]+)", text)]


def checkpoint_arrays(path):
    arrays = {}

    def read(name, item):
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with h5py.File(path) as f:
        f.visititems(read)
    assert arrays, path
    return arrays


@pytest.mark.slow
def test_two_workers_train_as_one_device(small_data, tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    flags = [
        f"--train_directory={small_data}/tf/train",
        f"--valid_directory={small_data}/tf/valid",
        f"--log_dir={tmp_path}",
        "--model_name=run",
        "--strategy=multi_worker",
        "--preset=tiny",
        "--architecture=AF",
        "--num_layers=2",
        "--d_model=16",
        "--d_ffn=32",
        "--mem_len=6",
        "--cutoffs=40",
        "--dropout_rate=0",
    ] + [f"--{k}={v}" for k, v in TRAIN.items()]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    logs = [tmp_path / f"worker-{i}.err" for i in range(2)]
    workers = []
    for i, log in enumerate(logs):
        task = {"cluster": cluster, "task": {"type": "worker", "index": i}}
        env = {**os.environ, "PYTHONPATH": path, "TF_CONFIG": json.dumps(task)}
        command = [sys.executable, str(REPO / "train.py"), *flags]
        with log.open("w") as stderr:
            process = subprocess.Popen(command, cwd=REPO, env=env, stderr=stderr,
                                       stdout=subprocess.DEVNULL)  # fmt: skip
        workers.append(process)
    try:
        # Meanwhile, the same run on one device in this process.
        one = trainer.train(
            ModelConfig(**MODEL),
            TrainConfig(f"{small_data}/tf/train", f"{small_data}/tf/valid",
                        log_dir=str(tmp_path), model_name="one", jit_compile=False, **TRAIN),
        )  # fmt: skip
        for worker in workers:
            worker.wait(timeout=180)
    finally:
        for worker in workers:
            worker.kill()
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log.read_text()[-3000:]
    chief, other = tmp_path / "run", tmp_path / "run" / "worker-1"
    assert (
        "--strategy=multi_worker: 2 replicas, 1 on this worker"
        in (chief / "training_log.log").read_text()
    )
    np.testing.assert_allclose(logged_losses(chief), logged_losses(tmp_path / "one"), rtol=1e-5)
    results = json.loads((chief / "results.json").read_text())
    np.testing.assert_allclose(results["valid"]["loss"], one["valid"]["loss"], rtol=1e-6)
    single = checkpoint_arrays(tmp_path / "one/checkpoints/ckpt-00000004.weights.h5")
    for run in (chief, other):  # each worker keeps a complete copy
        arrays = checkpoint_arrays(run / "checkpoints/ckpt-00000004.weights.h5")
        assert arrays.keys() == single.keys()
        for key, value in single.items():
            np.testing.assert_allclose(arrays[key], value, atol=1e-5, err_msg=key)
    # The memory, memory_0: all 4 streams (2 of each worker) in every copy.
    assert [v.shape for v in single.values() if v.ndim == 3 and v.shape[0] == 4] == [(4, 6, 16)]


# The JAX backend: keras.distribution over 2 CPU devices, memory sharded along the batch.

JAX_DATA_PARALLEL = r"""
import json
import keras
import numpy as np
from keras import ops

from par_xl.models import PARTransformerXL
from par_xl.distribution.strategies import jax_data_parallel


def make():
    keras.utils.set_random_seed(0)
    model = PARTransformerXL(vocab_size=40, d_model=16, num_heads=2, d_ffn=32, num_layers=1,
                             mem_len=5, dropout_rate=0.0, architecture="A")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.build((4, 6))
    return model


data = np.random.default_rng(0).integers(0, 40, (4, 4, 7)).astype("int32")
x, y = data[..., :-1].reshape(16, 6), data[..., 1:].reshape(16, 6)
one = make()
losses_one = one.fit(x, y, batch_size=4, shuffle=False, verbose=0).history["loss"]
keras.distribution.set_distribution(jax_data_parallel())
two = make()
losses_two = two.fit(x, y, batch_size=4, shuffle=False, verbose=0).history["loss"]
memory = two.xl_memory["block_0"].value
print(json.dumps({
    "devices": len(keras.distribution.list_devices()),
    "losses": [losses_one, losses_two],
    "memory_diff": max(float(np.abs(a - b).max())
                       for a, b in zip(keras.tree.flatten(one.get_state()),
                                       keras.tree.flatten(two.get_state()))),
    "memory_spec": [str(a) for a in memory.sharding.spec],
    "shards": sorted(int(s.index[0].start or 0) for s in memory.addressable_shards),
    "shard_shape": list(memory.addressable_shards[0].data.shape),
    "weight_spec": [str(a) for a in two.trainable_variables[0].value.sharding.spec],
}))
"""


@pytest.mark.slow
def test_jax_data_parallel_shards_the_memory_along_the_batch(tmp_path):
    pytest.importorskip("jax")
    env = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # fmt: skip
    report = run_python(JAX_DATA_PARALLEL, tmp_path, env=env)
    assert report["devices"] == 2
    np.testing.assert_allclose(*report["losses"], rtol=1e-5)
    assert report["memory_diff"] < 1e-5
    assert report["memory_spec"][0] == "batch" and report["shard_shape"] == [2, 5, 16]
    assert report["shards"] == [0, 2]  # device d holds rows 2d, 2d + 1
    assert "batch" not in report["weight_spec"]  # weights replicated
