"""Distributed search where one worker is killed with SIGKILL mid-trial.

A chief and two workers on 127.0.0.1, found through KerasTuner's
environment variables, as in `tests/test_distributed_search.py`. Worker
`tuner1` stops in its first trial (a marker file at the end of its first
epoch, then it waits) and is killed there. KerasTuner's chief alone would
wait forever for that trial; with `worker_timeout` the chief takes it back
after that many seconds of silence and `tuner0` runs it again, then both
remaining processes end by themselves. It runs on every backend (the
processes get the suite's `KERAS_BACKEND`; nothing imports TensorFlow).
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

from conftest import BACKEND
from conftest import free_port
from conftest import parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAX_TRIALS = 4
WORKER_TIMEOUT = 4

SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import keras
import numpy as np
import keras_batchtune

role = os.environ["KERASTUNER_TUNER_ID"]
workdir = os.environ["WORKDIR"]


def event(**fields):
    print("EVENT", json.dumps({{"tuner": role, "time": time.time(),
                                **fields}}), flush=True)


def wait_for(names):
    deadline = time.time() + 600  # only stops a hang
    while not all(os.path.exists(os.path.join(workdir, n)) for n in names):
        assert time.time() < deadline, f"waited 600 s for {{names}}"
        time.sleep(0.05)


def build(hp):
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(hp.Choice("units", [4, 8, 16, 32]),
                           activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.05),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Hang(keras.callbacks.Callback):
    # On tuner1 only: the first trial stops after its first epoch.
    def on_epoch_end(self, epoch, logs=None):
        if role == "tuner1":
            open(os.path.join(workdir, "tuner1.running"), "w").close()
            time.sleep(600)


class LoggingTuner(keras_batchtune.BatchTuner):
    def on_trial_begin(self, trial):
        event(kind="begin", trial=trial.trial_id)
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        event(kind="end", trial=trial.trial_id, status=trial.status)


tuner = LoggingTuner(
    build, objective="val_accuracy", max_trials={max_trials}, seed=1,
    min_batch_size=8, max_batch_size=64, directory=workdir,
    project_name="search", worker_timeout={worker_timeout})
rng = np.random.default_rng(0)
x = rng.random((320, 8)).astype("float32")
y = (x[:, 0] > 0.5).astype("int32")
if role != "chief":
    # Both workers ask for their first trial at the same time.
    open(os.path.join(workdir, role + ".ready"), "w").close()
    wait_for([f"tuner{{i}}.ready" for i in range(2)])
tuner.search(x[:256], y[:256], epochs=2, validation_data=(x[256:], y[256:]),
             callbacks=[Hang()], verbose=0)
event(kind="left")
if role == "chief":
    oracle = tuner.oracle
    print("RESULT", json.dumps({{
        "start_order": oracle.start_order,
        "end_order": oracle.end_order,
        "ongoing": sorted(oracle.ongoing_trials),
        "statuses": {{t: oracle.trials[t].status for t in oracle.trials}},
    }}), flush=True)
"""


def test_chief_and_other_worker_finish_after_a_worker_is_killed(tmp_path):
    script = tmp_path / "tuner.py"
    script.write_text(
        SCRIPT.format(
            root=str(ROOT),
            max_trials=MAX_TRIALS,
            worker_timeout=WORKER_TIMEOUT,
        )
    )
    port = str(free_port())
    processes = {}
    outputs = {}
    begin = time.monotonic()
    try:
        for role in ("chief", "tuner0", "tuner1"):
            env = {
                **os.environ,
                "KERAS_BACKEND": BACKEND,
                "KERASTUNER_TUNER_ID": role,
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": port,
                "TF_CPP_MIN_LOG_LEVEL": "3",
                "WORKDIR": str(tmp_path),
            }
            processes[role] = subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        # Kill tuner1 once its trial is running.
        deadline = time.monotonic() + 600  # only stops a hang
        while not (tmp_path / "tuner1.running").exists():
            assert processes["tuner1"].poll() is None, "tuner1 ended early"
            assert time.monotonic() < deadline, "tuner1 never ran a trial"
            time.sleep(0.05)
        processes["tuner1"].send_signal(signal.SIGKILL)
        killed_at = time.time()
        outputs["tuner1"], _ = processes["tuner1"].communicate(timeout=30)
        assert processes["tuner1"].returncode == -signal.SIGKILL
        # The others end by themselves.
        for role in ("tuner0", "chief"):
            outputs[role], _ = processes[role].communicate(timeout=900)
            assert processes[role].returncode == 0, outputs[role][-3000:]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    seconds = time.monotonic() - begin

    (result,) = parse(outputs["chief"], "RESULT")
    killed_events = parse(outputs["tuner1"], "EVENT")
    survivor_events = parse(outputs["tuner0"], "EVENT")
    (lost,) = [e["trial"] for e in killed_events if e["kind"] == "begin"]
    assert not [e for e in killed_events if e["kind"] == "end"]

    # Every trial ended, COMPLETED, and none is still running.
    assert sorted(result["start_order"]) == sorted(result["end_order"])
    assert len(result["end_order"]) == MAX_TRIALS
    assert set(result["statuses"].values()) == {"COMPLETED"}
    assert result["ongoing"] == []
    # The killed worker's trial was taken back and run, once, by tuner0,
    # after the kill; every other trial ran once.
    begun = [e["trial"] for e in survivor_events if e["kind"] == "begin"]
    ended = [e["trial"] for e in survivor_events if e["kind"] == "end"]
    assert sorted(begun) == sorted(result["end_order"])
    assert sorted(ended) == sorted(begun)
    rerun = next(
        e
        for e in survivor_events
        if e["kind"] == "begin" and e["trial"] == lost
    )
    assert rerun["time"] > killed_at + WORKER_TIMEOUT - 1
    assert "sent nothing for" in outputs["chief"]
    print(f"killed-worker search: {seconds:.1f} s")
