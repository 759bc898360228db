"""Distribution: the strategy, replica-aware batches, real tf.distribute runs.

In-process tests use a real MirroredStrategy over two logical CPU devices
(conftest.py); the MultiWorkerMirroredStrategy test runs two worker
processes on 127.0.0.1. Those need the TensorFlow backend (`tf.distribute`);
on JAX and PyTorch, asking for a strategy raises an error that names the
backend and what to use there, and a search without one runs on one device.
"""

import pathlib

import keras
import keras_tuner
import pytest
from conftest import BACKEND
from conftest import MemoryLimit
from conftest import start_workers
from conftest import worker_results

import keras_batchtune
from keras_batchtune import distribute
from keras_batchtune import trial_fit

ROOT = pathlib.Path(__file__).resolve().parents[1]


class BatchLog(keras.layers.Layer):
    """Identity layer that records the batch size each replica computes on.

    Each instance appends to its own list in `BatchLog.runs` (a class
    attribute, so that the lists outlive the models KerasTuner builds). On
    TensorFlow every step records its batch (`tf.py_function`, the batch
    dimension is dynamic in the traced step); on PyTorch every call does;
    on JAX each compiled batch shape is recorded once, when it is traced.
    """

    runs = []

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.run = len(BatchLog.runs)
        BatchLog.runs.append([])

    def record(self, size):
        BatchLog.runs[self.run].append(int(size))
        return size

    def call(self, inputs):
        if BACKEND == "tensorflow":
            import tensorflow as tf

            size = tf.py_function(self.record, [tf.shape(inputs)[0]], tf.int32)
            size.set_shape([])
            return inputs + 0.0 * tf.cast(size, inputs.dtype)
        if inputs.shape[0] is not None:  # None: Keras's symbolic build
            self.record(inputs.shape[0])
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


LEARNING_RATE = 0.05


