"""KerasTuner's best-epoch checkpoint: written once per fit, read back.

Written once per `fit` from the state kept in memory
(`DeferredBestEpochCheckpoint`); read to warm-start a promoted trial
(`WarmStart`) and to load a trial's model with its optimizer state
(`load_best_epoch`, behind `BatchTuner.get_best_models`).
"""

import os

import keras
import keras_tuner

from keras_batchtune import coupling
from keras_batchtune import project_files
from keras_batchtune import trial_fit
from keras_batchtune.backend import keras_tuner_internals


class DeferredBestEpochCheckpoint(keras.callbacks.Callback):
    """Keeps the best epoch's state in memory; writes it when fit ends.

    KerasTuner's `SaveBestEpoch` writes the weights file at every epoch that
    improves the objective (about 12 ms each for a small model, 5% of a short
    trial). This callback takes its place: it shares that `SaveBestEpoch`'s
    objective, file path and best value (so with `executions_per_trial > 1`
    the file still holds the best epoch over all executions), keeps a copy of
    the best epoch's model weights and optimizer variables (slots, step
    count), and writes the file once, at the end of `fit`, with
    `SaveBestEpoch`'s own writer: the file holds what `SaveBestEpoch` would
    have written at that epoch. The model's and the optimizer's final state
    is put back after the write, so code running after `fit` sees it as
    usual.

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
        self.best_state = None

    def _state(self):
        optimizer = self.model.optimizer
        optimizer_values = []
        if optimizer is not None:
            # Through a tensor: numpy 2 warns on `keras.Variable.__array__`.
            optimizer_values = [
                keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(v))
                for v in optimizer.variables
            ]
        return self.model.get_weights(), optimizer_values

    def _set_state(self, state):
        weights, optimizer_values = state
        self.model.set_weights(weights)
        if optimizer_values:
            variables = self.model.optimizer.variables
            for variable, value in zip(variables, optimizer_values):
                variable.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        objective = self.save_best_epoch.objective
        if not objective.has_value(logs):
            # As SaveBestEpoch: without the objective, keep the last epoch.
            self.best_state = self._state()
            return
        value = objective.get_value(logs)
        if objective.better_than(value, self.save_best_epoch.best_value):
            self.save_best_epoch.best_value = value
            self.best_state = self._state()

    def on_train_end(self, logs=None):
        if self.best_state is None:
            return
        final_state = self._state()
        self._set_state(self.best_state)
        self.save_best_epoch.set_model(self.model)
        keras_tuner_internals.write_best_epoch_checkpoint(self.save_best_epoch)
        self._set_state(final_state)
        self.best_state = None


def build_optimizer(model):
    """Builds a model's optimizer, so that loading weights restores its state.

    Keras creates an optimizer's variables (slots, step count) when training
    starts; `model.load_weights` skips the saved optimizer state, with a
    warning, while they do not exist. Building them first makes it load.

    Example:

    ```python
    build_optimizer(model)
    model.load_weights("trial_01/checkpoint.weights.h5")
    ```

    Args:
        model: A built, compiled `keras.Model` (one without an optimizer, or
            not built yet, is left alone).
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built and model.built:
        optimizer.build(model.trainable_variables)


class WarmStart(keras.callbacks.Callback):
    """Loads a checkpoint into the model when `fit` begins.

    Used for a successive-halving trial that continues the training of its
    configuration's lower-rung trial, together with `fit(initial_epoch=)`.
    The optimizer is built first (Keras's TensorFlow backend would build it
    only when it traces the first step), so the file's optimizer state
    (momentum, iterations) is restored with the weights instead of being
    skipped with a warning. A float learning rate keeps the value the trial
    coupled to its batch size, not the lower rung's.

    Example:

    ```python
    model.fit(
        x, y, initial_epoch=2, epochs=4,
        callbacks=[WarmStart("trial_01/checkpoint.weights.h5")],
    )
    ```

    Args:
        filepath: A `.weights.h5` file written by `model.save_weights`.
    """

    def __init__(self, filepath):
        super().__init__()
        self.filepath = filepath

    def on_train_begin(self, logs=None):
        build_optimizer(self.model)
        load_weights_keeping_learning_rate(self.model, self.filepath)


