import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import MemoryLimit
from conftest import make_mlp
from conftest import start_workers
from conftest import worker_results

import keras_batchtune
from keras_batchtune import memory


def test_allocator_out_of_memory_is_recognised():
    # A real failure of TensorFlow's CPU allocator: 2**60 bytes.
    try:
        tf.zeros([1 << 20, 1 << 38])
    except Exception as error:  # noqa: BLE001 - the error is the subject
        assert isinstance(error, tf.errors.ResourceExhaustedError)
        assert memory.is_out_of_memory_error(error)
    else:
        raise AssertionError("the allocator accepted a 4 EiB tensor")


def test_other_errors_are_not_out_of_memory():
    assert not memory.is_out_of_memory_error(ValueError("shapes"))
    assert not memory.is_out_of_memory_error(
        tf.errors.InvalidArgumentError(None, None, "bad")
    )


def snapshot(model):
    return [v.numpy().copy() for v in model.weights] + [
        np.array(v.numpy()).copy() for v in model.optimizer.variables
    ]


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
    after = snapshot(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_binsearch_bisects_and_margin_is_respected(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05, max_batch_size=100)
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), mode="binsearch", start=16, margin=0.2
    )
    assert result.largest_fitting == 100
    assert result.batch_size == 80
    tried = [p.batch_size for p in result.probes]
    assert tried[:4] == [16, 32, 64, 128]
    assert all(p.fits == (p.batch_size <= 100) for p in result.probes)


def test_max_batch_size_caps_the_search(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05)
    result = keras_batchtune.find_max_batch_size(
        model, (x, y), start=16, max_batch_size=50
    )
    assert [p.batch_size for p in result.probes] == [16, 32, 50]
    assert result.batch_size == 50
    # Without a cap, the data size is the cap.
    dataset = tf.data.Dataset.from_tensor_slices((x[:40], y[:40]))
    result = keras_batchtune.find_max_batch_size(model, dataset, start=16)
    assert [p.batch_size for p in result.probes] == [16, 32, 40]


def test_smallest_batch_not_fitting_is_said_clearly(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05, max_batch_size=3)
    message = r"smallest batch size tried, 4 \(start=4\), runs out of memory"
    with pytest.raises(RuntimeError, match=message):
        keras_batchtune.find_max_batch_size(model, (x, y), start=4)


def test_other_errors_propagate(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05)
    with pytest.raises(ValueError):
        keras_batchtune.find_max_batch_size(model, (x[:, :10], y), start=4)


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


class ReplicaMemoryLimit(MemoryLimit):
    """`MemoryLimit` with a different per-replica limit on each replica."""

    def __init__(self, limits, **kwargs):
        super().__init__(max(limits), **kwargs)
        self.limits = limits

    def call(self, inputs):
        context = tf.distribute.get_replica_context()
        if context is None:  # building the model, in cross-replica context
            return inputs
        replica = context.replica_id_in_sync_group
        limit = tf.gather(tf.constant(self.limits), replica)
        rows = tf.maximum(tf.shape(inputs)[0] - limit, 0) * (1 << 20)
        impossible = tf.fill(tf.stack([rows, 1 << 20]), inputs[0, 0])
        return inputs + 0.0 * tf.reduce_sum(impossible)


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


def test_batched_dataset_is_probed_at_each_batch_size(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05, max_batch_size=100)
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    result = keras_batchtune.find_max_batch_size(
        model, batched, start=16, mode="binsearch"
    )
    assert result.batch_size == 100


WORKER = """
import json, os, sys
sys.path.insert(0, {root!r})
import keras
import numpy as np
import tensorflow as tf
import keras_batchtune


class MemoryLimit(keras.layers.Layer):
    # Error injection, as in conftest.py: above the limit, ask the allocator
    # for an impossible tensor; it raises its real ResourceExhaustedError.
    def __init__(self, max_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.max_batch_size = max_batch_size

    def call(self, inputs):
        rows = tf.maximum(tf.shape(inputs)[0] - self.max_batch_size, 0)
        impossible = tf.fill(tf.stack([rows * (1 << 20), 1 << 20]),
                             inputs[0, 0])
        return inputs + 0.0 * tf.reduce_sum(impossible)

    def get_config(self):
        return {{**super().get_config(),
                 "max_batch_size": self.max_batch_size}}


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


def test_workers_with_different_limits_agree(tmp_path):
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=root))
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
