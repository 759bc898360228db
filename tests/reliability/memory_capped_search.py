"""A BatchTuner search whose process address space is capped.

Usage: `python memory_capped_search.py WORKDIR HEADROOM_MIB`, under any
Keras backend (`KERAS_BACKEND`).

The backend is imported and warmed up (a one-trial search of the search's
model at a small batch, which loads and starts what a trial needs), then the
address space is capped with `resource.setrlimit(RLIMIT_AS)` at what the
process uses plus `HEADROOM_MIB`. A trial at batch 65536 of the wide model
asks first for a 256 MiB activation, more than the whole headroom: the
backend's own CPU allocator cannot get it and raises its own error, while
the headroom is still free for every smaller allocation (a first activation
that fitted would leave too little, and the next allocation to fail could be
one outside the allocator, a C++ `std::bad_alloc` that aborts the process).
Nothing is injected. What each backend raises:

- TensorFlow: `ResourceExhaustedError` "OOM when allocating tensor ... by
  allocator cpu";
- JAX: `JaxRuntimeError` "Out of memory allocating N bytes" (status
  `INTERNAL` when the step was dispatched asynchronously and the error is
  met when a result is read);
- PyTorch: `RuntimeError` "DefaultCPUAllocator: can't allocate memory",
  which Keras re-raises as a `RuntimeError` naming the layer.

The learning rate is a searched choice of 0.01, 0.03 and 1e30; the last
diverges (inf, then NaN, in float32 on every backend).

Prints one `EVENT {json}` line per trial begun, per trial error (with the
error's cause) and per trial ended, and a `DONE {json}` line at the end.
"""

import json
import os
import resource
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402

import keras_batchtune  # noqa: E402

WIDTH = 1024
SMALL, LARGE = 32, 65536
DIVERGING = 1e30
# The first line of each backend's out-of-memory message.
ALLOCATOR_MESSAGES = (
    "OOM when allocating",
    "Out of memory allocating",
    "DefaultCPUAllocator: can't allocate memory",
)
workdir, headroom_mib = sys.argv[1], int(sys.argv[2])


def event(**fields):
    print("EVENT", json.dumps(fields), flush=True)


def build(hp):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(WIDTH, activation="relu"),
            keras.layers.Dense(WIDTH, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    learning_rate = hp.Choice("learning_rate", [0.01, 0.03, DIVERGING])
    model.compile(
        keras.optimizers.SGD(learning_rate),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class LoggingTuner(keras_batchtune.BatchTuner):
    def on_trial_begin(self, trial):
        event(
            kind="begin", trial=trial.trial_id, **trial.hyperparameters.values
        )
        super().on_trial_begin(trial)

    def run_trial(self, trial, *args, **kwargs):
        try:
            return super().run_trial(trial, *args, **kwargs)
        except Exception as error:
            cause = error.__cause__
            event(
                kind="error",
                trial=trial.trial_id,
                error=type(error).__name__,
                cause=type(cause).__name__,
                allocator=[
                    line.strip()
                    for line in str(cause).splitlines()
                    if any(message in line for message in ALLOCATOR_MESSAGES)
                ][:1],
            )
            raise

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        ended = self.oracle.trials[trial.trial_id]
        event(
            kind="end",
            trial=trial.trial_id,
            status=ended.status,
            message=ended.message,
        )


def virtual_memory_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


rng = np.random.default_rng(0)
x = rng.random((LARGE + 256, 8)).astype("float32")
y = (x[:, 0] > 0.5).astype("int32")
hp = keras_tuner.HyperParameters()
hp.Choice("batch_size", [SMALL, LARGE])
# Warm-up: one small trial of a search, so that what a trial loads or starts
# lazily (KerasTuner, the TensorBoard writer, the backend's thread pools
# and compiler) exists before the cap. Under the cap, a library loaded late
# or a thread started late could fail outside the backend's allocator (a C++
# `std::bad_alloc`, which aborts the process).
warm_hp = keras_tuner.HyperParameters()
warm_hp.Fixed("batch_size", SMALL)
keras_batchtune.BatchTuner(
    build,
    objective="val_accuracy",
    max_trials=1,
    hyperparameters=warm_hp,
    directory=os.path.join(workdir, "warm-up"),
    overwrite=True,
).search(
    x[:256],
    y[:256],
    epochs=1,
    validation_data=(x[LARGE:], y[LARGE:]),
    verbose=0,
)

limit = virtual_memory_bytes() + headroom_mib * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

tuner = LoggingTuner(
    build,
    objective="val_accuracy",
    max_trials=4,
    seed=int(os.environ.get("SEARCH_SEED", "13")),
    hyperparameters=hp,
    lr_scaling="none",
    directory=workdir,
    project_name="search",
    overwrite=True,
)
tuner.search(
    x[:LARGE],
    y[:LARGE],
    epochs=2,
    steps_per_epoch=2,
    validation_data=(x[LARGE:], y[LARGE:]),
    verbose=0,
)
print(
    "DONE",
    json.dumps(
        {
            "ceiling": tuner.oracle.batch_size_ceiling,
            "trials": {
                t.trial_id: {
                    "status": t.status,
                    "message": t.message,
                    "values": t.hyperparameters.values,
                }
                for t in tuner.oracle.trials.values()
            },
        }
    ),
    flush=True,
)
