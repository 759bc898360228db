"""Two hosts of one JAX cluster: a BatchTuner trial and a resize on both.

Two real processes on 127.0.0.1 call `keras.distribution.initialize` (the
first is the coordinator, on a free port); each has 4 virtual CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`, set before JAX
starts), so a global `keras.distribution.DataParallel` spans 8 devices over
two hosts. JAX's CPU client talks across processes through Gloo
(`jax_cpu_collectives_implementation`, "gloo" by default in JAX 0.10;
set explicitly here). Keras feeds each host's own examples to its 4 devices
(`jax.make_array_from_process_local_data`): what a host's `fit` batches is
its share of the global batch. Every batch size of `keras_batchtune` is
global (the grid over all 8 devices, the learning-rate coupling, the
finder's answer); each host's `fit` gets `global / 2` rows per step
(`keras_batchtune.distribute.per_process_batch_size`), so the batch inside
each compiled step is the searched one.

Both hosts run the same BatchTuner search (one seed), a `DynamicBatchSize`
resize and the memory finder, and report what they saw; the hosts must
agree on every batch size, and the finder's answer, agreed through
`keras_batchtune.backend.jax.hosts`, is the same on both. The processes end
on their own; the wait only stops a hang, and the time is printed.
"""

import os
import pathlib
import subprocess
import sys
import time

from conftest import free_port
from conftest import parse

ROOT = pathlib.Path(__file__).resolve().parents[3]

SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, {tests!r})
import json
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import keras
import numpy as np
from conftest import MemoryLimit
import keras_batchtune
from keras_batchtune.backend.jax import hosts

host = int(os.environ["HOST"])
keras.distribution.initialize(
    os.environ["COORDINATOR"], num_processes=2, process_id=host)
distribution = keras.distribution.DataParallel()
# Each host feeds its own examples (numpy arrays are not auto-sharded).
distribution.auto_shard_dataset = False
keras.distribution.set_distribution(distribution)

TRACED = []  # the global batch of each compiled training step


class GlobalBatch(keras.layers.Layer):
    def call(self, inputs, training=None):
        if training and inputs.shape[0] is not None:
            TRACED.append(int(inputs.shape[0]))
        return inputs


def mlp(learning_rate=0.05, units=8, limit=None):
    layers = [keras.Input((8,)), GlobalBatch()]
    if limit is not None:
        layers.append(MemoryLimit(limit))
    layers += [keras.layers.Dense(units, activation="relu"),
               keras.layers.Dense(2, activation="softmax")]
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(learning_rate),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


rng = np.random.default_rng(0)
x = rng.random((640, 8)).astype("float32")
y = (x[:, 0] > 0.5).astype("int32")
# This host's examples: host 1 holds 8 more, which the search leaves out
# (every host runs as many steps as the host with the fewest examples).
begin, end = (0, 192) if host == 0 else (192, 392)
x_train, y_train = x[begin:end], y[begin:end]
x_val = x[400 + host * 64:400 + (host + 1) * 64]
y_val = y[400 + host * 64:400 + (host + 1) * 64]
result = {{
    "host": host,
    "processes": jax.process_count(),
    "devices": jax.device_count(),
    "local_devices": jax.local_device_count(),
}}

# 1. A BatchTuner search: the same seed on both hosts draws the same trials.
tuner = keras_batchtune.BatchTuner(
    lambda hp: mlp(units=hp.Choice("units", [4, 8])),
    objective="val_accuracy", max_trials=2, seed=3,
    min_batch_size=8, max_batch_size=64,
    directory=os.path.join(os.environ["WORKDIR"], f"host{{host}}"),
    project_name="search")
result["replicas"] = keras_batchtune.distribute.num_replicas(
    tuner.distribution)
TRACED.clear()
tuner.search(x_train, y_train, epochs=1, validation_data=(x_val, y_val),
             verbose=0)
trials = [tuner.oracle.trials[i] for i in tuner.oracle.start_order]
result["trials"] = [{{
    "status": t.status,
    "batch_size": t.hyperparameters.values["batch_size"],
    "effective_learning_rate": (
        t.metrics.get_last_value("effective_learning_rate")
        if t.metrics.exists("effective_learning_rate") else None),
    "val_accuracy": (t.metrics.get_last_value("val_accuracy")
                     if t.metrics.exists("val_accuracy") else None),
}} for t in trials]
result["search_traced"] = sorted(set(TRACED))

