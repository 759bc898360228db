import keras
import numpy as np
import pytest
from conftest import make_mlp

from keras_batchtune import trial_fit


def test_injects_the_batch_size_and_couples_the_learning_rate(digits):
    x, y, x_val, y_val = digits
    model = make_mlp(0.05)
    run = trial_fit.TrialFit(batch_size=128, reference_batch_size=32)
    run.install(model)
    history = model.fit(
        x, y, epochs=3, validation_data=(x_val, y_val), verbose=0
    )
    assert len(history.history["loss"]) == 3
    assert run.batch_size_used == 128 and run.tuner_set_batch_size
    assert float(model.optimizer.learning_rate) == pytest.approx(0.2)
    records = run.records()
    assert records["effective_learning_rate"] == pytest.approx(0.2)
    assert records["fit_seconds"] > 0
    # Throughput leaves out the first epoch: 2 epochs of 600 examples.
    recorder = run._recorders[0]
    expected = 1200 / sum(recorder.epoch_train_seconds[1:])
    assert records["examples_per_second"] == pytest.approx(expected)


def test_an_explicit_batch_size_wins_and_is_coupled(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05)
    run = trial_fit.TrialFit(batch_size=256, reference_batch_size=32)
    run.install(model)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert run.batch_size_used == 64 and not run.tuner_set_batch_size
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)


def test_fitting_twice_does_not_scale_twice(digits):
    x, y, _, _ = digits
    model = make_mlp(0.05)
    run = trial_fit.TrialFit(batch_size=64, reference_batch_size=32)
    run.install(model)
    model.fit(x, y, epochs=1, verbose=0)
    model.fit(x, y, epochs=1, verbose=0)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)


def test_nan_loss_stops_training_and_is_reported():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(1e30), "mse")
    x = np.ones((64, 4), "float32")
    y = np.full((64, 1), 1e3, "float32")
    run = trial_fit.TrialFit(batch_size=8)
    run.install(model)
    history = model.fit(x, y, epochs=20, verbose=0)
    assert run.diverged_at_epoch is not None
    assert len(history.history["loss"]) == run.diverged_at_epoch < 20


def test_accumulated_micro_batches_equal_one_large_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")

    def model():
        keras.utils.set_random_seed(1)
        net = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(16, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        net.compile(keras.optimizers.SGD(0.05), "mse")
        return net

    whole, accumulated = model(), model()
    runs = [
        trial_fit.TrialFit(batch_size=64, reference_batch_size=32),
        trial_fit.TrialFit(
            batch_size=64, reference_batch_size=32, max_micro_batch_size=16
        ),
    ]
    for net, run in zip((whole, accumulated), runs):
        run.install(net)
        net.fit(x, y, epochs=1, shuffle=False, verbose=0)
    assert runs[1].records()["micro_batch_size"] == 16
    assert runs[1].records()["accumulation_steps"] == 4
    assert int(accumulated.optimizer.iterations) == 1  # one update
    # The coupling uses the effective batch of 64, not the micro-batch.
    for run in runs:
        assert run.effective_learning_rate == pytest.approx(0.1)
    for a, b in zip(whole.get_weights(), accumulated.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Without accumulation, four updates of 16 give different weights.
    plain = model()
    plain.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(plain.get_weights()[0], whole.get_weights()[0])