def build_model(hp, max_batch_size=None):
    layers = [keras.Input((64,)), BatchLog()]
    if max_batch_size is not None:
        layers.append(MemoryLimit(max_batch_size))
    layers += [
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def trials_in_order(tuner):
    return [tuner.oracle.trials[i] for i in tuner.oracle.start_order]


def seen_per_trial():
    """The per-replica batch sizes of each model that trained, in order."""
    return [run for run in BatchLog.runs if run]


def metric(trial, name):
    return trial.metrics.get_last_value(name)


@pytest.mark.tensorflow_backend
def test_resolve_strategy_on_cpu_is_the_default_one(capsys, caplog):
    import tensorflow as tf

    caplog.set_level("INFO", logger="keras_batchtune")
    strategy = keras_batchtune.resolve_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    out = capsys.readouterr().out
    assert out.startswith(
        "keras_batchtune: using the default strategy with 1 replica in sync "
        "(no TPU found, no GPU found, TF_CONFIG names no cluster)."
    )
    assert out.strip() in caplog.text
    keras_batchtune.resolve_strategy(verbose=False)
    assert capsys.readouterr().out == ""


@pytest.mark.tensorflow_backend
def test_global_batch_is_split_across_replicas(
    digits, mirrored_strategy, tmp_path
):
    x, y, x_val, y_val = digits
    BatchLog.runs = []
    tuner = keras_batchtune.BatchTuner(
        build_model,
        objective="val_accuracy",
        max_trials=3,
        seed=2,
        min_batch_size=8,
        max_batch_size=64,
        distribution_strategy=mirrored_strategy,
        directory=str(tmp_path),
    )
    tuner.search(
        x[:512], y[:512], epochs=1, validation_data=(x_val, y_val), verbose=0
    )
    trials = trials_in_order(tuner)
    assert len(trials) == 3
    assert len({t.hyperparameters["batch_size"] for t in trials}) == 3
    for trial, seen in zip(trials, seen_per_trial(), strict=True):
        batch_size = trial.hyperparameters["batch_size"]
        # Each of the 2 replicas computes on half of every global batch:
        # 512 / B full training batches, then the validation batches.
        assert max(seen) == batch_size // 2
        assert seen.count(batch_size // 2) >= 2 * (512 // batch_size)
        # The learning rate follows the global batch (reference 32).
        assert metric(trial, "effective_learning_rate") == pytest.approx(
            LEARNING_RATE * batch_size / 32
        )
        assert metric(trial, trial_fit.GLOBAL_BATCH_SIZE) == batch_size
        assert metric(trial, trial_fit.NUM_REPLICAS) == 2


@pytest.mark.tensorflow_backend
def test_per_replica_batch_and_out_of_memory_ceiling(
    digits, mirrored_strategy, tmp_path
):
    x, y, x_val, y_val = digits
    BatchLog.runs = []
    tuner = keras_batchtune.BatchTuner(
        lambda hp: build_model(hp, max_batch_size=16),  # per replica
        objective="val_accuracy",
        max_trials=3,
        seed=1,
        min_batch_size=8,
        max_batch_size=32,
        per_replica=True,
        distribution_strategy=mirrored_strategy,
        directory=str(tmp_path),
    )
    tuner.search(
        x[:256], y[:256], epochs=1, validation_data=(x_val, y_val), verbose=0
    )
    trials = trials_in_order(tuner)
    by_batch = {t.hyperparameters["batch_size"]: t for t in trials}
    assert sorted(by_batch) == [8, 16, 32]
    # 32 per replica (64 global) runs out of memory on the replicas; the
    # ceiling is in the units of the search: per replica.
    assert by_batch[32].status == "FAILED"
    assert by_batch[32].message == "out of memory at batch 32"
    assert tuner.oracle.batch_size_ceiling == 32
    completed = [by_batch[8], by_batch[16]]
    runs = {max(run): run for run in seen_per_trial() if max(run) <= 16}
    for trial in completed:
        batch_size = trial.hyperparameters["batch_size"]
        assert trial.status == "COMPLETED"
        # 256 / (2 B) global batches, B examples on each of the 2 replicas.
        steps = 256 // (2 * batch_size)
        assert runs[batch_size].count(batch_size) >= 2 * steps
        assert metric(trial, trial_fit.GLOBAL_BATCH_SIZE) == 2 * batch_size
        assert metric(trial, "effective_learning_rate") == pytest.approx(
            LEARNING_RATE * 2 * batch_size / 32
        )


@pytest.mark.tensorflow_backend
def test_accumulation_and_dynamic_trials_across_replicas(
    digits, mirrored_strategy, tmp_path
):
    # Keras 3's own gradient accumulation cannot be traced under a strategy
    # with several replicas; BatchTuner's accumulating retries and a dynamic
    # batch size both run across the two replicas of a real MirroredStrategy.
    x, y, x_val, y_val = digits
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [64])
    BatchLog.runs = []
    tuner = keras_batchtune.BatchTuner(
        lambda hp: build_model(hp, max_batch_size=16),  # per replica
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=hp,
        accumulate=True,
        distribution_strategy=mirrored_strategy,
        directory=str(tmp_path),
        project_name="accumulate",
    )
    tuner.search(
        x[:256], y[:256], epochs=1, validation_data=(x_val, y_val), verbose=0
    )
    (trial,) = trials_in_order(tuner)
    assert trial.status == "COMPLETED"
    # 64 global = 32 per replica ran out of memory; 2 micro-batches of 32
    # global (16 per replica) make each update.
    assert metric(trial, "micro_batch_size") == 32
    assert metric(trial, "accumulation_steps") == 2
    assert max(seen_per_trial()[-1]) == 16
    assert metric(trial, "effective_learning_rate") == pytest.approx(
        LEARNING_RATE * 64 / 32
    )

    dynamic = keras_batchtune.DynamicBatchSize(
        "schedule", schedule={1: 64}, min_batch_size=16, max_batch_size=64
    )
    tuner = keras_batchtune.BatchTuner(
        build_model,
        objective="val_accuracy",
        max_trials=1,
        min_batch_size=16,
        max_batch_size=16,
        dynamic=dynamic,
        distribution_strategy=mirrored_strategy,
        directory=str(tmp_path),
        project_name="dynamic",
    )
    tuner.search(
        x[:256], y[:256], epochs=2, validation_data=(x_val, y_val), verbose=0
    )
    (trial,) = trials_in_order(tuner)
    assert trial.status == "COMPLETED"
    sizes = trial.metrics.get_history("dynamic_batch_size")
    assert [entry.value[0] for entry in sizes] == [16, 64]


@pytest.mark.tensorflow_backend
def test_grid_holds_multiples_of_the_replica_count(mirrored_strategy, tmp_path):
    with pytest.warns(UserWarning, match=r"multiples of 2 \(2 replicas"):
        tuner = keras_batchtune.BatchTuner(
            build_model,
            objective="val_accuracy",
            min_batch_size=3,
            max_batch_size=50,
            distribution_strategy=mirrored_strategy,
            directory=str(tmp_path),
        )
    batch_hp = tuner.oracle.get_space().get_config()["space"]
    config = [h for h in batch_hp if h["config"]["name"] == "batch_size"][0]
    assert config["config"]["min_value"] == 4
    assert config["config"]["max_value"] == 50
    assert (tuner.min_batch_size, tuner.max_batch_size) == (4, 50)


@pytest.mark.tensorflow_backend
def test_less_than_one_example_per_replica_is_refused(
    mirrored_strategy, tmp_path
):
    # A minimum below the replica count is aligned up (issue 15); a maximum
    # below it leaves less than one example per replica: refused.
    with pytest.warns(UserWarning, match=r"\[1, 64\] is searched as \[2, 64\]"):
        tuner = keras_batchtune.BatchTuner(
            build_model,
            objective="val_accuracy",
            min_batch_size=1,
            max_batch_size=64,
            distribution_strategy=mirrored_strategy,
            directory=str(tmp_path / "aligned"),
        )
    assert tuner.min_batch_size == 2
    with pytest.raises(ValueError, match="less than one example per replica"):
        keras_batchtune.BatchTuner(
            build_model,
            objective="val_accuracy",
            min_batch_size=1,
            max_batch_size=1,
            distribution_strategy=mirrored_strategy,
            directory=str(tmp_path / "refused"),
        )
    assert not (tmp_path / "refused").exists()


@pytest.mark.tensorflow_backend
def test_uneven_batch_of_the_hypermodel_stops_the_search(
    digits, mirrored_strategy, tmp_path
):
    x, y, x_val, y_val = digits
    hp = keras_tuner.HyperParameters()
    hp.Fixed("batch_size", 9)
    tuner = keras_batchtune.BatchTuner(
        build_model,
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=hp,
        distribution_strategy=mirrored_strategy,
        directory=str(tmp_path),
    )
    with pytest.raises(ValueError, match="multiple of the 2 replicas"):
        tuner.search(x, y, validation_data=(x_val, y_val), verbose=0)


def test_per_replica_without_strategy_is_global_with_one_replica(
    digits, tmp_path
):
    x, y, x_val, y_val = digits
    BatchLog.runs = []
    tuner = keras_batchtune.BatchTuner(
        build_model,
        objective="val_accuracy",
        max_trials=2,
        seed=3,
        min_batch_size=16,
        max_batch_size=64,
        per_replica=True,
        directory=str(tmp_path),
    )
    tuner.search(
        x[:256], y[:256], epochs=1, validation_data=(x_val, y_val), verbose=0
    )
    trials = trials_in_order(tuner)
    assert len(trials) == 2
    for trial, seen in zip(trials, seen_per_trial(), strict=True):
        batch_size = trial.hyperparameters["batch_size"]
        assert max(seen) == batch_size
        assert metric(trial, trial_fit.GLOBAL_BATCH_SIZE) == batch_size
        assert metric(trial, trial_fit.NUM_REPLICAS) == 1
        assert metric(trial, "effective_learning_rate") == pytest.approx(
            LEARNING_RATE * batch_size / 32
        )


@pytest.mark.tensorflow_backend
def test_static_batches_drop_the_remainder_and_keep_validation(digits):
    x, y, _, _ = digits
    BatchLog.runs = []
    model = build_model(None)
    run = trial_fit.TrialFit(batch_size=64, drop_remainder=True)
    run.install(model)
    history = model.fit(x, y, epochs=2, validation_split=0.25, verbose=0)
    (seen,) = seen_per_trial()
    # 450 training examples: 7 full batches of 64 per epoch, the last 2
    # examples left out; 150 validation examples, all of them evaluated.
    assert seen.count(64) == 2 * 7 + 2 * 2
    assert sorted(set(seen)) == [22, 64]
    assert len(history.history["val_loss"]) == 2
    assert run._recorders[0].examples_per_epoch == 448


@pytest.mark.tensorflow_backend
def test_static_batches_of_a_dataset(digits):
    import tensorflow as tf

    x, y, x_val, y_val = digits
    dataset = tf.data.Dataset.from_tensor_slices((x[:100], y[:100]))
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val))
    args, kwargs = distribute.static_batches(
        (dataset,), {"validation_data": validation, "shuffle": True}, 32
    )
    assert args == ()
    assert kwargs["shuffle"] is False  # Keras warns about shuffle=True
    assert [int(b[0].shape[0]) for b in kwargs["x"]] == [32, 32, 32]
    sizes = [int(b[0].shape[0]) for b in kwargs["validation_data"]]
    assert sum(sizes) == 200
    with pytest.raises(ValueError, match="fewer than one batch of 128"):
        distribute.static_batches((x[:100], y[:100]), {}, 128)


