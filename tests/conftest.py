"""Shared test set-up: quiet TensorFlow, two logical CPUs, tiny digits data.

The suite runs under each Keras backend (`KERAS_BACKEND=tensorflow`, `jax`
or `torch`). Tests that need the TensorFlow backend (`tf.distribute`, the
TensorFlow-only parts) carry `@pytest.mark.tensorflow_backend` and are
skipped on the others; tests that need TensorFlow installed (a
`tf.data.Dataset` as input, on any backend) carry
`@pytest.mark.requires_tensorflow`. Everything else runs on every backend.
"""

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's default CPU allocator raises its out-of-memory error at once;
# the oneDNN allocator first waits ~10 s for memory to be freed, per failure.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import importlib.util  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

BACKEND = keras.config.backend()
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPU devices make a real MirroredStrategy on one CPU. This
    # must run before TensorFlow initialises its devices.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "tensorflow_backend: needs KERAS_BACKEND=tensorflow (skipped else)",
    )
    config.addinivalue_line(
        "markers",
        "requires_tensorflow: needs TensorFlow installed (any backend)",
    )


def pytest_collection_modifyitems(config, items):
    not_tf_backend = pytest.mark.skip(
        reason=f"needs the TensorFlow backend; this run is on {BACKEND}"
    )
    no_tf = pytest.mark.skip(reason="needs TensorFlow installed")
    for item in items:
        if BACKEND != "tensorflow" and "tensorflow_backend" in item.keywords:
            item.add_marker(not_tf_backend)
        if not HAS_TENSORFLOW and "requires_tensorflow" in item.keywords:
            item.add_marker(no_tf)


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
    whenever the batch exceeds `max_batch_size` this layer asks the
    backend's allocator for an impossible tensor (4 TiB and more). The
    allocator then raises its real error: TensorFlow's
    `tf.errors.ResourceExhaustedError`, JAX's `RESOURCE_EXHAUSTED`
    `JaxRuntimeError` (the batch is static while JAX traces a step), or
    PyTorch's CPU allocator `RuntimeError`; nothing is faked
    (`tests/backend_faults.py`).
    """

    def __init__(self, max_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.max_batch_size = max_batch_size

    def call(self, inputs):
        import backend_faults

        return backend_faults.allocate_above(inputs, self.max_batch_size)

    def compute_output_shape(self, input_shape):
        return input_shape

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
    if BACKEND != "tensorflow":
        pytest.skip(
            f"MirroredStrategy needs the TensorFlow backend ({BACKEND})"
        )
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


HANG_TIMEOUT = 600
"""Seconds after which a test stops waiting for a process: only a hang."""


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


def worker_results(processes, timeout=HANG_TIMEOUT):
    """Waits for every worker; returns its stdout and its `RESULT` payload.

    The workers are waited for together: the first that fails ends the
    wait at once (the others, which would wait for it forever in a
    collective, are killed), with its stderr in the error. `timeout` only
    stops a hang; it never judges speed.

    Args:
        processes: The `subprocess.Popen` objects of `start_workers`.
        timeout: Seconds after which workers still running are killed.

    Returns:
        `(stdout, result)` per worker, in worker order.

    Raises:
        AssertionError: naming the worker, with the end of its stderr, if
            one failed; or naming those still running after `timeout`.
    """
    ended = queue.Queue()

    def wait(index, process):
        ended.put((index, *process.communicate()))

    for index, process in enumerate(processes):
        threading.Thread(
            target=wait, args=(index, process), daemon=True
        ).start()
    deadline = time.monotonic() + timeout
    streams = {}
    try:
        while len(streams) < len(processes):
            left = deadline - time.monotonic()
            try:
                index, out, err = ended.get(timeout=max(left, 0))
            except queue.Empty:
                running = sorted(set(range(len(processes))) - set(streams))
                raise AssertionError(
                    f"workers {running} still running after {timeout:g} s "
                    "(a hang: this timeout never judges speed)"
                ) from None
            streams[index] = (out, err)
            code = processes[index].returncode
            assert code == 0, (
                f"worker {index} exited with {code}: {err[-3000:]}"
            )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return [
        (streams[i][0], parse(streams[i][0], "RESULT")[0])
        for i in range(len(processes))
    ]


def run_chief_and_workers(script, extra_env, timeout=HANG_TIMEOUT):
    """Runs KerasTuner's distributed search: a chief and two workers.

    `script` runs in three processes on 127.0.0.1, as `chief`, `tuner0`
    and `tuner1` (`KERASTUNER_TUNER_ID`), the chief's oracle on a free port.
    The workers are waited for, then the chief (it leaves once both have
    been told to stop). `timeout` only stops a hang.

    Args:
        script: Path of the Python script every process runs.
        extra_env: Extra environment variables of every process.
        timeout: Seconds each process may take before it counts as hung.

    Returns:
        `(outputs, seconds)`: each role's stdout, and the wall time.

    Raises:
        AssertionError: naming the role, with the end of its stderr, if a
            process exits with an error.
    """
    port = str(free_port())
    processes = {}
    begin = time.perf_counter()
    try:
        for role in ("chief", "tuner0", "tuner1"):
            env = {
                **os.environ,
                "KERASTUNER_TUNER_ID": role,
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": port,
                "TF_CPP_MIN_LOG_LEVEL": "3",
                **extra_env,
            }
            processes[role] = subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        outputs = {}
        for role in ("tuner0", "tuner1", "chief"):
            out, err = processes[role].communicate(timeout=timeout)
            assert processes[role].returncode == 0, f"{role}: {err[-3000:]}"
            outputs[role] = out
    finally:
        for process in processes.values():
            process.kill()
    return outputs, time.perf_counter() - begin
