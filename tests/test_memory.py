"""`find_max_batch_size` and out-of-memory recognition, on every backend.

The out-of-memory errors here are real: `conftest.make_mlp(max_batch_size=N)`
inserts a layer that, above batch N, asks the backend's allocator for an
impossible tensor (error injection, `tests/backend_faults.py`), and the
allocator raises its own error: TensorFlow's `ResourceExhaustedError`,
JAX's `RESOURCE_EXHAUSTED` `JaxRuntimeError` (at trace time), PyTorch's CPU
allocator `RuntimeError`. Each backend's recognition of its errors raised
directly is tested in `tests/backend/<backend>/test_memory.py`.
"""

import math
import os

import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import MemoryLimit
from conftest import make_mlp
from conftest import start_workers
from conftest import worker_results

import keras_batchtune
from keras_batchtune import backend
from keras_batchtune import memory


def out_of_memory_error_from_fit(x, y):
    """The error a real out-of-memory training step raises through `fit`."""
    model = make_mlp(0.05, max_batch_size=8)
    try:
        model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
    except Exception as error:  # noqa: BLE001 - the error is the subject
        return error
    raise AssertionError("a batch of 16 fitted under a limit of 8")


def test_out_of_memory_raised_through_fit_is_recognised(digits):
    x, y, _, _ = digits
    error = out_of_memory_error_from_fit(x, y)
    assert memory.is_out_of_memory_error(error)
    # As Keras re-raises an error met inside a layer: the original is the
    # cause of a RuntimeError that names the layer.
    try:
        raise RuntimeError("Exception encountered when calling layer") from (
            error
        )
    except RuntimeError as wrapped:
        assert memory.is_out_of_memory_error(wrapped)
    try:
        try:
            raise error
        except Exception:  # noqa: BLE001
            raise RuntimeError("while handling it, another error")  # noqa: B904
    except RuntimeError as chained:
        assert memory.is_out_of_memory_error(chained)


def test_other_errors_are_not_out_of_memory():
    assert not memory.is_out_of_memory_error(ValueError("shapes"))
    assert not memory.is_out_of_memory_error(RuntimeError("not memory"))
    # A cycle of causes ends.
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__cause__, second.__cause__ = second, first
    assert not memory.is_out_of_memory_error(first)


def snapshot(model):
    """Host copies of the model's and its optimizer's variables."""
    return [
        np.array(keras.ops.convert_to_numpy(v), copy=True)
        for v in model.weights + model.optimizer.variables
    ]


def assert_bit_exact(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_power_mode_doubles_until_out_of_memory(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05, max_batch_size=100)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # real state
    before = snapshot(model)
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), start=4, max_batch_size=512
    )
    assert [p.batch_size for p in result.probes] == [4, 8, 16, 32, 64, 128]
    assert [p.fits for p in result.probes] == [True] * 5 + [False]
    assert all(p.seconds > 0 for p in result.probes)
    assert result.batch_size == result.largest_fitting == 64
    assert len(result.probes) <= math.ceil(math.log2(512 / 4)) + 1
    assert_bit_exact(before, snapshot(model))


@pytest.mark.parametrize("limit", [100, 37])
def test_binsearch_finds_the_limit_exactly(digits, limit):
    x, y, _, _ = digits
    model = make_mlp(0.05, max_batch_size=limit)
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), mode="binsearch", start=16
    )
    assert result.largest_fitting == result.batch_size == limit
    assert all(p.fits == (p.batch_size <= limit) for p in result.probes)
    tried = [p.batch_size for p in result.probes]
    assert tried[:3] == [16, 32, 64]
    # The limit and the batch above it were both tried.
    assert limit in tried and limit + 1 in tried


