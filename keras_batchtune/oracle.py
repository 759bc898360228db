"""`BatchSearchOracle`: random search over batch sizes, `BatchTuner`'s oracle.

Random search with `keras_batchtune.batch_oracle.BatchSizeOracleMixin` (the
out-of-memory ceiling, informative failures, tolerance ranking, whole
project files, worker leases), plus the learning-rate band and successive
halving. The mixin's names are re-exported here, where the rest of the
package has always found them.
"""

import math
import random

import keras_tuner
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from keras_batchtune import band as band_module
from keras_batchtune import halving
from keras_batchtune import space
from keras_batchtune.backend import keras_tuner_internals
from keras_batchtune.batch_oracle import DIVERGED_AT_EPOCH  # noqa: F401
from keras_batchtune.batch_oracle import DYNAMIC_BATCH_SIZE  # noqa: F401
from keras_batchtune.batch_oracle import EPOCHS  # noqa: F401
from keras_batchtune.batch_oracle import EXPLORE_FRACTION  # noqa: F401
from keras_batchtune.batch_oracle import FIT_SECONDS  # noqa: F401
from keras_batchtune.batch_oracle import INITIAL_EPOCH  # noqa: F401
from keras_batchtune.batch_oracle import LEARNING_RATE_NAMES  # noqa: F401
from keras_batchtune.batch_oracle import OUT_OF_MEMORY_AT_BATCH_SIZE  # noqa: F401
from keras_batchtune.batch_oracle import OUT_OF_MEMORY_AT_MICRO_BATCH_SIZE  # noqa: F401
from keras_batchtune.batch_oracle import REASON_MESSAGES  # noqa: F401
from keras_batchtune.batch_oracle import RUNG  # noqa: F401
from keras_batchtune.batch_oracle import TRIAL_ID  # noqa: F401
from keras_batchtune.batch_oracle import BatchSizeOracleMixin  # noqa: F401
from keras_batchtune.batch_oracle import failure_reason  # noqa: F401
from keras_batchtune.batch_oracle import fit_seconds  # noqa: F401


