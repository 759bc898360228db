"""KerasTuner's distributed search with BatchTuner: a chief and two workers.

Three real processes on 127.0.0.1, found through KerasTuner's environment
variables (`KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP`,
`KERASTUNER_ORACLE_PORT`): the chief serves the oracle over gRPC, the workers
run the trials. Nothing here needs `tf.distribute`: it runs on every backend
(the processes get the suite's `KERAS_BACKEND`), with each backend's real
out-of-memory error above batch 40 (`tests/backend_faults.py`).
"""

import pathlib

import pytest
from conftest import BACKEND
from conftest import parse
from conftest import run_chief_and_workers

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
import keras
import numpy as np
import backend_faults
import keras_batchtune

LIMIT = 40  # batches above 40 run out of memory, on every worker
role = os.environ["KERASTUNER_TUNER_ID"]
workdir = os.environ["WORKDIR"]


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


class MemoryLimit(keras.layers.Layer):
    # Error injection, as in conftest.py: above the limit, ask the backend's
    # allocator for an impossible tensor; it raises its real out-of-memory
    # error (TensorFlow, JAX or PyTorch: tests/backend_faults.py).
    def call(self, inputs):
        return backend_faults.allocate_above(inputs, LIMIT)

    def compute_output_shape(self, input_shape):
        return input_shape


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
            done()
            wait_for([f"tuner{{i}}.done" for i in range(2)])
        if os.path.exists(os.path.join(workdir, "oom.reported")):
            if getattr(self, "reported", False):
                # The reporter asks again only after the other worker has:
                # else, on fast trials, it could take every trial left
                # before the other one asks, and no request of the other
                # worker would come after the report.
                wait_for(["asked.after.report"])
            else:
                open(os.path.join(workdir, "asked.after.report"), "w").close()
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
            self.reported = True
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
if role != "chief":
    # A worker may be told to stop before the sixth trial has begun on the
    # other one (the chief handed it out, its `on_trial_begin` has not run
    # yet): it leaves, and the other one must not wait for it.
    done()
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
    script.write_text(SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    outputs, seconds = run_chief_and_workers(
        script,
        {
            "KERAS_BACKEND": BACKEND,
            "WORKDIR": str(tmp_path),
            # The chief's seed makes the first two trials' batch sizes 64
            # and 32: one worker runs out of memory at once.
            "SEED": "9",
        },
    )

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
