"""`BatchBayesianOptimization` and `BatchHyperband` in KerasTuner's
distributed search: a chief and two workers.

As `test_distributed_search.py` does for `BatchTuner`: three real processes
on 127.0.0.1, found through KerasTuner's environment variables, on the
suite's backend. The chief serves the oracle (the Gaussian process, or
Hyperband's brackets) over gRPC; both workers run trials; every trial runs
once, with its coupled learning rate, and a Hyperband promotion continues
from its parent's checkpoint whichever worker trained the parent.
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
import keras
import numpy as np
import keras_batchtune

role = os.environ["KERASTUNER_TUNER_ID"]
workdir = os.environ["WORKDIR"]
TRIALS = int(os.environ["TRIALS"])


def event(**fields):
    print("EVENT", json.dumps({{"tuner": role, "time": time.time(),
                                **fields}}), flush=True)


def touch(name):
    open(os.path.join(workdir, name), "w").close()


def wait_for(names):
    # The deadline only stops a hang; it never judges speed.
    deadline = time.time() + 600
    while not all(os.path.exists(os.path.join(workdir, n)) for n in names):
        assert time.time() < deadline, f"waited 600 s for {{names}}"
        time.sleep(0.05)


def build(hp):
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(hp.Choice("units", [4, 8]), activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(keras.optimizers.SGD(0.05),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def logging(tuner_class):
    class Logging(tuner_class):
        def pre_create_trial(self):
            begun = [f for f in os.listdir(workdir) if f.startswith("begun.")]
            if len(begun) == TRIALS:
                # Every trial handed out: both workers ask once more
                # together, so the chief sees both told to stop at once.
                touch(role + ".done")
                wait_for(["tuner0.done", "tuner1.done"])

        def on_trial_begin(self, trial):
            values = trial.hyperparameters.values
            event(kind="begin", trial=trial.trial_id,
                  batch_size=values["batch_size"],
                  parent=values.get("tuner/trial_id"))
            touch("begun." + trial.trial_id)
            if not getattr(self, "started", False):
                # Each worker's first trial waits until the other worker
                # has begun one: both take part, however fast each is.
                self.started = True
                touch("first." + role)
                wait_for(["first.tuner0", "first.tuner1"])
            super().on_trial_begin(trial)

    return Logging


if os.environ["TUNER"] == "bayesian":
    tuner = logging(keras_batchtune.BatchBayesianOptimization)(
        build, objective="val_accuracy", max_trials=TRIALS,
        num_initial_points=2, seed=3, min_batch_size=8, max_batch_size=64,
        directory=workdir, project_name="search")
else:
    tuner = logging(keras_batchtune.BatchHyperband)(
        build, objective="val_accuracy", max_epochs=2, factor=2, seed=3,
        min_batch_size=8, max_batch_size=64, directory=workdir,
        project_name="search")
rng = np.random.default_rng(0)
x = rng.random((320, 8)).astype("float32")
y = (x[:, 0] > 0.5).astype("int32")
if role != "chief":
    # Both workers ask for their first trial at the same time.
    touch(role + ".ready")
    wait_for(["tuner0.ready", "tuner1.ready"])
tuner.search(x[:256], y[:256], epochs=2, validation_data=(x[256:], y[256:]),
             verbose=0)
if role != "chief":
    touch(role + ".done")
if role == "chief":
    oracle = tuner.oracle
    print("RESULT", json.dumps([{{
        "id": t.trial_id, "status": t.status,
        "values": t.hyperparameters.values,
        "effective_learning_rate": (
            t.metrics.get_last_value("effective_learning_rate")
            if t.metrics.exists("effective_learning_rate") else None),
    }} for t in oracle.trials.values()]), flush=True)
"""

# Hyperband with max_epochs=2, factor=2: a bracket of 2 one-epoch trials and
# the best one continued to 2 epochs, then a bracket of 2 two-epoch trials.
TRIALS = {"bayesian": 4, "hyperband": 5}


@pytest.mark.parametrize("tuner", sorted(TRIALS))
def test_chief_and_two_workers_share_the_trials(tmp_path, tuner):
    script = tmp_path / "tuner.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    outputs, _ = run_chief_and_workers(
        script,
        {
            "KERAS_BACKEND": BACKEND,
            "WORKDIR": str(tmp_path),
            "TUNER": tuner,
            "TRIALS": str(TRIALS[tuner]),
        },
    )
    (trials,) = parse(outputs["chief"], "RESULT")
    assert len(trials) == TRIALS[tuner]
    events = parse(outputs["tuner0"], "EVENT") + parse(
        outputs["tuner1"], "EVENT"
    )
    # Every trial ran once, on one worker or the other, and both took part.
    begun = sorted(e["trial"] for e in events)
    assert begun == sorted(t["id"] for t in trials)
    assert {e["tuner"] for e in events} == {"tuner0", "tuner1"}
    for trial in trials:
        assert trial["status"] == "COMPLETED"
        batch_size = trial["values"]["batch_size"]
        assert batch_size in (8, 16, 32, 64)
        # Coupled: the compiled 0.05 is the rate at batch 32 (Keras's
        # default batch size, the reference without `base_batch_size`).
        assert trial["effective_learning_rate"] == pytest.approx(
            0.05 * batch_size / 32
        )
    if tuner == "hyperband":
        by_id = {t["id"]: t for t in trials}
        promoted = [t for t in trials if t["values"].get("tuner/trial_id")]
        assert len(promoted) == 1
        (child,) = promoted
        parent = by_id[child["values"]["tuner/trial_id"]]
        # The promotion keeps its parent's configuration and continues it
        # from epoch 1 (KerasTuner's Hyperband), whichever worker ran it.
        assert child["values"]["tuner/initial_epoch"] == 1
        assert child["values"]["tuner/epochs"] == 2
        for name in ("batch_size", "units"):
            assert child["values"][name] == parent["values"][name]