class BatchSearchOracle(
    BatchSizeOracleMixin, keras_tuner.oracles.RandomSearchOracle
):
    """Random search that learns which batch sizes run out of memory.

    Behaves as `keras_tuner.oracles.RandomSearchOracle`, with what
    `BatchSizeOracleMixin` adds (the out-of-memory ceiling, informative
    failures, tolerance ranking, whole project files, worker leases). In a
    distributed search (`KERASTUNER_ORACLE_IP`, ...) this oracle runs on the
    chief; workers report an out-of-memory trial through `update_trial`, so
    a ceiling learnt by one worker holds for every trial the chief creates
    afterwards, whichever worker runs it.

    With `lr_band`, 3 new trials in 4 sample the learning rate in a band
    (see `learning_rate_interval`).

    With `successive_halving`, trials have budgets (asynchronous successive
    halving, `keras_batchtune.halving`): a new configuration trains for the
    smallest number of epochs (the value `tuner/epochs`, rung `tuner/rung`),
    and whenever one of the best `1 / factor` of a rung's finished trials has
    not been promoted yet, the next trial trains it for the next rung's
    epochs; the largest budget is `max_epochs` (the tuner sets it from the
    search's `epochs`). With `warm_start` (the default), the promoted trial
    carries, as KerasTuner's Hyperband trials do, `tuner/trial_id` (the lower
    rung's trial, whose checkpoint it starts from) and `tuner/initial_epoch`
    (that rung's epochs); otherwise it trains from scratch.

    Example:

    ```python
    oracle = BatchSearchOracle(objective="val_loss", max_trials=10)
    ```

    Args:
        *args: The arguments of `keras_tuner.oracles.RandomSearchOracle`.
        accumulate: Boolean, whether the tuner accumulates gradients above the
            ceiling rather than avoiding it. Defaults to False.
        tolerance: None (default: trials ranked by score, as KerasTuner
            does), or a number >= 0 in the objective's units.
        lr_band: None or `"off"` (default), `"trials"`, `"range_test"` or
            `"both"`: where the learning rate is sampled (see
            `learning_rate_interval`).
        lr_hyperparameter: Optional name of the hyperparameter that is the
            base learning rate; by default the `Float` named
            `"learning_rate"` or `"lr"`.
        successive_halving: None (default: every trial trains for the full
            epochs), True, or a dict with `factor` (default 3), `min_epochs`
            (default 1) and `warm_start` (default True).
        **kwargs: The arguments of `keras_tuner.oracles.RandomSearchOracle`.
    """

    def __init__(
        self,
        *args,
        accumulate=False,
        tolerance=None,
        lr_band=None,
        lr_hyperparameter=None,
        successive_halving=None,
        **kwargs,
    ):
        super().__init__(
            *args, accumulate=accumulate, tolerance=tolerance, **kwargs
        )
        self.successive_halving = halving.check_successive_halving(
            successive_halving
        )
        # The full budget, in epochs: set by the tuner from `search(epochs=)`.
        self.max_epochs = None
        self.lr_band = band_module.check_lr_band(lr_band)
        self.lr_hyperparameter = lr_hyperparameter
        # Set by the tuner: batch size -> LR multiplier of the coupling.
        self.learning_rate_multiplier = None
        # The base LR a range test suggested (saved in the oracle state).
        self.range_test_learning_rate = None

    def populate_space(self, trial_id):
        budgets = self._rung_epochs()
        if budgets:
            promoted = self._promotion(budgets)
            if promoted is not None:
                return {
                    "status": trial_module.TrialStatus.RUNNING,
                    "values": promoted,
                }
        response = super().populate_space(trial_id)
        values = response.get("values")
        if values is not None and self.lr_band != "off":
            self._sample_learning_rate_in_band(values)
        if values is not None and budgets:
            values[RUNG] = 0
            values[EPOCHS] = budgets[0]
        return response

    # Successive halving (`successive_halving=`): rungs derived from the
    # trials, so a resumed or distributed search keeps them.

    def _rung_epochs(self):
        if not self.successive_halving or not self.max_epochs:
            return None
        return halving.rung_epochs(
            self.max_epochs,
            min_epochs=self.successive_halving["min_epochs"],
            factor=self.successive_halving["factor"],
        )

    def _promotion(self, budgets):
        """The values of the next promoted trial, or None."""
        rungs = [{} for _ in budgets]
        configurations = {}
        completed_trial_ids = {}  # (rung, key) -> trial id
        for trial in self.trials.values():
            values = trial.hyperparameters.values
            rung = values.get(RUNG)
            if rung is None or not 0 <= rung < len(budgets):
                continue
            configuration = {
                name: value
                for name, value in values.items()
                if not name.startswith("tuner/")
            }
            key = keras_tuner_internals.values_hash(self, configuration)
            configurations[key] = configuration
            score = None
            if trial.status == trial_module.TrialStatus.COMPLETED:
                score = trial.score
                completed_trial_ids[rung, key] = trial.trial_id
            batch_size = configuration.get(space.BATCH_SIZE)
            if (
                not self.accumulate
                and self.batch_size_ceiling is not None
                and batch_size is not None
                and batch_size >= self.batch_size_ceiling
            ):
                score = None  # it would run out of memory again
            if rungs[rung].get(key) is None:
                rungs[rung][key] = score
        found = halving.promotion(
            rungs,
            self.successive_halving["factor"],
            self.objective.direction,
        )
        if found is None:
            return None
        key, rung = found
        values = {**configurations[key], RUNG: rung, EPOCHS: budgets[rung]}
        if self.successive_halving["warm_start"]:
            values[TRIAL_ID] = completed_trial_ids[rung - 1, key]
            values[INITIAL_EPOCH] = budgets[rung - 1]
        return values

    # Learning the LR band (`lr_band=`): derived from the finished trials
    # and the saved range-test result, so resume and distributed search see
    # the same band.

    def learning_rate_hyperparameter(self):
        """The hyperparameter taken as the base learning rate, or None.

        `lr_hyperparameter` if given, else the first `Float` named
        `"learning_rate"` or `"lr"`; its range must be positive.

        Returns:
            A `keras_tuner` hyperparameter, or None.
        """
        names = (self.lr_hyperparameter,) if self.lr_hyperparameter else ()
        for hp in self.hyperparameters.space:
            named = hp.name in (names or LEARNING_RATE_NAMES)
            if named and isinstance(hp, hp_module.Float) and hp.min_value > 0:
                return hp
        return None

    def _multiplier(self, batch_size):
        if batch_size is None or self.learning_rate_multiplier is None:
            return 1.0
        return float(self.learning_rate_multiplier(batch_size))

    def fitted_band(self):
        """The band fitted on the finished trials, in effective LRs.

        Returns:
            A `band.LearningRateBand` (`log10` of the effective learning rate
            against `log10` of the batch size), or None before enough trials
            have finished.
        """
        lr_hp = self.learning_rate_hyperparameter()
        if lr_hp is None:
            return None
        rows = []
        for trial in self.trials.values():
            values = trial.hyperparameters.values
            if (
                trial.status != trial_module.TrialStatus.COMPLETED
                or trial.score is None
                or values.get(lr_hp.name) is None
            ):
                continue
            batch_size = values.get(space.BATCH_SIZE)
            effective = values[lr_hp.name] * self._multiplier(batch_size)
            rows.append((batch_size or 1, effective, trial.score))
        if not rows:
            return None
        batch_hp = self._batch_size_hyperparameter()
        default_slope = 0.0
        if batch_hp is not None and self.learning_rate_multiplier is not None:
            default_slope = band_module.power_law_slope(
                self._multiplier, batch_hp.min_value, batch_hp.max_value
            )
        batch_sizes, rates, scores = zip(*rows)
        return band_module.fit_band(
            batch_sizes,
            rates,
            scores,
            self.objective.direction,
            default_slope=default_slope,
        )

    def learning_rate_interval(self, batch_size=None):
        """The base-LR interval sampled at `batch_size`, or None.

        With `lr_band="trials"`, the line fitted on the best finished trials
        (`fitted_band`) at `batch_size`, divided by the coupling's multiplier;
        with `"range_test"`, half a decade around the range test's
        suggestion (coupling carries it to every batch); with `"both"`, the
        fitted band once there is one, else the range test's. Always inside
        the hyperparameter's range.

        Args:
            batch_size: The trial's batch size, or None.

        Returns:
            A tuple `(low, high)` of base learning rates, or None.
        """
        lr_hp = self.learning_rate_hyperparameter()
        if lr_hp is None or self.lr_band == "off":
            return None
        limits = (lr_hp.min_value, lr_hp.max_value)
        if self.lr_band in ("trials", "both"):
            fitted = self.fitted_band()
            if fitted is not None:
                centre = fitted.centre(batch_size or 1)
                return band_module.interval_around(
                    centre / self._multiplier(batch_size),
                    fitted.half_width,
                    *limits,
                )
        if self.lr_band in ("range_test", "both"):
            if self.range_test_learning_rate is not None:
                return band_module.interval_around(
                    self.range_test_learning_rate,
                    band_module.HALF_WIDTH_DECADES,
                    *limits,
                )
        return None

    def _sample_learning_rate_in_band(self, values):
        lr_hp = self.learning_rate_hyperparameter()
        if lr_hp is None or lr_hp.name not in values:
            return
        interval = self.learning_rate_interval(values.get(space.BATCH_SIZE))
        if interval is None:
            return
        rng = random.Random(keras_tuner_internals.take_seed(self))
        if rng.random() < EXPLORE_FRACTION:
            return
        low, high = (math.log10(bound) for bound in interval)
        values[lr_hp.name] = 10.0 ** rng.uniform(low, high)

    def get_state(self):
        state = super().get_state()
        state["range_test_learning_rate"] = self.range_test_learning_rate
        state["max_epochs"] = self.max_epochs
        return state

    def set_state(self, state):
        super().set_state(state)
        self.range_test_learning_rate = state.get("range_test_learning_rate")
        self.max_epochs = state.get("max_epochs")
