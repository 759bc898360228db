"""The learning-rate range test on real Keras models, on each backend.

Everything here runs under TensorFlow, JAX and PyTorch, except the
`tf.data` input (TensorFlow installed, any backend).
"""

import keras
import numpy as np
import pytest

from keras_batchtune.backend import keras_internals
from keras_batchtune.demo import load_digits_split
from keras_batchtune.lr_finder import find_learning_rate


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def make_model(optimizer=None, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def test_suggestion_trains_better_than_a_decade_and_a_half_either_side(
    digits,
):
    x, y, x_val, y_val = digits
    result = find_learning_rate(make_model(), x, y, batch_size=32)
    assert result.band[0] < result.suggestion < result.band[1]
    accuracies = {}
    # A quick sweep: the suggestion against rates 30x lower and higher.
    for factor in (1 / 30, 1.0, 30.0):
        rate = result.suggestion * factor
        model = make_model(keras.optimizers.SGD(rate, momentum=0.9))
        model.fit(x, y, batch_size=32, epochs=3, verbose=0)
        accuracies[factor] = model.evaluate(x_val, y_val, verbose=0)[1]
    assert accuracies[1.0] >= 0.9
    assert accuracies[1.0] > accuracies[1 / 30]
    assert accuracies[1.0] > accuracies[30.0]


def _values(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def _assert_unchanged(values, variables):
    assert len(values) == len(variables)
    for old, variable in zip(values, variables):
        new = keras.ops.convert_to_numpy(variable)
        np.testing.assert_array_equal(old, new, variable.path)


def test_model_and_optimizer_are_put_back(digits):
    x, y, _, _ = digits
    model = make_model()
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    learning_rate = keras_internals.optimizer_learning_rate(model.optimizer)
    weights = _values(model.weights)
    slots = _values(model.optimizer.variables)
    result = find_learning_rate(model, x, y, num_steps=30)
    assert len(result.learning_rates) == len(result.losses) <= 30
    _assert_unchanged(weights, model.weights)
    _assert_unchanged(slots, model.optimizer.variables)
    assert (
        keras_internals.optimizer_learning_rate(model.optimizer)
        is learning_rate
    )
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    # Training goes on at the compiled learning rate.
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)
    assert int(model.optimizer.iterations) == 4


def test_each_step_trains_at_its_rate():
    # One weight w (from 0), every example x = 1, y = 2: the loss of a step
    # is (w - 2)^2 and plain SGD moves w by -rate * 2 (w - 2), whatever the
    # shuffling. The recorded losses follow the exponential ramp only if
    # each step really trained at its rate.
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x = np.ones((64, 1), "float32")
    y = np.full((64, 1), 2.0, "float32")
    result = find_learning_rate(
        model,
        x,
        y,
        batch_size=16,
        min_learning_rate=1e-2,
        max_learning_rate=0.4,
        num_steps=12,
    )
    rates = np.geomspace(1e-2, 0.4, 12)
    np.testing.assert_allclose(result.learning_rates, rates, rtol=1e-6)
    w, expected = 0.0, []
    for rate in rates:
        expected.append((w - 2.0) ** 2)
        w -= rate * 2.0 * (w - 2.0)
    np.testing.assert_allclose(result.losses, expected, rtol=1e-3)
    assert float(keras.ops.convert_to_numpy(model.weights[0])[0, 0]) == 0.0


def test_an_optimizer_with_a_schedule_keeps_its_schedule(digits):
    x, y, _, _ = digits
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5)
    model = make_model(keras.optimizers.Adam(schedule))
    result = find_learning_rate(
        model, x, y, min_learning_rate=1e-4, max_learning_rate=1.0
    )
    assert 1e-5 < result.suggestion < 1.0
    assert keras_internals.optimizer_learning_rate(model.optimizer) is schedule
    assert int(model.optimizer.iterations) == 0
    history = model.fit(x[:64], y[:64], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_a_diverging_run_stops_early(digits):
    x, y, _, _ = digits
    result = find_learning_rate(
        make_model(),
        x,
        y,
        batch_size=16,
        min_learning_rate=1e-2,
        max_learning_rate=1e4,
    )
    assert len(result.losses) < 100
    assert result.learning_rates[-1] < 1e4
    assert result.band[1] <= result.learning_rates[-1]


@pytest.mark.requires_tensorflow
def test_a_dataset_is_rebatched(digits):
    import tensorflow as tf

    x, y, _, _ = digits
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(500)
    result = find_learning_rate(
        make_model(),
        dataset,
        batch_size=16,
        min_learning_rate=1e-2,
        max_learning_rate=1e4,
    )
    assert len(result.losses) < 100
    assert result.learning_rates[-1] < 1e4
    assert result.band[1] <= result.learning_rates[-1]


def test_plot_writes_an_image(digits, tmp_path):
    x, y, _, _ = digits
    result = find_learning_rate(make_model(), x, y, num_steps=20)
    path = tmp_path / "lr_find.png"
    result.plot(str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert "suggestion=" in repr(result)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"min_learning_rate": 1.0, "max_learning_rate": 0.1}, "min_learning"),
        ({"num_steps": 5}, "num_steps"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"stop_factor": 1.0}, "stop_factor"),
    ],
)
def test_bad_arguments_are_named(digits, kwargs, name):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match=f"`{name}"):
        find_learning_rate(make_model(), x, y, **kwargs)


def test_an_uncompiled_model_is_refused(digits):
    x, y, _, _ = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="compiled"):
        find_learning_rate(model, x, y)
