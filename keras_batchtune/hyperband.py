"""`BatchHyperband`: Hyperband over the batch size, budgets in examples.

A drop-in replacement for `keras_tuner.Hyperband`: its oracle is
KerasTuner's Hyperband oracle with `BatchSizeOracleMixin` (the out-of-memory
ceiling, informative failures, tolerance ranking), and the tuner is
`BatchTuner`'s (the searched batch size, the coupled learning rate, warmup,
accumulation, records, TensorBoard sessions, the report, and the warm start
of a continued trial with its optimizer state).
"""

import warnings

import keras_tuner

from keras_batchtune import batch_oracle
from keras_batchtune import bayesian
from keras_batchtune import checkpoint
from keras_batchtune import tuner as tuner_module
from keras_batchtune.backend import keras_tuner_internals


class BatchHyperbandOracle(
    batch_oracle.BatchSizeOracleMixin, keras_tuner.oracles.HyperbandOracle
):
    """Hyperband that never starts a configuration at a batch that did not fit.

    Behaves as `keras_tuner.oracles.HyperbandOracle`, with what
    `keras_batchtune.batch_oracle.BatchSizeOracleMixin` adds: a new
    configuration of a bracket never has a batch size at or above the
    out-of-memory ceiling (its random batch is redrawn below it); a trial
    that continues another (`tuner/trial_id`) keeps its batch. The budgets
    are Hyperband's epochs (`tuner/epochs`), so every trial of a round sees
    the same number of examples whatever its batch; a larger batch trains
    them in fewer steps. With a `tolerance`, a trial's `fit_seconds` is
    scaled to `max_epochs` before trials are compared (a round of fewer
    epochs is not a cheaper configuration); promotions within a bracket stay
    by score, as in KerasTuner.

    Example:

    ```python
    oracle = BatchHyperbandOracle(objective="val_loss", max_epochs=9)
    ```

    Args:
        *args: The arguments of `keras_tuner.oracles.HyperbandOracle`.
        **kwargs: Its arguments, and `accumulate`, `tolerance` and
            `worker_timeout` (see `BatchSizeOracleMixin`).
    """


