"""Distributed search where one worker is killed with SIGKILL mid-trial.

A chief and two workers on 127.0.0.1, found through KerasTuner's
environment variables, as in `tests/test_distributed_search.py`. The first
worker to end an epoch stops there (it creates a marker file, exclusively,
naming itself, then waits) and is killed. Which worker that is does not
matter; waiting for a named one would race, as on a loaded machine one
worker may run every trial before the other asks. KerasTuner's chief alone
would wait forever for the killed worker's trial; with `worker_timeout` the
chief takes it back after that many seconds of silence and the other worker
runs it again, then both remaining processes end by themselves. It runs on
every backend (the processes get the suite's `KERAS_BACKEND`; nothing
imports TensorFlow).
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
    # The first worker to end an epoch, only: it names itself and waits.
    def on_epoch_end(self, epoch, logs=None):
        try:
            marker = os.open(os.path.join(workdir, "hung"),
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(marker, role.encode())
        os.close(marker)
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
        # Kill the worker that hangs in its trial, once it does.
        marker = tmp_path / "hung"
        deadline = time.monotonic() + 600  # only stops a hang
        while not marker.exists() or not marker.read_text():
            for role, process in processes.items():
                if process.poll() is not None:
                    output, _ = process.communicate()
                    raise AssertionError(
                        f"{role} ended early:\n{output[-3000:]}"
                    )
            assert time.monotonic() < deadline, "no worker ran a trial"
            time.sleep(0.05)
        killed = marker.read_text()
        survivor = {"tuner0": "tuner1", "tuner1": "tuner0"}[killed]
        processes[killed].send_signal(signal.SIGKILL)
        killed_at = time.time()
        outputs[killed], _ = processes[killed].communicate(timeout=30)
        assert processes[killed].returncode == -signal.SIGKILL
        # The others end by themselves.
        for role in (survivor, "chief"):
            outputs[role], _ = processes[role].communicate(timeout=900)
            assert processes[role].returncode == 0, outputs[role][-3000:]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    seconds = time.monotonic() - begin

    (result,) = parse(outputs["chief"], "RESULT")
    killed_events = parse(outputs[killed], "EVENT")
    survivor_events = parse(outputs[survivor], "EVENT")
    (lost,) = [e["trial"] for e in killed_events if e["kind"] == "begin"]
    assert not [e for e in killed_events if e["kind"] == "end"]

    # Every trial ended, COMPLETED, and none is still running.
    assert sorted(result["start_order"]) == sorted(result["end_order"])
    assert len(result["end_order"]) == MAX_TRIALS
    assert set(result["statuses"].values()) == {"COMPLETED"}
    assert result["ongoing"] == []
    # The killed worker's trial was taken back and run, once, by the other,
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
