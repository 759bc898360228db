"""`BatchBayesianOptimization`: Bayesian optimization over the batch size.

A drop-in replacement for `keras_tuner.BayesianOptimization`: its oracle is
KerasTuner's Gaussian-process oracle with `BatchSizeOracleMixin` (the
out-of-memory ceiling, informative failures, tolerance ranking), and the
tuner is `BatchTuner`'s (the searched batch size, the coupled learning rate,
warmup, accumulation, records, TensorBoard sessions, the report).
"""

import keras_tuner
import numpy as np
from keras_tuner.engine import hyperparameters as hp_module

from keras_batchtune import batch_oracle
from keras_batchtune import space
from keras_batchtune import tuner as tuner_module

_BISECTION_STEPS = 50


class BatchBayesianOptimizationOracle(
    batch_oracle.BatchSizeOracleMixin,
    keras_tuner.oracles.BayesianOptimizationOracle,
):
    """Bayesian optimization that never proposes a batch that did not fit.

    Behaves as `keras_tuner.oracles.BayesianOptimizationOracle`, with what
    `keras_batchtune.batch_oracle.BatchSizeOracleMixin` adds. Once a batch size
    has run out of memory (the ceiling), the first, random points redraw a
    batch at or above it among those below, and the Gaussian process's
    acquisition (upper confidence bound) is maximised only over the batch
    sizes below it: the `batch_size` side of its search box, in KerasTuner's
    `[0, 1]` encoding, ends where the encoded value reaches the ceiling. The
    trials that ran out of memory end FAILED and are left out of the
    Gaussian process's data, as KerasTuner leaves out every failed trial.

    Example:

    ```python
    oracle = BatchBayesianOptimizationOracle(
        objective="val_loss", max_trials=10, tolerance=0.01)
    ```

    Args:
        *args: The arguments of
            `keras_tuner.oracles.BayesianOptimizationOracle`.
        **kwargs: Its arguments, and `accumulate`, `tolerance` and
            `worker_timeout` (see `BatchSizeOracleMixin`).
    """

    def _get_hp_bounds(self):
        # Overrides KerasTuner's (`keras_tuner_internals`).
        bounds = np.asarray(super()._get_hp_bounds(), dtype=float)
        allowed = self._batch_sizes_below_ceiling()
        if not allowed:
            return bounds
        nonfixed = [
            hp
            for hp in self.hyperparameters.space
            if not isinstance(hp, hp_module.Fixed)
        ]
        for index, hp in enumerate(nonfixed):
            if hp.name == space.BATCH_SIZE:
                bounds[index, 1] = _highest_probability_below(
                    hp, max(allowed), self.batch_size_ceiling
                )
        return bounds


def _highest_probability_below(hp, largest_allowed, ceiling):
    """The largest encoding in `[0, 1]` that still decodes below `ceiling`.

    Bisects between the encoding of `largest_allowed` and 1 (KerasTuner's
    encodings grow with the value for `Int`, `Float` and sorted `Choice`s;
    any other proposal at or above the ceiling is still lowered by the
    mixin).
    """
    low = float(hp.value_to_prob(largest_allowed))
    if hp.prob_to_value(low) >= ceiling:
        return low
    high = 1.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if hp.prob_to_value(middle) < ceiling:
            low = middle
        else:
            high = middle
    return low


