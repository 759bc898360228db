"""A small BatchTuner search that the reliability tests run as a process.

Usage: `python killable_search.py WORKDIR PHASE [KILL_AFTER]`.

Writes one JSON line per event to `WORKDIR/events.jsonl` (trial begun,
trial ended with its status and score, `fit` started) so the test can tell
which trials ran in which process. With `KILL_AFTER=n`, the first trial that
begins once `n` trials have ended and the out-of-memory ceiling is known
writes `WORKDIR/running.<trial_id>` at the end of its first epoch and then
waits: the test kills the process there, mid-trial. Batches above 48 run
out of memory through an injected layer (see `MemoryLimit`). Runs on
every Keras backend (`KERAS_BACKEND`).
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import backend_faults  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_batchtune  # noqa: E402

MAX_TRIALS = 6
LIMIT = 48

workdir, phase = sys.argv[1], sys.argv[2]
kill_after = int(sys.argv[3]) if len(sys.argv) > 3 else None


def event(**fields):
    with open(os.path.join(workdir, "events.jsonl"), "a") as log:
        log.write(json.dumps({"phase": phase, **fields}) + "\n")


class MemoryLimit(keras.layers.Layer):
    """Error injection, as in `tests/conftest.py`: above `LIMIT` examples
    the layer asks the backend's allocator for an impossible tensor (4 TiB
    and more), and the allocator raises its real out-of-memory error
    (`tests/backend_faults.py`)."""

    def call(self, inputs):
        return backend_faults.allocate_above(inputs, LIMIT)

    def compute_output_shape(self, input_shape):
        return input_shape


def build(hp):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            MemoryLimit(),
            keras.layers.Dense(hp.Choice("units", [4, 8, 16, 32]), "relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.05),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class Hang(keras.callbacks.Callback):
    """Stops the process mid-trial: marker file, then wait to be killed.

    Class attributes, because KerasTuner copies the callbacks per trial.
    """

    trial_id = None
    running = None

    def on_train_begin(self, logs=None):
        event(kind="fit", trial=Hang.running)

    def on_epoch_end(self, epoch, logs=None):
        if Hang.trial_id is None:
            return
        marker = os.path.join(workdir, "running." + Hang.trial_id)
        open(marker, "w").close()
        time.sleep(600)


class LoggingTuner(keras_batchtune.BatchTuner):
    def on_trial_begin(self, trial):
        ended = sum(t.status != "RUNNING" for t in self.oracle.trials.values())
        if (
            kill_after is not None
            and ended >= kill_after
            and self.oracle.batch_size_ceiling is not None
        ):
            Hang.trial_id = trial.trial_id
        Hang.running = trial.trial_id
        event(
            kind="begin",
            trial=trial.trial_id,
            batch_size=trial.hyperparameters.values["batch_size"],
            ceiling=self.oracle.batch_size_ceiling,
        )
        super().on_trial_begin(trial)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        ended = self.oracle.trials[trial.trial_id]
        event(
            kind="end",
            trial=trial.trial_id,
            status=ended.status,
            score=ended.score,
            message=ended.message,
        )


tuner = LoggingTuner(
    build,
    objective="val_accuracy",
    max_trials=MAX_TRIALS,
    seed=int(os.environ.get("SEARCH_SEED", "3")),
    min_batch_size=8,
    max_batch_size=256,
    directory=workdir,
    project_name="search",
    overwrite=False,
)
event(
    kind="start",
    reloaded=sorted(tuner.oracle.trials),
    ceiling=tuner.oracle.batch_size_ceiling,
)
rng = np.random.default_rng(0)
x = rng.random((320, 8)).astype("float32")
y = (x[:, 0] > 0.5).astype("int32")
tuner.search(
    x[:256],
    y[:256],
    epochs=2,
    validation_data=(x[256:], y[256:]),
    callbacks=[Hang()],
    verbose=0,
)
trials = tuner.oracle.trials.values()
event(
    kind="done",
    ceiling=tuner.oracle.batch_size_ceiling,
    trials={
        t.trial_id: {
            "status": t.status,
            "score": t.score,
            "batch_size": t.hyperparameters.values["batch_size"],
            "message": t.message,
        }
        for t in trials
    },
)
