"""Shared test set-up: quiet TensorFlow, two logical CPUs, tiny digits data."""

import json
import os
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's default CPU allocator raises its out-of-memory error at once;
# the oneDNN allocator first waits ~10 s for memory to be freed, per failure.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

# Two logical CPU devices make a real MirroredStrategy on one CPU. This must
# run before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)


@pytest.fixture(scope="session")
def digits():
    """Digits split into (x_train, y_train, x_val, y_val), 600/200 examples."""
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("int32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return x[:600], y[:600], x[600:800], y[600:800]


class MemoryLimit(keras.layers.Layer):
    """Identity layer that runs out of memory above a batch size.

    Error injection: CPUs have no memory ceiling to hit with tiny models, so
    this layer asks TensorFlow's allocator for a tensor of at least 4 TiB
    whenever the batch exceeds `max_batch_size`. The allocator then raises
    its real `tf.errors.ResourceExhaustedError`; nothing is faked.
    """

    def __init__(self, max_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.max_batch_size = max_batch_size

    def call(self, inputs):
        batch_size = tf.shape(inputs)[0]
        rows = tf.maximum(batch_size - self.max_batch_size, 0) * (1 << 20)
        impossible = tf.fill(tf.stack([rows, 1 << 20]), inputs[0, 0])
        return inputs + 0.0 * tf.reduce_sum(impossible)

    def get_config(self):
        return {**super().get_config(), "max_batch_size": self.max_batch_size}


def make_mlp(learning_rate=0.05, units=32, max_batch_size=None, **compile_kw):
    """A compiled 64-units-10 MLP for digits, optionally memory-limited."""
    layers = [keras.Input((64,))]
    if max_batch_size is not None:
        layers.append(MemoryLimit(max_batch_size))
    layers += [
        keras.layers.Dense(units, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=compile_kw.pop(
            "optimizer", keras.optimizers.SGD(learning_rate, momentum=0.9)
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        **compile_kw,
    )
    return model


class LearningRateLog(keras.callbacks.Callback):
    """Logs the optimizer's learning rate (and the batch size) per fit.

    The log is a class attribute so that it survives KerasTuner's deep copy
    of the search callbacks.
    """

    log = []

    def on_train_begin(self, logs=None):
        LearningRateLog.log.append(
            {
                "begin": float(self.model.optimizer.learning_rate),
                "steps": self.params.get("steps"),
                "epochs": self.params.get("epochs"),
            }
        )

    def on_train_batch_begin(self, batch, logs=None):
        entry = LearningRateLog.log[-1]
        entry.setdefault("per_step", []).append(
            float(self.model.optimizer.learning_rate)
        )


@pytest.fixture
def lr_log():
    """A fresh `LearningRateLog` callback and its log."""
    LearningRateLog.log = []
    return LearningRateLog()


@pytest.fixture(scope="session")
def mirrored_strategy():
    """A real MirroredStrategy over the two logical CPU devices.

    One per test session: each new MirroredStrategy in a process restarts its
    collective instance keys, which can meet a previous strategy's ops.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def free_port():
    """A TCP port on 127.0.0.1 that is free now, for a test's processes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse(output, prefix):
    """The JSON payloads of a process's output lines `PREFIX {...}`."""
    return [
        json.loads(line.split(" ", 1)[1])
        for line in output.splitlines()
        if line.startswith(prefix + " ")
    ]


def start_workers(script, extra_envs):
    """Starts `script` once per worker of a cluster on 127.0.0.1.

    Each process gets a `TF_CONFIG` naming every worker (on free ports) and
    its own index, plus its entry of `extra_envs`.

    Args:
        script: Path of the Python script each worker runs.
        extra_envs: One dict of extra environment variables per worker.

    Returns:
        The `subprocess.Popen` objects, in worker order (kill them when
        done, say in a `finally`).
    """
    workers = [f"127.0.0.1:{free_port()}" for _ in extra_envs]
    processes = []
    for index, extra_env in enumerate(extra_envs):
        config = {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
        }
        env = {**os.environ, "TF_CONFIG": json.dumps(config), **extra_env}
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    return processes


def worker_results(processes, timeout):
    """Waits for each worker; returns its stdout and its `RESULT` payload.

    Raises:
        AssertionError: with the end of its stderr, if a worker failed.
    """
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-3000:]
        outputs.append((out, parse(out, "RESULT")[0]))
    return outputs