class BatchBayesianOptimization(
    tuner_module.BatchTuner, keras_tuner.BayesianOptimization
):
    """Bayesian optimization that makes batch size a searched hyperparameter.

    A drop-in replacement for `keras_tuner.BayesianOptimization`: same
    arguments, methods, directory layout, resume and distributed search.
    The batch size is searched as with `keras_batchtune.BatchTuner`
    (`hp.Int("batch_size", min_batch_size, max_batch_size, step=2,
    sampling="log")` unless the hypermodel registers its own), so the
    Gaussian process models the objective over it too, and each trial
    trains at the compiled learning rate scaled to its batch (`lr_scaling`,
    `warmup_epochs`). Everything else `BatchTuner` does holds: records,
    out-of-memory and divergence handling (no batch at or above a batch
    that ran out of memory is proposed: see
    `BatchBayesianOptimizationOracle`), `accumulate`, `probe_memory`,
    `dynamic`, `per_replica`, `distribution`, `tolerance`, TensorBoard
    HParams sessions, `results_summary()` and the report.

    `batch_size` is one more dimension of the space, so without
    `num_initial_points` the Gaussian process starts after
    `3 * dimensions` random trials, three more than KerasTuner's for the
    same hypermodel.

    Example:

    ```python
    tuner = keras_batchtune.BatchBayesianOptimization(
        build_model, objective="val_accuracy", max_trials=12,
        min_batch_size=16, max_batch_size=512, lr_scaling="linear")
    tuner.search(x, y, epochs=5, validation_data=(x_val, y_val))
    ```

    Args:
        hypermodel: A `keras_tuner.HyperModel`, or a function `hp -> model`.
        objective: As for `keras_tuner.BayesianOptimization`.
        max_trials: Integer, the most trials to run. Defaults to 10.
        num_initial_points: Optional number of random trials before the
            Gaussian process proposes; defaults to 3 times the number of
            hyperparameters (`batch_size` included).
        alpha: Float, the noise added to the kernel's diagonal. Defaults to
            1e-4.
        beta: Float, exploration against exploitation. Defaults to 2.6.
        seed: Optional integer, the random seed.
        hyperparameters: Optional `HyperParameters` registered in advance.
        tune_new_entries: As for `keras_tuner.BayesianOptimization`; when
            False, the tuner's own `batch_size` entry is not added either.
        allow_new_entries: Likewise.
        max_retries_per_trial: As for `keras_tuner.BayesianOptimization`.
        max_consecutive_failed_trials: As for
            `keras_tuner.BayesianOptimization`; out-of-memory and diverged
            trials do not count.
        **kwargs: The keyword arguments of `keras_batchtune.BatchTuner`
            (`min_batch_size`, `max_batch_size`, `base_batch_size`,
            `lr_scaling`, `warmup_epochs`, `accumulate`, `probe_memory`,
            `dynamic`, `per_replica`, `tolerance`, `worker_timeout`,
            `distribution`, ...) except `lr_band` and `successive_halving`,
            and those of `keras_tuner.Tuner` (`directory`, `project_name`,
            `overwrite`, `executions_per_trial`, `distribution_strategy`,
            ...).

    Raises:
        ValueError: as `BatchTuner`, and for an `lr_band` other than None or
            `"off"` (the Gaussian process chooses the learning rate) or a
            `successive_halving` other than None.
    """

    def __init__(
        self,
        hypermodel=None,
        objective=None,
        max_trials=10,
        num_initial_points=None,
        alpha=1e-4,
        beta=2.6,
        seed=None,
        hyperparameters=None,
        tune_new_entries=True,
        allow_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
        **kwargs,
    ):
        refuse_random_search_arguments(kwargs, "BatchBayesianOptimization")
        self._bayesian_arguments = {
            "num_initial_points": num_initial_points,
            "alpha": alpha,
            "beta": beta,
        }
        super().__init__(
            hypermodel=hypermodel,
            objective=objective,
            max_trials=max_trials,
            seed=seed,
            hyperparameters=hyperparameters,
            tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
            **kwargs,
        )

    def _make_oracle(
        self, lr_band, lr_hyperparameter, successive_halving, **kwargs
    ):
        return BatchBayesianOptimizationOracle(
            **kwargs, **self._bayesian_arguments
        )


def refuse_random_search_arguments(kwargs, name):
    """Refuses the `BatchTuner` arguments that only random search takes.

    `lr_band` samples the learning rate of random trials and
    `successive_halving` gives random trials budgets; the Bayesian and
    Hyperband oracles decide both themselves.

    Args:
        kwargs: The keyword arguments given to the tuner.
        name: The tuner's class name, for the message.

    Raises:
        ValueError: for an `lr_band` other than None or `"off"`, or a
            `successive_halving` other than None.
    """
    lr_band = kwargs.get("lr_band")
    if lr_band not in (None, "off"):
        raise ValueError(
            f"{name} takes no `lr_band` (got {lr_band!r}): its oracle "
            "chooses the learning rate itself. Use `keras_batchtune."
            "BatchTuner` for a learning-rate band."
        )
    if kwargs.get("successive_halving") is not None:
        raise ValueError(
            f"{name} takes no `successive_halving` (got "
            f"{kwargs['successive_halving']!r}): that is random search's "
            "(`keras_batchtune.BatchTuner`); `keras_batchtune.BatchHyperband`"
            " is KerasTuner's Hyperband."
        )
