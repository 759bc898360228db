"""Writing KerasTuner's best-epoch checkpoint once per `fit`, not per epoch."""

import keras


class DeferredBestEpochCheckpoint(keras.callbacks.Callback):
    """Keeps the best epoch's weights in memory; writes them when fit ends.

    KerasTuner's `SaveBestEpoch` writes the weights file at every epoch that
    improves the objective (about 12 ms each for a small model, 5% of a short
    trial). This callback takes its place: it shares that `SaveBestEpoch`'s
    objective, file path and best value (so with `executions_per_trial > 1`
    the file still holds the best epoch over all executions), keeps a copy of
    the best weights, and writes the file once, at the end of `fit`, with
    `SaveBestEpoch`'s own writer. The model's weights are restored after the
    write, so code running after `fit` sees the final weights as usual.

    Example:

    ```python
    callbacks = [defer(callback) for callback in callbacks]
    ```

    Args:
        save_best_epoch: The `SaveBestEpoch` callback KerasTuner made for the
            trial.
    """

    def __init__(self, save_best_epoch):
        super().__init__()
        self.save_best_epoch = save_best_epoch
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        objective = self.save_best_epoch.objective
        if not objective.has_value(logs):
            # As SaveBestEpoch: without the objective, keep the last epoch.
            self.best_weights = self.model.get_weights()
            return
        value = objective.get_value(logs)
        if objective.better_than(value, self.save_best_epoch.best_value):
            self.save_best_epoch.best_value = value
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is None:
            return
        final_weights = self.model.get_weights()
        self.model.set_weights(self.best_weights)
        self.save_best_epoch.set_model(self.model)
        self.save_best_epoch._save_model()
        self.model.set_weights(final_weights)
        self.best_weights = None


def defer(callback):
    """Wraps KerasTuner's `SaveBestEpoch`; returns other callbacks as they are.

    `SaveBestEpoch` is not exported by KerasTuner, so it is recognised by its
    class name, as KerasTuner recognises the `TensorBoard` callback.

    Args:
        callback: A Keras callback.

    Returns:
        A `DeferredBestEpochCheckpoint`, or `callback` itself.
    """
    if type(callback).__name__ == "SaveBestEpoch":
        return DeferredBestEpochCheckpoint(callback)
    return callback