class BatchHyperband(tuner_module.BatchTuner, keras_tuner.Hyperband):
    """Hyperband that makes batch size a searched hyperparameter.

    A drop-in replacement for `keras_tuner.Hyperband`: same arguments,
    methods, directory layout, resume and distributed search. The batch size
    is searched as with `keras_batchtune.BatchTuner` (`hp.Int("batch_size",
    min_batch_size, max_batch_size, step=2, sampling="log")` unless the
    hypermodel registers its own): each new configuration of a bracket draws
    one, and a configuration promoted to the next round keeps it. Each trial
    trains at the compiled learning rate scaled to its batch (`lr_scaling`,
    `warmup_epochs`).

    Budgets count examples: a trial trains for `tuner/epochs` epochs (as in
    KerasTuner, the `epochs` given to `search` are replaced by Hyperband's),
    that is `tuner/epochs` times the training set, at any batch size; a
    trial at a large batch takes fewer steps for the same examples, so it is
    a cheap trial, as in `BatchTuner`'s successive halving. `max_epochs` and
    `factor` keep their meaning and do not depend on the batch size.

    A promoted trial starts from the checkpoint of the trial it continues:
    KerasTuner's Hyperband loads its weights when the model is built, and
    the tuner loads them again with the optimizer state (momentum, step
    count, accumulators, the warmup's progress) when `fit` starts, where
    KerasTuner's keeps a fresh optimizer.

    Everything else `BatchTuner` does holds: records, out-of-memory and
    divergence handling (no new configuration at or above a batch that ran
    out of memory: see `BatchHyperbandOracle`), `accumulate`,
    `probe_memory`, `dynamic`, `per_replica`, `distribution`, `tolerance`,
    TensorBoard HParams sessions, `results_summary()` and the report.

    Example:

    ```python
    tuner = keras_batchtune.BatchHyperband(
        build_model, objective="val_accuracy", max_epochs=9, factor=3,
        min_batch_size=16, max_batch_size=512, lr_scaling="linear")
    tuner.search(x, y, validation_data=(x_val, y_val))
    ```

    Args:
        hypermodel: A `keras_tuner.HyperModel`, or a function `hp -> model`.
        objective: As for `keras_tuner.Hyperband`.
        max_epochs: Integer, the most epochs one model trains for. Defaults
            to 100.
        factor: Integer >= 2, the reduction factor of the epochs and of the
            number of models in each bracket. Defaults to 3.
        hyperband_iterations: Integer >= 1, how many times to run the full
            Hyperband algorithm. Defaults to 1.
        seed: Optional integer, the random seed.
        hyperparameters: Optional `HyperParameters` registered in advance.
        tune_new_entries: As for `keras_tuner.Hyperband`; when False, the
            tuner's own `batch_size` entry is not added either.
        allow_new_entries: Likewise.
        max_retries_per_trial: As for `keras_tuner.Hyperband`.
        max_consecutive_failed_trials: As for `keras_tuner.Hyperband`;
            out-of-memory and diverged trials do not count.
        **kwargs: The keyword arguments of `keras_batchtune.BatchTuner`
            (`min_batch_size`, `max_batch_size`, `base_batch_size`,
            `lr_scaling`, `warmup_epochs`, `accumulate`, `probe_memory`,
            `dynamic`, `per_replica`, `tolerance`, `worker_timeout`,
            `distribution`, ...) except `lr_band` and `successive_halving`,
            and those of `keras_tuner.Tuner` (`directory`, `project_name`,
            `overwrite`, `executions_per_trial`, `distribution_strategy`,
            ...).

    Raises:
        ValueError: as `BatchTuner`, for a `factor` below 2 (as KerasTuner),
            and for an `lr_band` other than None or `"off"` or a
            `successive_halving` other than None.
    """

    def __init__(
        self,
        hypermodel=None,
        objective=None,
        max_epochs=100,
        factor=3,
        hyperband_iterations=1,
        seed=None,
        hyperparameters=None,
        tune_new_entries=True,
        allow_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
        **kwargs,
    ):
        bayesian.refuse_random_search_arguments(kwargs, "BatchHyperband")
        self._hyperband_arguments = {
            "max_epochs": max_epochs,
            "factor": factor,
            "hyperband_iterations": hyperband_iterations,
        }
        super().__init__(
            hypermodel=hypermodel,
            objective=objective,
            seed=seed,
            hyperparameters=hyperparameters,
            tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
            **kwargs,
        )

    def _make_oracle(
        self,
        max_trials,
        lr_band,
        lr_hyperparameter,
        successive_halving,
        **kwargs,
    ):
        # Hyperband's budget decides the number of trials.
        return BatchHyperbandOracle(**kwargs, **self._hyperband_arguments)

    def _build_hypermodel(self, hp):
        # As KerasTuner's Hyperband (`keras_tuner_internals`): a continued
        # trial's model is built with the weights of the trial it continues.
        # Its optimizer is not built yet, so Keras skips the saved slots
        # (warning silenced: the tuner's warm start loads them when `fit`
        # starts), except for an optimizer without slots (plain SGD), whose
        # saved learning rate, the parent's coupled one, would be loaded and
        # then coupled a second time: the compiled one is kept instead.
        model = keras_tuner_internals.build_hypermodel(self, hp)
        trial_id = hp.values.get(batch_oracle.TRIAL_ID)
        if trial_id is None:
            return model
        checkpoint.build_as_in_trial(self, model, trial_id)
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message="Skipping variable loading for optimizer",
                category=UserWarning,
            )
            checkpoint.load_weights_keeping_learning_rate(
                model, keras_tuner_internals.checkpoint_path(self, trial_id)
            )
        return model
