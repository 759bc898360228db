import keras
import numpy as np
import pytest
import tensorflow as tf

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


def test_model_and_optimizer_are_put_back(digits):
    x, y, _, _ = digits
    model = make_model()
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    weights = [v.numpy().copy() for v in model.weights]
    slots = [v.numpy().copy() for v in model.optimizer.variables]
    result = find_learning_rate(model, x, y, num_steps=30)
    assert len(result.learning_rates) == len(result.losses) <= 30
    for before, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(before, variable.numpy())
    for before, variable in zip(slots, model.optimizer.variables):
        np.testing.assert_array_equal(before, variable.numpy())
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)


def test_an_optimizer_with_a_schedule_keeps_its_schedule(digits):
    x, y, _, _ = digits
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5)
    model = make_model(keras.optimizers.Adam(schedule))
    result = find_learning_rate(
        model, x, y, min_learning_rate=1e-4, max_learning_rate=1.0
    )
    assert 1e-5 < result.suggestion < 1.0
    assert model.optimizer._learning_rate is schedule
    history = model.fit(x[:64], y[:64], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_a_diverging_run_stops_early_and_a_dataset_is_rebatched(digits):
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
