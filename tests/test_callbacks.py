"""Tests of `DynamicBatchSize` in real `model.fit` runs on digits.

Run on every backend: each one's `fit` grows the physical batch (the
input makes bigger batches from the next epoch on) on one device, and
accumulates micro-batches beyond `max_physical_batch_size`. What only one
backend has (TensorFlow's untraced batch dimension, JAX's compilation per
batch shape, `tf.distribute`) is marked.
"""

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import keras_batchtune
from tests.conftest import BACKEND
from tests.conftest import make_mlp


def _fit(
    model,
    digits,
    callback,
    epochs=4,
    batch_size=16,
    shuffle=True,
    max_physical_batch_size=None,
    **fit_kwargs,
):
    x, y, x_val, y_val = digits
    data = keras_batchtune.resizable(
        x,
        y,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=0,
        max_physical_batch_size=max_physical_batch_size,
    )
    callbacks = [callback] + fit_kwargs.pop("callbacks", [])
    return model.fit(
        data,
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=callbacks,
        **{"verbose": 0, **fit_kwargs},
    )


def _schedule(**kwargs):
    return keras_batchtune.DynamicBatchSize(
        "schedule",
        schedule={1: 32, 2: 128},
        min_batch_size=16,
        max_batch_size=256,
        **kwargs,
    )


def test_schedule_resizes_by_accumulation_with_coupling_and_right_steps(
    digits,
):
    keras.utils.set_random_seed(0)
    model = make_mlp(learning_rate=0.02)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The physical batch capped at the micro-batch: always accumulate.
        history = _fit(model, digits, _schedule(), max_physical_batch_size=16)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    logs = history.history
    assert logs["batch_size"] == [16, 32, 128, 128]
    assert logs["physical_batch_size"] == [16] * 4
    np.testing.assert_allclose(
        logs["learning_rate"], [0.02, 0.04, 0.16, 0.16], rtol=1e-6
    )
    # 600 examples in 38 micro-batches per epoch, whatever the batch size.
    assert history.params["steps"] == 38
    # Updates: 38 + 38 // 2 + (38 + 0) // 8 twice (groups span epochs).
    assert _iterations(model) == 38 + 19 + 76 // 8
    assert logs["val_accuracy"][-1] > 0.8


class _ExampleCounter(keras.layers.Layer):
    """Counts the examples trained on, and sums their ids (feature 0)."""

    def build(self, input_shape):
        self.count = self.add_weight((), initializer="zeros", trainable=False)
        self.id_sum = self.add_weight((), initializer="zeros", trainable=False)

    def call(self, inputs, training=False):
        if training:
            self.count.assign_add(
                keras.ops.cast(keras.ops.shape(inputs)[0], "float32")
            )
            self.id_sum.assign_add(keras.ops.sum(inputs[:, 0]))
        # The id itself is not a feature.
        return keras.ops.concatenate([inputs[:, :1] * 0, inputs[:, 1:]], 1)


class _StepLog(keras.callbacks.Callback):
    """Per epoch: steps run, `params["steps"]`, examples and their id sum."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.steps, self.params_steps, self.examples, self.id_sums = (
            [],
            [],
            [],
            [],
        )

    def on_epoch_begin(self, epoch, logs=None):
        self.params_steps.append(self.params["steps"])
        self.counter.count.assign(0.0)
        self.counter.id_sum.assign(0.0)
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1

    def on_epoch_end(self, epoch, logs=None):
        self.steps.append(self.seen)
        self.examples.append(_value(self.counter.count))
        self.id_sums.append(_value(self.counter.id_sum))


def _value(variable):
    return int(keras.ops.convert_to_numpy(variable))


def _iterations(model):
    return _value(model.optimizer.iterations)


def _counting_model():
    """An MLP whose first layer counts the examples trained on."""
    counter = _ExampleCounter()
    model = keras.Sequential(
        [
            keras.Input((64,)),
            counter,
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.02, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model, counter


def _with_ids(digits):
    x, y, x_val, y_val = digits
    x = x.copy()
    x[:, 0] = np.arange(len(x))  # feature 0 carries the example id
    return x, y, x_val, y_val


def _progress_bars(printed):
    """Per epoch of a `verbose=1` fit: the bar's targets and its last count."""
    printed = re.sub(r"\x1b\[[0-9;]*m", "", printed)  # colours
    bars = []
    for section in re.split(r"Epoch \d+/\d+", printed)[1:]:
        counts = re.findall(r"(\d+)/(\d+) +━", section)
        bars.append(({int(target) for _, target in counts}, int(counts[-1][0])))
    return bars