@pytest.mark.tensorflow_backend
def test_strategy_helpers(mirrored_strategy):
    assert distribute.num_replicas(None) == 1
    assert distribute.num_replicas(mirrored_strategy) == 2
    assert not distribute.is_tpu_strategy(mirrored_strategy)
    assert not distribute.is_multi_worker(mirrored_strategy)
    assert distribute.per_replica_multiple(mirrored_strategy) == 1


def test_helpers_without_a_strategy():
    model = build_model(None)
    if BACKEND != "tensorflow":
        assert distribute.model_strategy(model) is None
        # One process trains it already: no local copy to make.
        assert distribute.local_model_copy(model) is model
    strategy = distribute.model_strategy(model)
    assert distribute.num_replicas(None) == 1
    assert not distribute.is_tpu_strategy(strategy)
    assert not distribute.is_multi_worker(strategy)
    assert distribute.per_replica_multiple(strategy) == 1
    assert distribute.aligned_batch_range(3, 50, strategy, False) == (3, 50)


@pytest.mark.skipif(
    BACKEND == "tensorflow", reason="tf.distribute exists on TensorFlow"
)
@pytest.mark.parametrize(
    "ask",
    [
        lambda: keras_batchtune.resolve_strategy(),
        lambda: keras_batchtune.resolve_strategy(tpu="local"),
        lambda: keras_batchtune.patch_for_multi_worker(build_model(None)),
    ],
    ids=["resolve_strategy", "resolve_strategy_tpu", "patch_for_multi_worker"],
)
def test_tf_distribute_features_name_the_backend_and_the_way_instead(
    ask, request
):
    if BACKEND == "jax" and "resolve_strategy" in request.node.name:
        # On JAX it returns a keras.distribution.DataParallel (issue 15;
        # tests/backend/jax/test_data_parallel_tuner.py).
        pytest.skip("resolve_strategy resolves a keras.distribution on JAX")
    with pytest.raises(ValueError) as raised:
        ask()
    message = str(raised.value)
    assert "needs `tf.distribute`" in message
    assert f"the configured Keras backend is {BACKEND!r}" in message
    assert "KERAS_BACKEND=tensorflow" in message
    assert "KERASTUNER_TUNER_ID" in message  # the distributed search
    if BACKEND == "jax":
        assert "keras.distribution.DataParallel()" in message
        assert "keras.distribution.initialize()" in message
    else:
        assert "`keras.distribution` is implemented for JAX only" in message


