"""KerasTuner's chief/worker search with data-parallel `BatchTuner` workers.

KerasTuner's own distributed engine, unchanged: a chief process serves the
oracle over gRPC on 127.0.0.1 (a free port) and two worker processes ask it
for trials (`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP`,
`KERASTUNER_ORACLE_PORT`). Each worker is its own JAX program with 4 virtual
CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`, set
before JAX starts) and a global `keras.distribution.DataParallel` over
them, set before the tuner is made: no `keras.distribution.initialize()`,
the workers share trials, not steps. Each trial's batch is a multiple of 4
and is sharded over the worker's 4 devices: a layer records, when JAX
compiles each step, the sharding of its input
(`jax.debug.inspect_array_sharding`). The processes end on their own; the
wait only stops a hang, and the time is printed.
"""

import pathlib

from conftest import parse
from conftest import run_chief_and_workers

ROOT = pathlib.Path(__file__).resolve().parents[3]

MAX_TRIALS = 4

SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, {root!r})
import json, time
import jax
import keras
import numpy as np
import keras_batchtune

MAX_TRIALS = {max_trials}
role = os.environ["KERASTUNER_TUNER_ID"]
workdir = os.environ["WORKDIR"]
keras.distribution.set_distribution(keras.distribution.DataParallel())
SHARDS = []  # [global batch, rows per device, devices] per compiled step


def event(**fields):
    print("EVENT", json.dumps({{"tuner": role, "time": time.time(),
                                **fields}}), flush=True)


def wait_for(names):
    # The deadline only stops a hang; it never judges speed.
    deadline = time.time() + 600
    while not all(os.path.exists(os.path.join(workdir, n)) for n in names):
        assert time.time() < deadline, f"waited 600 s for {{names}}"
        time.sleep(0.05)


def done():
    open(os.path.join(workdir, role + ".done"), "w").close()


class ShardShape(keras.layers.Layer):
    # Records how the batch is sharded when JAX compiles a training step.
    def call(self, inputs, training=None):
        if training and isinstance(inputs, jax.core.Tracer):
            shape = tuple(inputs.shape)

            def record(sharding, shape=shape):
                SHARDS.append([shape[0], sharding.shard_shape(shape)[0],
                               len(sharding.device_set)])

            jax.debug.inspect_array_sharding(inputs, callback=record)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def build(hp):
    model = keras.Sequential([
        keras.Input((8,)),
        ShardShape(),
        keras.layers.Dense(hp.Choice("units", [4, 8, 16]), activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.05),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class LoggingTuner(keras_batchtune.BatchTuner):
    def pre_create_trial(self):
        begun = [f for f in os.listdir(workdir) if f.startswith("begun.")]
        if len(begun) == MAX_TRIALS:
            # All trials handed out: both workers ask for more together, so
            # the chief sees both told to stop at once (KerasTuner's chief
            # otherwise checks again only 20 s later).
            done()
            wait_for([f"tuner{{i}}.done" for i in range(2)])
        event(kind="ask")

    def on_trial_begin(self, trial):
        SHARDS.clear()
        event(kind="begin", trial=trial.trial_id,
              batch_size=trial.hyperparameters.values["batch_size"])
        open(os.path.join(workdir, "begun." + trial.trial_id), "w").close()
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        event(kind="end", trial=trial.trial_id, status=trial.status,
              shards=sorted({{tuple(s) for s in SHARDS}}),
              devices=jax.device_count(),
              replicas=keras_batchtune.distribute.num_replicas(
                  self.distribution))


tuner = LoggingTuner(
    build, objective="val_accuracy", max_trials=MAX_TRIALS,
    seed=int(os.environ["SEED"]), min_batch_size=8, max_batch_size=64,
    directory=workdir, project_name="search")
rng = np.random.default_rng(0)
x = rng.random((320, 8)).astype("float32")
y = (x[:, 0] > 0.5).astype("int32")
if role != "chief":
    open(os.path.join(workdir, role + ".ready"), "w").close()
    wait_for([f"tuner{{i}}.ready" for i in range(2)])
tuner.search(x[:256], y[:256], epochs=1, validation_data=(x[256:], y[256:]),
             verbose=0)
if role != "chief":
    # A worker told to stop before the last trial has begun on the other
    # one leaves; the other must not wait for it.
    done()
if role == "chief":
    oracle = tuner.oracle
    trials = [oracle.trials[i] for i in oracle.start_order]
    print("RESULT", json.dumps({{"trials": [{{
        "id": t.trial_id, "status": t.status,
        "batch_size": t.hyperparameters.values["batch_size"],
    }} for t in trials]}}), flush=True)
"""


def test_chief_and_two_data_parallel_workers(tmp_path):
    script = tmp_path / "tuner.py"
    script.write_text(SCRIPT.format(root=str(ROOT), max_trials=MAX_TRIALS))
    outputs, seconds = run_chief_and_workers(
        script,
        {"KERAS_BACKEND": "jax", "WORKDIR": str(tmp_path), "SEED": "1"},
    )
    print(f"chief and two data-parallel workers: {seconds:.1f} s")

    (result,) = parse(outputs["chief"], "RESULT")
    trials = result["trials"]
    events = parse(outputs["tuner0"], "EVENT") + parse(
        outputs["tuner1"], "EVENT"
    )
    ends = [e for e in events if e["kind"] == "end"]
    print(
        "trials (worker, batch, compiled [global, per device, devices]):",
        sorted(
            (e["tuner"], batch_size_of(trials, e["trial"]), e["shards"])
            for e in ends
        ),
    )
    assert len(trials) == MAX_TRIALS
    assert all(t["status"] == "COMPLETED" for t in trials)
    # Each trial ran once, on one worker; both workers ran trials.
    begun = sorted(e["trial"] for e in events if e["kind"] == "begin")
    assert begun == sorted(t["id"] for t in trials)
    assert sorted(e["trial"] for e in ends) == begun
    assert {e["tuner"] for e in ends} == {"tuner0", "tuner1"}
    for end in ends:
        batch_size = batch_size_of(trials, end["trial"])
        assert end["status"] == "COMPLETED"
        assert end["devices"] == 4 and end["replicas"] == 4
        assert batch_size % 4 == 0
        # Every training step of the trial: the trial's batch (or the
        # epoch's smaller last one), a quarter on each of the 4 devices.
        assert end["shards"], end
        assert batch_size in [shard[0] for shard in end["shards"]]
        for global_batch, per_device, devices in end["shards"]:
            assert devices == 4
            assert per_device * 4 == global_batch


def batch_size_of(trials, trial_id):
    return next(t["batch_size"] for t in trials if t["id"] == trial_id)
