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