@pytest.mark.skipif(
    BACKEND == "tensorflow", reason="tf.distribute exists on TensorFlow"
)
def test_strategy_only_helpers_refuse_without_tf_distribute(digits):
    x, y, _, _ = digits
    if BACKEND == "torch":
        with pytest.raises(ValueError, match="needs `tf.distribute`"):
            distribute.static_batches((x, y), {}, 32)
    else:
        # JAX: full batches for TPU cores, through `resizable`.
        _, kwargs = distribute.static_batches((x, y), {}, 32)
        assert isinstance(kwargs["x"], keras_batchtune.ResizableData)
    with pytest.raises(ValueError, match="needs `tf.distribute`"):
        distribute.gather_from_replicas(None, [1])
    # One worker: nothing to agree on.
    assert distribute.first_worker_values(None, [2, 3]) == (2.0, 3.0)
    distribute.check_workers_agree(None, 32)


@pytest.mark.skipif(BACKEND == "jax", reason="keras.distribution on JAX")
def test_keras_distribution_is_refused_off_jax(tmp_path):
    distribution = keras.distribution.DataParallel(devices=["cpu:0"])
    for name in ("distribution", "distribution_strategy"):
        directory = tmp_path / name
        with pytest.raises(ValueError) as raised:
            keras_batchtune.BatchTuner(
                build_model,
                objective="val_accuracy",
                directory=str(directory),
                **{name: distribution},
            )
        message = str(raised.value)
        assert f"`{name}`" in message
        assert f"the configured Keras backend is {BACKEND!r}" in message
        assert "KERAS_BACKEND=jax" in message
        assert not directory.exists()
    if BACKEND == "torch":
        assert keras_batchtune.resolve_distribution(verbose=False) is None