def _count_train_step_calls(model):
    """Counts the Python calls of `train_step` per epoch (the traces).

    TensorFlow and JAX run the Python of `train_step` only when they trace
    (compile) it; PyTorch runs it at every step.
    """
    calls = []
    train_step = model.train_step

    def counted_train_step(*args):
        calls.append(1)
        return train_step(*args)

    model.train_step = counted_train_step
    calls_by_epoch = []
    log = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: calls_by_epoch.append(len(calls))
    )
    return log, calls_by_epoch


def test_schedule_resizes_physically(digits, capsys):
    # One device: bigger batches come from the input itself, on every
    # backend; the steps Keras runs, `params["steps"]` and the progress bar
    # follow, and every example is used once per epoch.
    keras.utils.set_random_seed(0)
    model, counter = _counting_model()
    step_log = _StepLog(counter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = _fit(
            model,
            _with_ids(digits),
            _schedule(),
            callbacks=[step_log],
            verbose=1,
        )
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    logs = history.history
    assert logs["batch_size"] == [16, 32, 128, 128]
    assert logs["physical_batch_size"] == [16, 32, 128, 128]
    np.testing.assert_allclose(
        logs["learning_rate"], [0.02, 0.04, 0.16, 0.16], rtol=1e-6
    )
    # 600 examples: ceil(600 / 16), ceil(600 / 32), ceil(600 / 128).
    assert step_log.steps == [38, 19, 5, 5]
    assert step_log.params_steps == [38, 19, 5, 5]
    assert _iterations(model) == 38 + 19 + 5 + 5
    assert step_log.examples == [600] * 4
    assert step_log.id_sums == [sum(range(600))] * 4
    # Each epoch's bar counts to that epoch's steps, and reaches them.
    assert _progress_bars(capsys.readouterr().out) == [
        ({38}, 38),
        ({19}, 19),
        ({5}, 5),
        ({5}, 5),
    ]
    assert logs["accuracy"][-1] > 0.8


@pytest.mark.tensorflow_backend
def test_physical_growth_does_not_retrace_on_tensorflow(digits):
    # The `tf.data` batch size is a variable read per epoch, so the train
    # step (traced with an unknown batch dimension) is not traced again.
    model, _ = _counting_model()
    trace_log, traces_by_epoch = _count_train_step_calls(model)
    _fit(model, _with_ids(digits), _schedule(), callbacks=[trace_log])
    # Traced in the first epoch (TensorFlow traces twice there, as in any
    # `fit`: once more when the optimizer creates its variables), and only
    # then: at least one trace counted, or the count would prove nothing.
    assert traces_by_epoch[0] >= 1
    assert traces_by_epoch == [traces_by_epoch[0]] * 4


@pytest.mark.skipif(BACKEND != "jax", reason="JAX compiles per batch shape")
def test_physical_growth_compiles_once_per_batch_shape_on_jax(digits):
    # Each new batch shape is a new XLA compilation: 600 examples in
    # batches of 16 (and a last one of 8), then 32 (24), then 128 (88):
    # two shapes per new size, none when the size repeats.
    model, _ = _counting_model()
    trace_log, traces_by_epoch = _count_train_step_calls(model)
    _fit(model, _with_ids(digits), _schedule(), callbacks=[trace_log])
    assert traces_by_epoch == [2, 4, 6, 6]


_DATA_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    import keras_batchtune
    from tests.conftest import make_mlp

    keras.distribution.set_distribution(keras.distribution.DataParallel())
    rng = np.random.default_rng(0)
    x = rng.random((600, 64), dtype="float32")
    y = rng.integers(0, 10, 600).astype("int32")
    steps = []
    log = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: steps.append(0),
        on_train_batch_end=lambda batch, logs: steps.__setitem__(
            -1, steps[-1] + 1
        ),
    )
    callback = keras_batchtune.DynamicBatchSize(
        "schedule", schedule={1: 32, 2: 128}, min_batch_size=16,
        max_batch_size=256)
    history = make_mlp().fit(
        keras_batchtune.resizable(x, y, batch_size=16, seed=0), epochs=3,
        callbacks=[callback, log], verbose=0)
    print("RESULT", json.dumps({
        "devices": keras.distribution.list_devices(),
        "physical": history.history["physical_batch_size"],
        "steps": steps,
    }))
    """
)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution on JAX")
def test_physical_growth_under_jax_data_parallel():
    # `keras.distribution.DataParallel` over two virtual CPU devices (set
    # before JAX starts, hence a fresh process): each batch is split across
    # the devices, and the batch still grows physically.
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    result = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(
        line for line in result.stdout.splitlines() if line.startswith("RESULT")
    )
    found = json.loads(line.split(" ", 1)[1])
    assert len(found["devices"]) == 2
    assert found["physical"] == [16, 32, 128]
    assert found["steps"] == [38, 19, 5]


def test_physical_batch_capped_then_accumulates(digits):
    model = make_mlp(learning_rate=0.02)
    history = _fit(
        model, digits, _schedule(), epochs=3, max_physical_batch_size=32
    )
    logs = history.history
    assert logs["batch_size"] == [16, 32, 128]
    assert logs["physical_batch_size"] == [16, 32, 32]
    # 19 physical batches of 32 in the last epoch, 4 of them per update.
    assert _iterations(model) == 38 + 19 + 19 // 4


@pytest.mark.parametrize("max_physical_batch_size", [16, None])
def test_growing_inside_fit_trains_as_fits_at_each_batch_size(
    digits, max_physical_batch_size
):
    # 576 examples: 36 micro-batches of 16, 9 batches of 64, so updates
    # align with epochs. Growing 16 -> 64 in one `fit`, by accumulating 4
    # micro-batches (cap 16) or physically (no cap), trains as two plain
    # fits at 16 then 64 with the coupled learning rate (linear: x4). On
    # JAX this also checks that the callback changes the optimizer while
    # the fit loop's state is synced to the variables.
    x, y = digits[0][:576], digits[1][:576]
    keras.utils.set_random_seed(0)
    reference = make_mlp(learning_rate=0.02)
    weights = reference.get_weights()
    reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    reference.optimizer.learning_rate = 0.08
    reference.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    model = make_mlp(learning_rate=0.02)
    model.set_weights(weights)
    data = keras_batchtune.resizable(
        x,
        y,
        batch_size=16,
        shuffle=False,
        max_physical_batch_size=max_physical_batch_size,
    )
    callback = keras_batchtune.DynamicBatchSize(
        "schedule", schedule={1: 64}, min_batch_size=16, max_batch_size=64
    )
    history = model.fit(data, epochs=2, callbacks=[callback], verbose=0)
    logs = history.history
    assert logs["batch_size"] == [16, 64]
    assert logs["physical_batch_size"] == [16, max_physical_batch_size or 64]
    np.testing.assert_allclose(logs["learning_rate"], [0.02, 0.08], rtol=1e-6)
    assert _iterations(model) == _iterations(reference) == 36 + 9
    for got, expected in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.requires_tensorflow
def test_dataset_input_resizes_physically(digits):
    # A `tf.data.Dataset` feeds every backend's `fit` where TensorFlow is
    # installed (JAX and PyTorch read it as numpy batches).
    import tensorflow as tf

    x, y, x_val, y_val = _with_ids(digits)
    keras.utils.set_random_seed(0)
    model, counter = _counting_model()
    step_log = _StepLog(counter)
    data = keras_batchtune.resizable(
        tf.data.Dataset.from_tensor_slices((x, y)), batch_size=16, seed=0
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            data,
            epochs=4,
            validation_data=(x_val, y_val),
            callbacks=[_schedule(), step_log],
            verbose=0,
        )
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert history.history["physical_batch_size"] == [16, 32, 128, 128]
    assert step_log.steps == step_log.params_steps == [38, 19, 5, 5]
    assert step_log.examples == [600] * 4
    assert step_log.id_sums == [sum(range(600))] * 4


def test_keep_lr_and_sqrt_rule(digits):
    model = make_mlp(learning_rate=0.02)
    history = _fit(model, digits, _schedule(keep_lr=True), epochs=3)
    np.testing.assert_allclose(history.history["learning_rate"], [0.02] * 3)
    model = make_mlp(learning_rate=0.02)
    history = _fit(model, digits, _schedule(lr_scaling="sqrt"), epochs=3)
    np.testing.assert_allclose(
        history.history["learning_rate"],
        [0.02, 0.02 * 2**0.5, 0.02 * 8**0.5],
        rtol=1e-6,
    )


@pytest.mark.parametrize("physical", [True, False])
def test_learning_rate_schedule_is_rescaled_and_counts_updates(
    digits, physical
):
    decay = keras.optimizers.schedules.ExponentialDecay(0.05, 38, 0.5)
    model = make_mlp(optimizer=keras.optimizers.SGD(decay))
    history = _fit(
        model,
        digits,
        _schedule(base_batch_size=16),
        epochs=3,
        max_physical_batch_size=None if physical else 16,
    )
    # Epoch k ends after 38, 38 + 19 updates, then 5 physical batches of
    # 128 (600 examples) or 38 // 8 accumulated groups: the schedule decays
    # per update, and the batch rule multiplies it (x2, then x8).
    third_epoch_updates = 5 if physical else 38 // 8
    expected = [
        0.05 * 0.5 ** (38 / 38),
        2 * 0.05 * 0.5 ** (57 / 38),
        8 * 0.05 * 0.5 ** ((57 + third_epoch_updates) / 38),
    ]
    np.testing.assert_allclose(
        history.history["learning_rate"], expected, rtol=1e-5
    )


def test_noise_scale_policy_measures_and_grows(digits):
    keras.utils.set_random_seed(1)
    model = make_mlp(learning_rate=0.05)
    callback = keras_batchtune.DynamicBatchSize(
        "noise_scale",
        min_batch_size=16,
        max_batch_size=256,
        seed=0,
        patience=1,
        # The target is twice the estimate, so a move needs an estimate of
        # at least 16 (about 10 to 120 here, from one large batch each
        # epoch): the test checks that the measurement reaches the policy
        # and moves the batch, not the estimator (tests/test_noise.py).
        scale=2.0,
    )
    history = _fit(model, digits, callback, epochs=6)
    noise_scales = history.history["gradient_noise_scale"]
    assert len(noise_scales) == 6
    assert all(np.isfinite(value) and value > 0 for value in noise_scales)
    assert max(history.history["batch_size"]) > 16
    assert callback.batch_size_history == history.history["batch_size"]


def test_logs_reach_csv_logger(digits, tmp_path):
    path = tmp_path / "log.csv"
    _fit(
        make_mlp(),
        digits,
        _schedule(),
        epochs=3,
        callbacks=[keras.callbacks.CSVLogger(str(path))],
    )
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(float(row["batch_size"])) for row in rows] == [16, 32, 128]
    assert "learning_rate" in rows[0]


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_batch_and_lr(digits, tmp_path):
    def run(interrupt_at=None):
        callbacks = [keras.callbacks.BackupAndRestore(str(tmp_path))]
        if interrupt_at is not None:
            callbacks.append(_Interrupt(interrupt_at))
        callback = keras_batchtune.DynamicBatchSize(
            "plateau",
            monitor="loss",
            patience=0,
            min_delta=10.0,
            min_batch_size=16,
            max_batch_size=256,
        )
        model = make_mlp(learning_rate=0.01)
        history = _fit(model, digits, callback, epochs=5, callbacks=callbacks)
        return history, model

    with pytest.raises(RuntimeError, match="interrupted"):
        run(interrupt_at=2)
    # A fresh model, callback and fit, as after a crash.
    history, model = run()
    logs = history.history
    # Epochs 0-2 ran at 16, 16, 32 (the first epoch sets the best loss, then
    # the batch doubles every epoch) and chose 64 for epoch 3: the restarted
    # fit runs epochs 3 and 4 at 64 and 128, the LR coupled to them (a
    # fresh start would run at 16).
    assert logs["batch_size"] == [64, 128]
    np.testing.assert_allclose(logs["learning_rate"], [0.04, 0.08], rtol=1e-6)


@pytest.mark.parametrize("policy", ["schedule", "noise_scale"])
def test_resizes_under_mirrored_strategy_as_on_one_replica(
    digits, mirrored_strategy, policy
):
    # A real MirroredStrategy over two logical CPUs: the accumulation that
    # changes the batch per update runs across the replicas (Keras 3's own
    # cannot be traced there) and trains as one replica does.
    def callback():
        if policy == "schedule":
            return _schedule()
        return keras_batchtune.DynamicBatchSize(
            "noise_scale", min_batch_size=16, max_batch_size=256, seed=0
        )

    keras.utils.set_random_seed(0)
    single = make_mlp(learning_rate=0.02)
    initial_weights = single.get_weights()
    with mirrored_strategy.scope():
        mirrored = make_mlp(learning_rate=0.02)
    mirrored.set_weights(initial_weights)
    # Unshuffled: tf.distribute's copy of a shuffled dataset draws another
    # order, and the test compares the arithmetic.
    # One replica accumulates too (physical batch capped), to compare the
    # same arithmetic; several replicas always accumulate.
    single_history = _fit(
        single,
        digits,
        callback(),
        epochs=3,
        shuffle=False,
        max_physical_batch_size=16,
    )
    mirrored_history = _fit(
        mirrored, digits, callback(), epochs=3, shuffle=False
    )
    assert set(mirrored_history.history["physical_batch_size"]) == {16}
    batch_sizes = mirrored_history.history["batch_size"]
    if policy == "schedule":
        assert batch_sizes == single_history.history["batch_size"]
        assert batch_sizes == [16, 32, 128]
        assert keras.ops.convert_to_numpy(
            mirrored.optimizer.iterations
        ) == keras.ops.convert_to_numpy(single.optimizer.iterations)
        for got, expected in zip(mirrored.get_weights(), single.get_weights()):
            np.testing.assert_allclose(got, expected, atol=2e-4)
    else:
        # Measured from each replica's half of the micro-batch: its own
        # estimate, so its own decisions.
        assert all(16 <= size <= 256 for size in batch_sizes)
        noise_scale = mirrored_history.history["gradient_noise_scale"][-1]
        assert np.isfinite(noise_scale) and noise_scale > 0
    assert mirrored_history.history["val_accuracy"][-1] > 0.8


def test_plain_input_is_refused(digits):
    x, y = digits[0], digits[1]
    # A resizable input used by an earlier fit must not be mistaken for this
    # fit's arrays.
    make_mlp().fit(keras_batchtune.resizable(x, y, batch_size=32), verbose=0)
    with pytest.raises(ValueError, match="keras_batchtune.resizable"):
        make_mlp().fit(
            x, y, batch_size=32, epochs=1, verbose=0, callbacks=[_schedule()]
        )


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("bigger",), {}, "`policy`"),
        (
            ("plateau",),
            {"min_batch_size": 64, "max_batch_size": 32},
            "min_batch_size",
        ),
        (("schedule",), {"schedule": {2: 0}}, "schedule"),
        (("schedule",), {"schedule": lambda epoch: -1}, None),
        (("plateau",), {"factor": 1.0}, "factor"),
        (("plateau",), {"lr_scaling": "cubic"}, "lr_scaling"),
    ],
)
def test_bad_arguments(args, kwargs, match, digits):
    kwargs = {"min_batch_size": 16, "max_batch_size": 256, **kwargs}
    if match is None:
        # A callable schedule is only checked when it answers.
        with pytest.raises(ValueError, match="schedule"):
            _fit(
                make_mlp(),
                digits,
                keras_batchtune.DynamicBatchSize(*args, **kwargs),
                epochs=1,
            )
        return
    with pytest.raises(ValueError, match=match):
        keras_batchtune.DynamicBatchSize(*args, **kwargs)


def test_micro_batch_above_max_is_refused(digits):
    callback = keras_batchtune.DynamicBatchSize(
        "plateau", min_batch_size=8, max_batch_size=8
    )
    with pytest.raises(ValueError, match="max_batch_size"):
        _fit(make_mlp(), digits, callback, epochs=1, batch_size=16)
