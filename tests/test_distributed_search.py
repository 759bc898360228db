"""KerasTuner's distributed search with BatchTuner: a chief and two workers.

Three real processes on 127.0.0.1, found through KerasTuner's environment
variables (`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP`,
`KERASTUNER_ORACLE_PORT`): the chief serves the oracle over gRPC, the workers
run the trials.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest
from conftest import free_port
from conftest import parse

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import keras
import numpy as np
import tensorflow as tf
import keras_batchtune

LIMIT = 40  # batches above 40 run out of memory, on every worker
role = os.environ["KERASTUNER_TUNER_ID"]
workdir = os.environ["WORKDIR"]


def event(**fields):
    print("EVENT", json.dumps({{"tuner": role, "time": time.time(),
                                **fields}}), flush=True)


def wait_for(names):
    deadline = time.time() + 60
    while not all(os.path.exists(os.path.join(workdir, n)) for n in names):
        assert time.time() < deadline, f"waited 60 s for {{names}}"
        time.sleep(0.05)


class MemoryLimit(keras.layers.Layer):
    # Error injection, as in conftest.py: above the limit, ask the allocator
    # for an impossible tensor; it raises its real ResourceExhaustedError.
    def call(self, inputs):
        rows = tf.maximum(tf.shape(inputs)[0] - LIMIT, 0) * (1 << 20)
        impossible = tf.fill(tf.stack([rows, 1 << 20]), inputs[0, 0])
        return inputs + 0.0 * tf.reduce_sum(impossible)


def build(hp):
    model = keras.Sequential([
        keras.Input((8,)),
        MemoryLimit(),
        keras.layers.Dense(hp.Choice("units", [4, 8, 16, 32]),
                           activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.05),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class LoggingTuner(keras_batchtune.BatchTuner):
    # Logs when this process asks the chief for a trial, what it got, and
    # when the chief has been told how the trial ended.

    def pre_create_trial(self):
        begun = [f for f in os.listdir(workdir) if f.startswith("begun.")]
        if len(begun) == 6:
            # All trials handed out: the workers ask for more together, so
            # the chief sees both told to stop at once (KerasTuner's chief
            # otherwise checks again only 20 s later).
            open(os.path.join(workdir, role + ".done"), "w").close()
            wait_for([f"tuner{{i}}.done" for i in range(2)])
        event(kind="ask")

    def on_trial_begin(self, trial):
        batch_size = trial.hyperparameters.values["batch_size"]
        event(kind="begin", trial=trial.trial_id, batch_size=batch_size)
        open(os.path.join(workdir, "begun." + trial.trial_id), "w").close()
        if batch_size <= LIMIT and not getattr(self, "waited", False):
            # The worker whose first trial fits finishes it only after the
            # other one has reported its out-of-memory trial, so that its
            # next request comes after the report, however fast each is.
            self.waited = True
            wait_for(["oom.reported"])
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        event(kind="end", trial=trial.trial_id, status=trial.status,
              message=(trial.message or "").splitlines()[-1:])
        if trial.status == "FAILED":
            open(os.path.join(workdir, "oom.reported"), "w").close()


tuner = LoggingTuner(
    build, objective="val_accuracy", max_trials=6, seed=int(os.environ["SEED"]),
    min_batch_size=8, max_batch_size=256, directory=workdir,
    project_name="search")
rng = np.random.default_rng(0)
x = rng.random((320, 8)).astype("float32")
y = (x[:, 0] > 0.5).astype("int32")
if role != "chief":
    # Both workers ask for their first trial at the same time.
    open(os.path.join(workdir, role + ".ready"), "w").close()
    wait_for([f"tuner{{i}}.ready" for i in range(2)])
tuner.search(x[:256], y[:256], epochs=2, validation_data=(x[256:], y[256:]),
             verbose=0)
if role == "chief":
    oracle = tuner.oracle
    trials = [oracle.trials[i] for i in oracle.start_order]
    print("RESULT", json.dumps({{
        "ceiling": oracle.batch_size_ceiling,
        "trials": [{{
            "id": t.trial_id, "status": t.status, "message": t.message,
            "batch_size": t.hyperparameters.values["batch_size"],
            "effective_learning_rate": (
                t.metrics.get_last_value("effective_learning_rate")
                if t.metrics.exists("effective_learning_rate") else None),
        }} for t in trials],
    }}), flush=True)
"""