# 2. A resize during one fit: a global batch of 16 (8 from each host), then
# 32 from epoch 1 on. A resizable input needs as many examples on each host.
keras.utils.set_random_seed(0)
model = mlp()
TRACED.clear()
train = keras_batchtune.resizable(
    x_train[:192], y_train[:192], batch_size=16, seed=0)
history = model.fit(
    train, epochs=2, verbose=0,
    callbacks=[keras_batchtune.DynamicBatchSize(
        "schedule", schedule={{1: 32}}, min_batch_size=16,
        max_batch_size=64)])
result["resize_batch_sizes"] = [int(b) for b in history.history["batch_size"]]
result["resize_learning_rates"] = [
    float(v) for v in history.history["learning_rate"]]
result["resize_traced"] = sorted(set(TRACED))
result["resize_loss"] = [float(v) for v in history.history["loss"]]

# 3. The memory finder: out of memory above a global batch of 40.
keras.utils.set_random_seed(0)
found = keras_batchtune.find_max_batch_size(
    mlp(limit=40), (x_train, y_train), start=8, max_batch_size=128,
    mode="binsearch")
result["finder_local"] = found.largest_fitting
result["finder_agreed"] = hosts.agree_on_min(found.largest_fitting)
result["finder_probes"] = [[p.batch_size, p.fits] for p in found.probes]
# Every number above, checked equal on both hosts by a collective.
hosts.check_agree(
    [t["batch_size"] for t in result["trials"]], "the trials' batch sizes")
print("RESULT", json.dumps(result), flush=True)
"""


def test_two_hosts_agree_on_every_batch_size(tmp_path):
    script = tmp_path / "host.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    coordinator = f"127.0.0.1:{free_port()}"
    begin = time.perf_counter()
    processes = []
    try:
        for host in (0, 1):
            env = {
                **os.environ,
                "HOST": str(host),
                "COORDINATOR": coordinator,
                "WORKDIR": str(tmp_path),
                "KERAS_BACKEND": "jax",
            }
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(script)],
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        outputs = []
        for host, process in enumerate(processes):
            # Only stops a hang (a host waiting forever in a collective).
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, f"host {host}: {err[-4000:]}"
            outputs.append(out)
    finally:
        for process in processes:
            process.kill()
    seconds = time.perf_counter() - begin
    print(f"two hosts: {seconds:.1f} s")

    results = [parse(out, "RESULT")[0] for out in outputs]
    first, second = results
    print(
        "trials (batch, lr):",
        [
            (t["batch_size"], t["effective_learning_rate"])
            for t in first["trials"]
        ],
        "traced global batches:",
        first["search_traced"],
        "resize:",
        first["resize_batch_sizes"],
        first["resize_traced"],
        "finder:",
        first["finder_agreed"],
        first["finder_probes"],
    )
    for result in results:
        assert result["processes"] == 2
        assert result["devices"] == 8 and result["local_devices"] == 4
        # The grid is aligned to the 8 devices of both hosts.
        assert result["replicas"] == 8
        assert len(result["trials"]) == 2
        for trial in result["trials"]:
            assert trial["status"] == "COMPLETED"
            assert trial["batch_size"] % 8 == 0
        # Each compiled step ran the searched (global) batch, not twice it.
        assert result["search_traced"] == sorted(
            {t["batch_size"] for t in result["trials"]}
        )
        # The resize counts global batches too: 16, then 32.
        assert result["resize_batch_sizes"] == [16, 32]
        assert result["resize_traced"] == [16, 32]
        # Finder: out of memory above a global batch of 40, on both hosts;
        # the probes are global batches (multiples of the 8 devices).
        assert result["finder_agreed"] == result["finder_local"] == 40
        assert result["finder_probes"] == [
            [8, True],
            [16, True],
            [32, True],
            [64, False],
            [48, False],
            [40, True],
        ]
    # Both hosts: the same trials, batch sizes, learning rates, metrics.
    assert first["trials"] == second["trials"]
    assert first["search_traced"] == second["search_traced"]
    assert first["resize_batch_sizes"] == second["resize_batch_sizes"]
    assert first["resize_learning_rates"] == second["resize_learning_rates"]
    assert first["resize_traced"] == second["resize_traced"]
    assert first["resize_loss"] == second["resize_loss"]
    assert first["finder_agreed"] == second["finder_agreed"]
    assert first["finder_probes"] == second["finder_probes"]
    # The resize reached both hosts at epoch 1, the LR coupled to it.
    rates = first["resize_learning_rates"]
    assert rates[1] > rates[0]