def test_margin_is_taken_off_the_largest_fitting(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05, max_batch_size=100)
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), mode="binsearch", start=16, margin=0.2
    )
    assert result.largest_fitting == 100
    assert result.batch_size == 80


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        lambda: keras.optimizers.Adam(1e-3),
    ],
    ids=["sgd_momentum", "adam"],
)
def test_weights_and_optimizer_state_are_restored_bit_exactly(
    digits, optimizer
):
    x, y, _, _ = digits
    model = make_mlp(max_batch_size=40, optimizer=optimizer())
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    assert iterations == math.ceil(len(x) / 32)
    before = snapshot(model)
    # The optimizer holds slots (momentum; Adam's two moments) besides its
    # iteration count and learning rate: all are part of the copy.
    slots = len(model.optimizer.variables) - 2
    assert slots >= len(model.trainable_variables)
    assert any(np.any(value != 0) for value in before[len(model.weights) :])
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), mode="binsearch", start=8, max_batch_size=128
    )
    assert result.batch_size == 40
    # The last probe ran out of memory (41): the state is back all the same.
    assert not result.probes[-1].fits
    assert_bit_exact(before, snapshot(model))
    assert (
        int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        == iterations
    )
    # And the model trains on from there, at the batch size found.
    history = model.fit(x, y, batch_size=result.batch_size, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(
        keras.ops.convert_to_numpy(model.optimizer.iterations)
    ) == iterations + math.ceil(len(x) / result.batch_size)


def test_seed_and_metric_state_survive_a_failed_last_probe(digits):
    # On JAX a training step takes the model's whole state (seed generators
    # and metrics included) off its variables: a step that fails leaves
    # them empty unless they are put back too.
    x, y, _, _ = digits
    model = keras.Sequential(
        [
            keras.Input((64,)),
            MemoryLimit(20),
            keras.layers.Dropout(0.5, seed=1),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        "sgd", "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    weights = {id(v) for v in model.weights}
    (seed_state,) = [v for v in model.variables if id(v) not in weights]
    seed_before = keras.ops.convert_to_numpy(seed_state).copy()
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), mode="binsearch", start=16, max_batch_size=32
    )
    assert result.batch_size == 20 and not result.probes[-1].fits
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(seed_state), seed_before
    )
    for variable in model.metrics_variables:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(variable)))
    logs = model.evaluate(x, y, batch_size=20, verbose=0, return_dict=True)
    assert 0.0 <= logs["accuracy"] <= 1.0


def test_backend_tensors_are_accepted(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05, max_batch_size=50)
    data = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))
    result = keras_batchtune.find_max_batch_size(
        model, data, mode="binsearch", start=16, max_batch_size=64
    )
    assert result.batch_size == 50


class SubclassedMLP(keras.Model):
    def __init__(self, max_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.limit = MemoryLimit(max_batch_size)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(10, activation="softmax")

    def call(self, inputs):
        return self.out(self.hidden(self.limit(inputs)))


def test_unbuilt_model_is_built_first_and_restored(digits):
    x, y, _, _ = digits
    model = SubclassedMLP(max_batch_size=24)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        "sparse_categorical_crossentropy",
    )
    assert not model.built
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), mode="binsearch", start=8, max_batch_size=64
    )
    assert result.batch_size == 24
    assert model.built
    # Built on one example, not trained: the iteration count is still 0.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def test_max_batch_size_caps_the_search(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05)
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), start=16, max_batch_size=50
    )
    assert [p.batch_size for p in result.probes] == [16, 32, 50]
    assert result.batch_size == 50
    # Without a cap, the data size is the cap.
    result = keras_batchtune.find_max_batch_size(
        model, (x[:40], y[:40]), start=16
    )
    assert [p.batch_size for p in result.probes] == [16, 32, 40]


def test_smallest_batch_not_fitting_is_said_clearly(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05, max_batch_size=3)
    message = r"smallest batch size tried, 4 \(start=4\), runs out of memory"
    with pytest.raises(RuntimeError, match=message):
        keras_batchtune.find_max_batch_size(model, (x, y), start=4)


class FailAbove(keras.layers.Layer):
    """Raises a RuntimeError that is not about memory above a batch size."""

    def __init__(self, max_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.max_batch_size = max_batch_size

    def call(self, inputs):
        batch_size = inputs.shape[0]
        if batch_size is not None and batch_size > self.max_batch_size:
            raise RuntimeError(f"not a memory problem at batch {batch_size}")
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@pytest.mark.skipif(
    BACKEND == "tensorflow",
    reason="TensorFlow traces a step once with a dynamic batch dimension",
)
def test_other_runtime_errors_propagate(digits):
    # On JAX and PyTorch the batch is static in a step, and PyTorch's
    # CPU out-of-memory error is itself a RuntimeError: only the allocator's
    # message makes it one.
    x, y, _, _ = digits
    model = keras.Sequential(
        [
            keras.Input((64,)),
            FailAbove(20),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(RuntimeError, match="not a memory problem at batch 32"):
        keras_batchtune.find_max_batch_size(model, (x, y), start=16)


def test_other_errors_propagate(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05)
    # Keras raises a ValueError for the wrong input shape (a RuntimeError
    # saying it cannot build the model before Keras 3.14): either way the
    # error itself, not an out-of-memory answer.
    with pytest.raises((ValueError, RuntimeError)) as raised:
        keras_batchtune.find_max_batch_size(model, (x[:, :10], y), start=4)
    assert not backend.memory.is_out_of_memory_error(raised.value)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"start": 0}, "start"),
        ({"start": 64, "max_batch_size": 32}, "max_batch_size"),
        ({"mode": "linear"}, "mode"),
        ({"margin": 1.0}, "margin"),
        ({"margin": -0.1}, "margin"),
        ({"steps_per_trial": 0}, "steps_per_trial"),
    ],
)
def test_bad_input(digits, kwargs, name):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match=f"`{name}`"):
        keras_batchtune.find_max_batch_size(make_mlp(), (x, y), **kwargs)


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // 10

    def __getitem__(self, index):
        part = slice(index * 10, (index + 1) * 10)
        return self.x[part], self.y[part]


