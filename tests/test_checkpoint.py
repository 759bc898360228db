import keras
import numpy as np
from conftest import make_mlp

from keras_batchtune import BatchTuner
from keras_batchtune import checkpoint


def test_best_epoch_weights_are_written_once_at_the_end(tmp_path, digits):
    x, y, x_val, y_val = digits
    tuner = BatchTuner(
        lambda hp: make_mlp(0.05),
        objective="val_accuracy",
        max_trials=1,
        directory=tmp_path,
    )
    writes = []
    original = checkpoint.DeferredBestEpochCheckpoint.on_train_end

    def counting_on_train_end(self, logs=None):
        writes.append(self.save_best_epoch.best_value)
        return original(self, logs)

    checkpoint.DeferredBestEpochCheckpoint.on_train_end = counting_on_train_end
    try:
        tuner.search(x, y, validation_data=(x_val, y_val), epochs=5, verbose=0)
    finally:
        checkpoint.DeferredBestEpochCheckpoint.on_train_end = original
    trial = tuner.oracle.get_best_trials(1)[0]
    val_accuracy = trial.metrics.get_history("val_accuracy")
    assert len(writes) == 1
    assert writes[0] == max(v.value[0] for v in val_accuracy)
    # The file holds the best epoch, not the last one.
    model = tuner.get_best_models(1)[0]
    score = model.evaluate(x_val, y_val, verbose=0)[1]
    assert np.isclose(score, trial.score)


def test_other_callbacks_pass_through():
    callback = keras.callbacks.History()
    assert checkpoint.defer(callback) is callback


def test_warm_start_restores_weights_and_optimizer_state(tmp_path, digits):
    x, y, _, _ = digits
    path = str(tmp_path / "start.weights.h5")
    first = make_mlp(0.05)
    first.fit(x, y, batch_size=64, epochs=1, verbose=0)
    first.save_weights(path)
    seen = {}

    class AtTrainBegin(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["weights"] = self.model.get_weights()
            seen["iterations"] = int(self.model.optimizer.iterations)
            seen["momentums"] = [
                v.numpy() for v in self.model.optimizer.variables[2:]
            ]

    second = make_mlp(0.05)
    second.fit(
        x,
        y,
        batch_size=64,
        initial_epoch=1,
        epochs=2,
        verbose=0,
        callbacks=[checkpoint.WarmStart(path), AtTrainBegin()],
    )
    for started, saved in zip(seen["weights"], first.get_weights()):
        np.testing.assert_array_equal(started, saved)
    assert seen["iterations"] == int(first.optimizer.iterations) == 10
    saved_momentums = [v.numpy() for v in first.optimizer.variables[2:]]
    assert len(seen["momentums"]) == len(saved_momentums) > 0
    for started, saved in zip(seen["momentums"], saved_momentums):
        np.testing.assert_array_equal(started, saved)
    assert int(second.optimizer.iterations) == 20


def test_build_optimizer_lets_load_weights_restore_its_state(
    tmp_path, digits, recwarn
):
    x, y, _, _ = digits
    path = str(tmp_path / "trained.weights.h5")
    trained = make_mlp(0.05)
    trained.fit(x, y, batch_size=64, epochs=1, verbose=0)
    trained.save_weights(path)
    fresh = make_mlp(0.05)
    checkpoint.build_optimizer(fresh)
    fresh.load_weights(path)
    assert not [w for w in recwarn if "Skipping variable" in str(w.message)]
    assert int(fresh.optimizer.iterations) == 10
    for loaded, saved in zip(
        fresh.optimizer.variables, trained.optimizer.variables
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(loaded.value),
            keras.ops.convert_to_numpy(saved.value),
        )