WORKER = """
import json, os, sys
sys.path.insert(0, {root!r})
import keras
import keras_tuner
import numpy as np
import tensorflow as tf
import keras_batchtune

index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
strategy = keras_batchtune.resolve_strategy()
seen = []


class BatchLog(keras.layers.Layer):
    # Records the batch size this worker's replica computes on.
    def call(self, inputs):
        def record(size):
            seen.append(int(size))
            return size

        size = tf.py_function(record, [tf.shape(inputs)[0]], tf.int32)
        size.set_shape([])
        return inputs + 0.0 * tf.cast(size, inputs.dtype)


def build(hp):
    model = keras.Sequential([
        keras.Input((8,)),
        BatchLog(),
        keras.layers.Dense(hp.Choice("units", [4, 8]), activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.1),
                  "sparse_categorical_crossentropy")
    return model


rng = np.random.default_rng(0)
x = rng.random((128, 8)).astype("float32")
y = rng.integers(0, 2, 128)
workdir = os.environ["WORKDIR"]
tuner = keras_batchtune.BatchTuner(
    build, objective="loss", max_trials=2, seed=7, min_batch_size=8,
    max_batch_size=32, distribution_strategy=strategy,
    directory=workdir, project_name="agree")
tuner.search(x, y, epochs=1, verbose=0)
trials = [tuner.oracle.trials[i] for i in tuner.oracle.start_order]
result = {{
    "multi_worker": isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy),
    "replicas": strategy.num_replicas_in_sync,
    "trials": [[t.status, t.hyperparameters.values["batch_size"],
                t.hyperparameters.values["units"],
                t.metrics.get_last_value("effective_learning_rate")]
               for t in trials],
    "seen_max": max(seen),
    "seen": sorted(set(seen)),
}}

# A plain fit that resizes its batch across both workers: each worker's
# schedule asks for another batch (as timings or local measurements could);
# both apply worker 0's choice, by accumulation across the replicas.
with strategy.scope():
    model = build(keras_tuner.HyperParameters())
keras_batchtune.patch_for_multi_worker(model)
dynamic = keras_batchtune.DynamicBatchSize(
    "schedule", schedule=lambda epoch: 16 if epoch == 0 else 32 * (index + 1),
    min_batch_size=16, max_batch_size=128)
history = model.fit(keras_batchtune.resizable(x, y, batch_size=16,
                                              shuffle=False),
                    epochs=3, callbacks=[dynamic], verbose=0)
result["dynamic_batch_sizes"] = history.history["batch_size"]
result["dynamic_updates"] = int(
    keras.ops.convert_to_numpy(model.optimizer.iterations))
result["dynamic_weights"] = float(
    sum(float(np.abs(w).sum()) for w in model.get_weights()))

# Workers given different batch sizes (the same model) find out before
# training, all of them: their gradients have the same shapes, so nothing
# else would tell, and one would wait for the other at the end of an epoch.
hp = keras_tuner.HyperParameters()
hp.Fixed("batch_size", 8 if index == 0 else 16)
other = keras_batchtune.BatchTuner(
    build, objective="loss", max_trials=1, hyperparameters=hp, seed=7,
    distribution_strategy=strategy, directory=workdir,
    project_name="disagree")
try:
    other.search(x, y, epochs=1, verbose=0)
    result["disagreement"] = "not noticed"
except ValueError as error:
    result["disagreement"] = str(error)
print("RESULT", json.dumps(result), flush=True)
"""