def test_data_with_fixed_batches_is_refused(digits):
    x, y, _, _ = digits
    message = r"`data` must be .* Received: data of type Batches"
    with pytest.raises(ValueError, match=message):
        keras_batchtune.find_max_batch_size(make_mlp(), Batches(x, y))
    generator = ((x[i : i + 10], y[i : i + 10]) for i in range(0, 600, 10))
    with pytest.raises(ValueError, match="data of type generator"):
        keras_batchtune.find_max_batch_size(make_mlp(), generator)


@pytest.mark.requires_tensorflow
def test_datasets_are_probed_at_each_batch_size(digits):
    import tensorflow as tf

    x, y, _, _ = digits
    model = make_mlp(0.05)
    dataset = tf.data.Dataset.from_tensor_slices((x[:40], y[:40]))
    result = keras_batchtune.find_max_batch_size(model, dataset, start=16)
    assert [p.batch_size for p in result.probes] == [16, 32, 40]
    model = make_mlp(0.05, max_batch_size=100)
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    result = keras_batchtune.find_max_batch_size(
        model, batched, start=16, mode="binsearch"
    )
    assert result.batch_size == 100


class ReplicaMemoryLimit(MemoryLimit):
    """`MemoryLimit` with a different per-replica limit on each replica."""

    def __init__(self, limits, **kwargs):
        super().__init__(max(limits), **kwargs)
        self.limits = limits

    def call(self, inputs):
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None:  # building the model, in cross-replica context
            return inputs
        replica = context.replica_id_in_sync_group
        limit = tf.gather(tf.constant(self.limits), replica)
        rows = tf.maximum(tf.shape(inputs)[0] - limit, 0) * (1 << 20)
        impossible = tf.fill(tf.stack([rows, 1 << 20]), inputs[0, 0])
        return inputs + 0.0 * tf.reduce_sum(impossible)


@pytest.mark.tensorflow_backend
@pytest.mark.parametrize("mode", ["power", "binsearch"])
def test_replicas_with_different_limits_agree(digits, mirrored_strategy, mode):
    x, y, _, _ = digits
    with mirrored_strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((64,)),
                ReplicaMemoryLimit([64, 32]),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile("sgd", "sparse_categorical_crossentropy")
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), mode=mode, start=8, max_batch_size=72
    )
    # Replica 0 fits 64 examples, replica 1 only 32: the global batch 64
    # (32 per replica) is the largest both run; 66 (33 each) fails on
    # replica 1. Only even global batches are tried.
    assert result.batch_size == 64
    assert all(p.batch_size % 2 == 0 for p in result.probes)
    assert [p.fits for p in result.probes if p.batch_size > 64] == [False] * (
        len([p for p in result.probes if p.batch_size > 64])
    )


WORKER = """
import json, os, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import keras
import numpy as np
import tensorflow as tf
import backend_faults
import keras_batchtune


class MemoryLimit(keras.layers.Layer):
    # Error injection, as in conftest.py: above the limit, the allocator is
    # asked for an impossible tensor and raises its ResourceExhaustedError.
    def __init__(self, max_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.max_batch_size = max_batch_size

    def call(self, inputs):
        return backend_faults.allocate_above(inputs, self.max_batch_size)


strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([
        keras.Input((8,)),
        MemoryLimit(int(os.environ["PER_REPLICA_LIMIT"])),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile("sgd", "sparse_categorical_crossentropy")
x = np.random.rand(256, 8).astype("float32")
y = np.random.randint(0, 2, 256)
result = keras_batchtune.find_max_batch_size(
    model, (x, y), mode="binsearch", start=4, max_batch_size=256)
print("RESULT", json.dumps([result.batch_size, len(result.probes)]))
"""


@pytest.mark.tensorflow_backend
def test_workers_with_different_limits_agree(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=os.path.dirname(tests), tests=tests))
    processes = start_workers(
        script, [{"PER_REPLICA_LIMIT": str(limit)} for limit in (40, 24)]
    )
    try:
        results = [result for _, result in worker_results(processes, 120)]
    finally:
        for process in processes:
            process.kill()
    # Two workers, one replica each: worker 1 fits 24 per replica, so the
    # global batch 48 is the largest both run.
    assert results[0][0] == results[1][0] == 48
