"""`DynamicBatchSize` and the noise probe under `DataParallel` on 8 devices.

Eight virtual CPU devices need `XLA_FLAGS` before JAX starts, so every
scenario runs in one fresh process, which prints one JSON line per scenario;
the tests read them. Observables: the sharding XLA gives the batch inside
the compiled train step (`jax.debug.inspect_array_sharding`), the
optimizer's learning rate, JAX's compile events (counted by function, as
`benchmarks/overhead.py` counts them), the compiled probe's HLO, and the
closed-form noise scale of a linear regression.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

DEVICES = 8

_SCRIPT = textwrap.dedent(
    """
    import collections
    import json
    import os
    import warnings

    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np

    import keras_batchtune
    from keras_batchtune import gradients

    assert len(jax.devices()) == 8, jax.devices()
    COMPILATIONS = collections.Counter()

    def on_event(event, duration_secs, **kwargs):
        if event.endswith("backend_compile_duration"):
            COMPILATIONS[kwargs.get("fun_name", "?")] += 1

    jax.monitoring.register_event_duration_secs_listener(on_event)

    def emit(name, **values):
        print("RESULT", json.dumps({"scenario": name, **values}), flush=True)

    keras.distribution.set_distribution(keras.distribution.DataParallel())

    # 1. The noise probe: per-device gradients, against the closed form
    # (y = x.w* + eps, loss (x.w - y)^2 at w = w* + e, |e| = sigma = 1:
    # B_simple = ((d + 1) + d) = 21 for d = 10).
    dim = 10
    rng = np.random.default_rng(0)
    w_star = rng.standard_normal((dim, 1))
    x = rng.standard_normal((16384, dim))
    y = (x @ w_star + rng.standard_normal((16384, 1))).astype("float32")
    x = x.astype("float32")
    e = rng.standard_normal((dim, 1))
    weights = (w_star + e / np.linalg.norm(e)).astype("float32")

    def linear_model():
        model = keras.Sequential(
            [keras.Input((dim,)), keras.layers.Dense(1, use_bias=False)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.layers[0].kernel.assign(weights)
        return model

    kwargs = dict(small_batch_size=16, large_batch_size=512, num_batches=32,
                  seed=0)
    parallel = gradients.gradient_noise_scale(linear_model(), (x, y), **kwargs)
    model = linear_model()
    probe = gradients.GradientNoiseProbe(
        model, small_batch_size=16, large_batch_size=512)
    for start in (0, 512, 1024):
        probe(x[start:start + 512], y[start:start + 512])
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.metrics_variables],
        [v.value for v in model.optimizer.variables],
        probe._shard((x[:512], y[:512], None)),
    )
    hlo = probe._function.lower(*state).compile().as_text()
    entry = next(line for line in hlo.splitlines() if line.startswith("ENTRY"))
    collectives = [
        line.strip() for line in hlo.splitlines()
        if any(op in line for op in (
            " all-reduce(", " all-gather(", " all-to-all(",
            " collective-permute(", " reduce-scatter("))
    ]
    try:
        gradients.GradientNoiseProbe(
            model, small_batch_size=128, large_batch_size=512)
        refused = ""
    except ValueError as error:
        refused = str(error)
    keras.distribution.set_distribution(None)
    single = gradients.gradient_noise_scale(linear_model(), (x, y), **kwargs)
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    emit(
        "probe",
        devices=gradients.data_parallel_devices(),
        num_replicas=probe.num_replicas,
        parallel=list(parallel),
        single=list(single),
        cache_size=probe._function._cache_size(),
        entry=entry,
        collectives=collectives,
        refused=refused,
    )

    # 2. A growing batch: 64 -> 128 -> a target of 200, which is not a
    # multiple of the micro-batch (64) and is taken as 192.
    SHARDS = []
    IN_TRAIN_STEP = [False]

    class RecordSharding(keras.layers.Layer):
        # Records, when the train step is compiled, the rows of the global
        # batch and the rows of it each device holds.
        def call(self, inputs):
            def record(sharding):
                if not IN_TRAIN_STEP[0]:
                    return  # the noise probe's
                SHARDS.append([
                    int(inputs.shape[0]),
                    int(sharding.shard_shape(inputs.shape)[0]),
                    len(sharding.device_set),
                ])
            if isinstance(inputs, jax.core.Tracer):
                jax.debug.inspect_array_sharding(inputs, callback=record)
            return inputs

    def growing_model():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((16,)),
            RecordSharding(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(4),
        ])
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    data_x = rng.random((600, 16), dtype="float32")
    data_y = (data_x[:, :4].argmax(axis=1)).astype("int32")
    model = growing_model()
    steps, rates = [], []
    log = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: steps.append(0),
        on_train_batch_begin=lambda batch, logs: IN_TRAIN_STEP.__setitem__(
            0, True),
        on_train_batch_end=lambda batch, logs: (
            steps.__setitem__(-1, steps[-1] + 1),
            IN_TRAIN_STEP.__setitem__(0, False)),
        on_epoch_end=lambda epoch, logs: rates.append(
            float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))),
    )
    callback = keras_batchtune.DynamicBatchSize(
        "schedule", schedule={1: 128, 2: 200}, min_batch_size=64,
        max_batch_size=256, measure_noise_scale=True, seed=0)
    COMPILATIONS.clear()
    SHARDS.clear()
    history = model.fit(
        keras_batchtune.resizable(data_x, data_y, batch_size=64, seed=0),
        epochs=4, callbacks=[callback, log], verbose=0)
    emit(
        "resize",
        batch_size=history.history["batch_size"],
        physical=history.history["physical_batch_size"],
        learning_rate=history.history["learning_rate"],
        optimizer_rate=rates,
        noise_scale=history.history["gradient_noise_scale"],
        steps=steps,
        shards=SHARDS,
        train_step=COMPILATIONS["jit(train_step)"],
        probe_compilations=COMPILATIONS["jit(_sharded_squared_norms)"],
    )

    # 3. 604 examples do not split over 8 devices: the last batch of each
    # epoch is cut to a multiple of 8 (4 examples left out), with a warning.
    model = growing_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            keras_batchtune.resizable(
                np.concatenate([data_x, data_x[:4]]),
                np.concatenate([data_y, data_y[:4]]), batch_size=64, seed=0),
            epochs=2, verbose=0,
            callbacks=[keras_batchtune.DynamicBatchSize(
                "schedule", schedule={1: 128}, min_batch_size=64,
                max_batch_size=128)])
    emit(
        "uneven_examples",
        physical=history.history["physical_batch_size"],
        loss=history.history["loss"],
        warnings=[str(w.message) for w in caught
                  if "keras_batchtune" in str(w.message)],
    )

    # 4. A micro-batch that does not split over the devices is refused.
    try:
        growing_model().fit(
            keras_batchtune.resizable(data_x, data_y, batch_size=12),
            epochs=1, verbose=0,
            callbacks=[keras_batchtune.DynamicBatchSize(
                "schedule", schedule={1: 24}, min_batch_size=12,
                max_batch_size=48)])
        message = ""
    except ValueError as error:
        message = str(error)
    emit("micro_batch", message=message)
    """
)


@pytest.fixture(scope="module")
def results():
    # A fresh process (XLA_FLAGS before JAX starts); the timeout only stops
    # a hang.
    root = os.path.dirname(
        os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    )
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join([root, *sys.path]),
    }
    env.pop("XLA_FLAGS", None)
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=root,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    found = {}
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            values = json.loads(line.split(" ", 1)[1])
            found[values.pop("scenario")] = values
    return found


def test_the_probe_takes_each_devices_gradient_as_a_small_batch(results):
    probe = results["probe"]
    assert probe["devices"] == DEVICES
    assert probe["num_replicas"] == DEVICES
    # Closed form: B_simple = 21, |G|^2 = 4, tr(Sigma) = 84; the same
    # tolerance as the single-device test.
    for value, true in zip(probe["parallel"], (21.0, 4.0, 84.0)):
        assert abs(value / true - 1) < 0.15, probe["parallel"]
    # The same small batches as on one device: the same estimate.
    for parallel, single in zip(probe["parallel"], probe["single"]):
        assert parallel == pytest.approx(single, rel=1e-4)
    # One compilation for every call.
    assert probe["cache_size"] == 1
    # Each device gets 512 / 8 = 64 rows of the batch, and the only
    # communication is the final all-reduce of the gradients and a scalar.
    assert "f32[64,10]" in probe["entry"], probe["entry"]
    assert probe["collectives"], "no reduction at all"
    for line in probe["collectives"]:
        assert " all-reduce(" in line, line
        assert "psum" in line, line
    # `large_batch_size` must hold a small batch for each device.
    assert "`large_batch_size`" in probe["refused"]
    assert "8 replicas" in probe["refused"]


def test_a_resize_reaches_every_device(results):
    resize = results["resize"]
    assert resize["batch_size"] == [64, 128, 192, 192]
    assert resize["physical"] == [64, 128, 192, 192]
    # 600 examples: 9 x 64 + 24, 4 x 128 + 88, 3 x 192 + 24.
    assert resize["steps"] == [10, 5, 4, 4]
    # Each compiled shape is split over the 8 devices, B / 8 rows each.
    seen = {tuple(shard) for shard in resize["shards"]}
    expected = {
        (rows, rows // DEVICES, DEVICES) for rows in (64, 24, 128, 88, 192)
    }
    assert seen == expected, resize["shards"]


def test_the_learning_rate_follows_the_global_batch(results):
    resize = results["resize"]
    # Linear rule on the global batch: 0.01 * B / 64.
    expected = [0.01, 0.02, 0.03, 0.03]
    assert resize["learning_rate"] == pytest.approx(expected, rel=1e-6)
    # The optimizer's own learning rate after each epoch's resize.
    assert resize["optimizer_rate"] == pytest.approx(
        [0.02, 0.03, 0.03, 0.03], rel=1e-6
    )


def test_one_compilation_per_distinct_batch_shape(results):
    resize = results["resize"]
    # Shapes fed: 64, 24 | 128, 88 | 192, 24 | 192, 24: five distinct
    # ones (the last batch of an epoch is a shape of its own, and 24 comes
    # back), five compilations of the train step.
    assert resize["train_step"] == 5
    # The noise probe, measured at each epoch end, compiles once.
    assert resize["probe_compilations"] == 1
    assert all(value > 0 for value in resize["noise_scale"])


def test_examples_that_do_not_split_leave_out_the_remainder(results):
    uneven = results["uneven_examples"]
    assert uneven["physical"] == [64, 128]
    assert all(loss == loss for loss in uneven["loss"])  # finite, no NaN
    assert len(uneven["warnings"]) == 1
    assert "604 examples" in uneven["warnings"][0]
    assert "last 4 examples" in uneven["warnings"][0]


def test_a_micro_batch_that_does_not_split_is_refused(results):
    message = results["micro_batch"]["message"]
    assert "`batch_size`" in message
    assert "8 devices" in message