@pytest.mark.tensorflow_backend
def test_multi_worker_trial_agrees_on_batch_sizes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))
    processes = start_workers(
        script,
        [
            {"TF_CPP_MIN_LOG_LEVEL": "3", "WORKDIR": str(tmp_path / "worker0")},
            {"TF_CPP_MIN_LOG_LEVEL": "3", "WORKDIR": str(tmp_path / "worker1")},
        ],
    )
    try:
        # Waits for both to exit (or the first to fail); no time window.
        outputs = worker_results(processes)
    finally:
        for process in processes:
            process.kill()
    for out, _ in outputs:
        assert (
            "keras_batchtune: using MultiWorkerMirroredStrategy with 2 "
            "replicas in sync (TF_CONFIG names 2 workers)." in out
        )
    results = [result for _, result in outputs]
    first, second = results
    assert first["multi_worker"] and second["multi_worker"]
    assert first["replicas"] == second["replicas"] == 2
    # Both workers ran the same trials, with the same batch sizes and the
    # same learning rates, coupled to the global batch (reference 32).
    assert first["trials"] == second["trials"]
    assert len(first["trials"]) == 2
    for status, batch_size, _, learning_rate in first["trials"]:
        assert status == "COMPLETED"
        assert learning_rate == pytest.approx(0.1 * batch_size / 32)
    # Each worker's replica computed on half of each global batch.
    largest = max(t[1] for t in first["trials"])
    assert first["seen_max"] == second["seen_max"] == largest // 2
    # The resize: worker 1's schedule said 64, both trained at worker 0's
    # 32, so with the same updates and the same weights.
    assert first["dynamic_batch_sizes"] == [16, 32, 32]
    assert second["dynamic_batch_sizes"] == first["dynamic_batch_sizes"]
    # 128 examples: 8 updates of 16, then 4 of 32 twice.
    assert first["dynamic_updates"] == second["dynamic_updates"] == 16
    assert first["dynamic_weights"] == pytest.approx(
        second["dynamic_weights"], rel=1e-6
    )
    for result in results:
        assert "disagree on the batch size" in result["disagreement"]
        assert "[8, 16]" in result["disagreement"]