def test_chief_and_two_workers_share_trials_and_the_memory_ceiling(tmp_path):
    script = tmp_path / "tuner.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
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
                "WORKDIR": str(tmp_path),
                # The chief's seed makes the first two trials' batch sizes
                # 64 and 32: one worker runs out of memory at once.
                "SEED": "9",
            }
            processes[role] = subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        outputs = {}
        # The chief leaves once both workers have been told to stop.
        for role in ("tuner0", "tuner1", "chief"):
            out, err = processes[role].communicate(timeout=100)
            assert processes[role].returncode == 0, f"{role}: {err[-3000:]}"
            outputs[role] = out
    finally:
        for process in processes.values():
            process.kill()
    seconds = time.perf_counter() - begin
    assert seconds < 120

    (result,) = parse(outputs["chief"], "RESULT")
    trials = result["trials"]
    # Six trials, each run exactly once, by one worker or the other.
    assert len(trials) == 6
    events = parse(outputs["tuner0"], "EVENT") + parse(
        outputs["tuner1"], "EVENT"
    )
    begun = sorted(e["trial"] for e in events if e["kind"] == "begin")
    assert begun == sorted(t["id"] for t in trials)
    ended = sorted(e["trial"] for e in events if e["kind"] == "end")
    assert ended == begun
    assert {e["tuner"] for e in events if e["kind"] == "begin"} == {
        "tuner0",
        "tuner1",
    }
    # Each trial ended with its batch size: completed with its coupled
    # learning rate, or out of memory above the limit.
    for trial in trials:
        batch_size = trial["batch_size"]
        if batch_size <= 40:
            assert trial["status"] == "COMPLETED"
            assert trial["effective_learning_rate"] == pytest.approx(
                0.05 * batch_size / 32
            )
        else:
            assert trial["status"] == "FAILED"
            assert trial["message"] == f"out of memory at batch {batch_size}"
    failures = [t for t in trials if t["status"] == "FAILED"]
    assert failures
    assert result["ceiling"] == min(t["batch_size"] for t in failures)

    # Once a worker has reported an out-of-memory trial, every trial that
    # either worker asks for afterwards stays below that batch size.
    reports = [
        (e["time"], e["tuner"], batch_size_of(trials, e["trial"]))
        for e in events
        if e["kind"] == "end" and e["status"] == "FAILED"
    ]
    first_report, reporter, _ = min(reports)
    checked_on_the_other_worker = 0
    for ask, begun_trial in asked_and_given(events):
        known = [b for time_, _, b in reports if time_ < ask["time"]]
        if not known:
            continue
        batch_size = batch_size_of(trials, begun_trial["trial"])
        assert batch_size < min(known), (ask, begun_trial, reports)
        if ask["tuner"] != reporter:
            checked_on_the_other_worker += 1
    assert checked_on_the_other_worker >= 1
    print(f"distributed search: {seconds:.1f} s")


def batch_size_of(trials, trial_id):
    return next(t["batch_size"] for t in trials if t["id"] == trial_id)


def asked_and_given(events):
    """Pairs each worker's request for a trial with the trial it began."""
    pairs = []
    for tuner in ("tuner0", "tuner1"):
        own = sorted(
            (e for e in events if e["tuner"] == tuner), key=lambda e: e["time"]
        )
        ask = None
        for event in own:
            if event["kind"] == "ask":
                ask = event
            elif event["kind"] == "begin":
                pairs.append((ask, event))
    return pairs