def load_weights_keeping_learning_rate(model, filepath):
    """`model.load_weights`, the optimizer's float learning rate kept.

    A checkpoint of a lower-rung trial holds that trial's coupled learning
    rate among its optimizer's variables; the trial that continues it keeps
    the rate it has (its own coupled one, or the compiled one before
    coupling), so that the coupling applies once.

    Example:

    ```python
    load_weights_keeping_learning_rate(model, "trial_01/checkpoint.weights.h5")
    ```

    Args:
        model: A built, compiled `keras.Model`.
        filepath: A `.weights.h5` file written by `model.save_weights`.
    """
    optimizer = getattr(model, "optimizer", None)
    learning_rate = None
    if optimizer is not None:
        learning_rate = coupling.learning_rate_object(optimizer)
    kept = None
    if isinstance(learning_rate, keras.Variable):
        kept = keras.ops.convert_to_numpy(learning_rate)
    model.load_weights(filepath)
    if kept is not None:
        learning_rate.assign(kept)


def defer(callback):
    """Wraps KerasTuner's `SaveBestEpoch`; returns other callbacks as they are.

    `SaveBestEpoch` is not exported by KerasTuner; it is recognised through
    `keras_batchtune.backend.keras_tuner_internals`.

    Args:
        callback: A Keras callback.

    Returns:
        A `DeferredBestEpochCheckpoint`, or `callback` itself.
    """
    if keras_tuner_internals.is_save_best_epoch(callback):
        return DeferredBestEpochCheckpoint(callback)
    return callback


def _couple_loaded_optimizer(optimizer, trial, warmup_epochs):
    """Shapes a loaded trial's optimizer: its LR, weight decay and steps."""
    name = trial_fit.EFFECTIVE_LEARNING_RATE
    if optimizer is None or not trial.metrics.exists(name):
        return
    if trial.metrics.exists(trial_fit.EFFECTIVE_WEIGHT_DECAY):
        coupling.set_weight_decay(
            optimizer,
            trial.metrics.get_last_value(trial_fit.EFFECTIVE_WEIGHT_DECAY),
        )
    effective = trial.metrics.get_last_value(name)
    steps = 1
    if trial.metrics.exists(trial_fit.ACCUMULATION_STEPS):
        steps = int(trial.metrics.get_last_value(trial_fit.ACCUMULATION_STEPS))
    if steps > 1:
        coupling.inner_optimizer(optimizer).gradient_accumulation_steps = steps
    base = coupling.get_base_learning_rate(optimizer)
    coupling.set_learning_rate_multiplier(
        optimizer,
        base,
        effective / coupling.initial_value(base),
        steps_per_update=steps,
        as_schedule=bool(warmup_epochs),
    )


def build_as_in_trial(tuner, model, trial_id):
    """Builds an unbuilt model from the build config a trial saved.

    KerasTuner saves a trial's build config after its fit; a model that
    `build` leaves unbuilt (subclassed, no `Input`) needs it before weights
    can be loaded. A built model, or a trial without the file, is left as
    it is.

    Example:

    ```python
    build_as_in_trial(tuner, model, "03")
    ```

    Args:
        tuner: A `keras_tuner.Tuner`.
        model: A `keras.Model`.
        trial_id: The id of the trial whose checkpoint will be loaded.
    """
    path = keras_tuner_internals.build_config_path(tuner, trial_id)
    if not model.built and os.path.exists(path):
        model.build_from_config(project_files.read_json(path))


def load_best_epoch(tuner, trial, warmup_epochs=0):
    """Builds a trial's model and loads its best epoch, optimizer included.

    As KerasTuner's `Tuner.load_model`, the model is built from the trial's
    hyperparameters (from its saved build config if `build` leaves it
    unbuilt) and given its checkpoint. Before loading, its optimizer is
    shaped as it was during the trial and built, so that its saved state
    (slots such as momentum, the step count) is loaded instead of skipped
    with a warning, on every backend: the learning rate is the trial's
    effective one, a `ScaledLearningRate` schedule where the trial had one
    (warmup, or a schedule compiled in), and with `accumulation_steps > 1`
    the optimizer accumulates gradients as the trial did.

    Example:

    ```python
    model = load_best_epoch(tuner, tuner.oracle.get_best_trials()[0])
    ```

    Args:
        tuner: A `keras_tuner.Tuner` whose trials record
            `effective_learning_rate` (a `BatchTuner`).
        trial: A finished `Trial` of it.
        warmup_epochs: The tuner's `warmup_epochs` (with warmup, the trial's
            optimizer held a schedule).

    Returns:
        The `keras.Model`; continuing `fit` trains at the trial's effective
        learning rate.
    """
    model = keras_tuner_internals.try_build(tuner, trial.hyperparameters)
    build_as_in_trial(tuner, model, trial.trial_id)
    with keras_tuner.engine.tuner.maybe_distribute(tuner.distribution_strategy):
        _couple_loaded_optimizer(model.optimizer, trial, warmup_epochs)
        build_optimizer(model)
        model.load_weights(
            keras_tuner_internals.checkpoint_path(tuner, trial.trial_id)
        )
    return model
