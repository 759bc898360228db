"""BatchTuner under `keras.distribution` on 8 virtual CPU devices.

Run as a script by `test_data_parallel_tuner.py` (JAX reads XLA_FLAGS when
it starts, hence a process of its own): each scenario prints one line
`RESULT {"scenario": ..., ...}` with what it observed. Observables are real:
the sharding of the batch inside the compiled train step
(`jax.debug.inspect_array_sharding`, which reports once per compilation),
XLA compilations counted from `jax.monitoring`'s compile events (as
`benchmarks/overhead.py` does), trial records and errors.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["KERAS_BACKEND"] = "jax"
TESTS = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, TESTS)

import collections  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
from conftest import MemoryLimit  # noqa: E402

import keras_batchtune  # noqa: E402

WORKDIR = tempfile.mkdtemp()
COMPILATIONS = collections.Counter()
SHARDS = []  # (training, global shape, per-device shard shape), per trace
LEARNING_RATE = 0.05


def _on_event(event, duration_secs, **kwargs):
    if event.endswith("backend_compile_duration"):
        COMPILATIONS[kwargs.get("fun_name", "?")] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


class ShardingLog(keras.layers.Layer):
    """Identity layer recording how the batch it gets is sharded."""

    def call(self, inputs, training=None):
        shape = tuple(inputs.shape)

        def record(sharding):
            shard = tuple(sharding.shard_shape(shape))
            SHARDS.append((bool(training), shape, shard))

        jax.debug.inspect_array_sharding(inputs, callback=record)
        return inputs


def build_model(hp, memory_limit=None):
    layers = [keras.Input((16,)), ShardingLog()]
    if memory_limit:
        layers.append(MemoryLimit(memory_limit))
    layers += [
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(3, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    model.compile(
        keras.optimizers.SGD(
            hp.Float("learning_rate", LEARNING_RATE, LEARNING_RATE * 2)
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def data(num_train=500, num_val=100):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_train + num_val, 16)).astype("float32")
    y = (x[:, :3].argmax(axis=1)).astype("int32")
    return x[:num_train], y[:num_train], x[num_train:], y[num_train:]


def trials(tuner):
    found = []
    for trial in tuner.oracle.trials.values():
        metrics = {
            name: float(trial.metrics.get_last_value(name))
            for name in trial.metrics.metrics
        }
        found.append(
            {
                "values": trial.hyperparameters.values,
                "status": trial.status,
                "metrics": metrics,
            }
        )
    return found


def grid(tuner):
    space = tuner.oracle.get_space().get_config()["space"]
    config = [h for h in space if h["config"]["name"] == "batch_size"]
    return config[0]["config"] if config else None


def run_search(tuner, x, y, x_val, y_val, **kwargs):
    SHARDS.clear()
    COMPILATIONS.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.search(x, y, validation_data=(x_val, y_val), verbose=0, **kwargs)
    return {
        "trials": trials(tuner),
        "grid": grid(tuner),
        "shards": list(SHARDS),
        "train_step": COMPILATIONS["jit(train_step)"],
        "test_step": COMPILATIONS["jit(test_step)"],
        "warnings": [
            str(w.message)
            for w in caught
            if "keras_batchtune" in str(w.message)
        ],
    }


def make_tuner(name, build=build_model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner = keras_batchtune.BatchTuner(
            build,
            objective="val_accuracy",
            directory=WORKDIR,
            project_name=name,
            overwrite=True,
            **kwargs,
        )
    tuner.construction_warnings = [str(w.message) for w in caught]
    return tuner


def scenario_global():
    """The global DataParallel, no further argument."""
    distribution = keras.distribution.DataParallel()
    keras.distribution.set_distribution(distribution)
    tuner = make_tuner(
        "global", max_trials=4, seed=3, min_batch_size=4, max_batch_size=64
    )
    result = run_search(tuner, *data(), epochs=1, batch_size=32)
    result["construction_warnings"] = tuner.construction_warnings
    result["global_kept"] = keras.distribution.distribution() is distribution
    result["num_devices"] = len(jax.devices())
    keras.distribution.set_distribution(None)
    return result


def scenario_explicit():
    """`distribution=` explicit, per_replica=True, no global one."""
    keras.distribution.set_distribution(None)
    tuner = make_tuner(
        "explicit",
        max_trials=3,
        seed=5,
        min_batch_size=1,
        max_batch_size=8,
        per_replica=True,
        distribution=keras.distribution.DataParallel(),
    )
    result = run_search(tuner, *data(), epochs=1, batch_size=32)
    result["global_after"] = repr(keras.distribution.distribution())
    # A Distribution passed as KerasTuner's `distribution_strategy`.
    other = make_tuner(
        "as_strategy",
        min_batch_size=4,
        max_batch_size=64,
        distribution_strategy=keras_batchtune.resolve_distribution(
            verbose=False
        ),
    )
    result["as_strategy_grid"] = grid(other)
    result["as_strategy_replicas"] = keras_batchtune.distribute.num_replicas(
        other.distribution
    )
    return result


def scenario_memory():
    """OOM ceiling; accumulate + probe_memory; successive halving."""
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    results = {}

    def limited(hp):
        return build_model(hp, memory_limit=32)

    ceiling = make_tuner(
        "ceiling",
        limited,
        max_trials=5,
        seed=1,
        min_batch_size=8,
        max_batch_size=128,
    )
    results["ceiling"] = run_search(ceiling, *data(), epochs=1)
    results["ceiling"]["oracle_ceiling"] = ceiling.oracle.batch_size_ceiling
    accumulate = make_tuner(
        "accumulate",
        limited,
        max_trials=4,
        seed=2,
        min_batch_size=8,
        max_batch_size=128,
        accumulate=True,
        probe_memory=True,
        hyperparameters=_fixed_batches([64, 128]),
    )
    results["accumulate"] = run_search(accumulate, *data(), epochs=1)
    results["accumulate"]["memory_ceiling"] = accumulate._memory_ceiling
    halving = make_tuner(
        "halving",
        max_trials=5,
        seed=4,
        min_batch_size=8,
        max_batch_size=64,
        successive_halving={"factor": 2, "min_epochs": 1},
    )
    results["halving"] = run_search(halving, *data(), epochs=2)
    keras.distribution.set_distribution(None)
    return results


def _fixed_batches(values):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", values)
    return hp


def _error(make):
    try:
        make()
    except Exception as error:  # the scenario reports every kind
        return {"type": type(error).__name__, "message": str(error)}
    return None


def scenario_errors():
    """Bad input: errors naming the argument, nothing written first."""
    keras.distribution.set_distribution(None)
    devices = keras.distribution.list_devices()
    cases = {
        "both": dict(
            distribution=keras.distribution.DataParallel(),
            distribution_strategy=keras.distribution.DataParallel(),
        ),
        "not_a_distribution": dict(distribution="cpu:0"),
        "strategy_not_a_distribution": dict(distribution_strategy=object()),
        "missing_devices": dict(
            distribution=keras.distribution.DataParallel(
                devices=[f"cpu:{i}" for i in range(16)]
            )
        ),
        "repeated_devices": dict(
            distribution=keras.distribution.DataParallel(
                devices=[devices[0]] * 8
            )
        ),
        "less_than_one_per_device": dict(
            distribution=keras.distribution.DataParallel(),
            min_batch_size=1,
            max_batch_size=4,
        ),
    }
    found = {}
    for name, kwargs in cases.items():
        directory = os.path.join(WORKDIR, "errors", name)
        found[name] = _error(
            lambda kwargs=kwargs, directory=directory: (
                keras_batchtune.BatchTuner(
                    build_model,
                    objective="val_accuracy",
                    directory=directory,
                    **kwargs,
                )
            )
        )
        found[name]["written"] = os.path.exists(directory)
    # A max_batch_size that does not divide: rounded down, with a warning.
    rounded = make_tuner(
        "rounded",
        min_batch_size=8,
        max_batch_size=100,
        distribution=keras.distribution.DataParallel(),
    )
    found["rounded"] = {
        "grid": grid(rounded),
        "warnings": rounded.construction_warnings,
    }
    # A batch size of the hypermodel's own that does not divide.
    hp = keras_tuner.HyperParameters()
    hp.Fixed("batch_size", 12)
    uneven = make_tuner(
        "uneven",
        hyperparameters=hp,
        max_trials=1,
        distribution=keras.distribution.DataParallel(),
    )
    found["uneven"] = _error(
        lambda: uneven.search(*data()[:2], epochs=1, verbose=0)
    )
    # A global distribution set after the tuner was made without one.
    late = make_tuner("late", max_trials=1)
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    found["late"] = _error(
        lambda: late.search(*data()[:2], epochs=1, verbose=0)
    )
    keras.distribution.set_distribution(None)
    found["tpu_address"] = _error(
        lambda: keras_batchtune.resolve_distribution(tpu="grpc://10.0.0.2:8470")
    )
    found["tpu_local"] = _error(
        lambda: keras_batchtune.resolve_distribution(tpu="local")
    )
    try:
        import tensorflow as tf
    except ImportError:
        found["tf_strategy"] = None
    else:
        strategy = tf.distribute.get_strategy()
        directory = os.path.join(WORKDIR, "errors", "tf_strategy")
        found["tf_strategy"] = _error(
            lambda: keras_batchtune.BatchTuner(
                build_model,
                objective="val_accuracy",
                directory=directory,
                distribution_strategy=strategy,
            )
        )
        found["tf_strategy"]["written"] = os.path.exists(directory)
    return found


SCENARIOS = {
    "global": scenario_global,
    "explicit": scenario_explicit,
    "memory": scenario_memory,
    "errors": scenario_errors,
}


def main(names):
    for name in names:
        try:
            result = SCENARIOS[name]()
        except Exception:
            result = {"failed": traceback.format_exc()}
        print(
            "RESULT " + json.dumps({"scenario": name, **result}, default=str),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or list(SCENARIOS))
