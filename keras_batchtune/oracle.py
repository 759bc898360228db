"""The random-search oracle of `BatchTuner`: an out-of-memory batch ceiling."""

import math
import os
import random

import keras_tuner
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from keras_batchtune import band as band_module
from keras_batchtune import cluster
from keras_batchtune import halving
from keras_batchtune import project_files
from keras_batchtune import ranking
from keras_batchtune import space

OUT_OF_MEMORY_AT_BATCH_SIZE = "out_of_memory_at_batch_size"
DIVERGED_AT_EPOCH = "diverged_at_epoch"
# Reported when a micro-batch ran out of memory and the trial was retried
# with more accumulation steps: it lowers the ceiling, the trial goes on.
OUT_OF_MEMORY_AT_MICRO_BATCH_SIZE = "out_of_memory_at_micro_batch_size"
DYNAMIC_BATCH_SIZE = "dynamic_batch_size"
"""Trial metric: the batch size of each epoch (step) with `dynamic=`."""
FIT_SECONDS = "fit_seconds"
"""Trial metric: the wall time of `model.fit` (`trial_fit.FIT_SECONDS`; the
oracle does not import TensorFlow)."""
LEARNING_RATE_NAMES = ("learning_rate", "lr")
"""Names of a `Float` hyperparameter taken as the base learning rate."""
EXPLORE_FRACTION = 0.25
"""Share of the trials whose learning rate ignores a learnt band."""
REASON_MESSAGES = {
    OUT_OF_MEMORY_AT_BATCH_SIZE: "out of memory at batch {}",
    DIVERGED_AT_EPOCH: "diverged at epoch {}",
}


RUNG = "tuner/rung"
"""The hyperparameter value holding a trial's successive-halving rung."""
EPOCHS = "tuner/epochs"
"""The hyperparameter value holding a trial's epochs (as Hyperband's)."""
INITIAL_EPOCH = "tuner/initial_epoch"
"""The epoch a warm-started trial starts from (as Hyperband's)."""
TRIAL_ID = "tuner/trial_id"
"""The trial whose checkpoint a warm-started trial starts from."""


def failure_reason(trial):
    """Returns the informative reason a trial ended without a score, or None.

    Example:

    ```python
    failure_reason(trial)  # "out of memory at batch 512"
    ```

    Args:
        trial: A `keras_tuner.engine.trial.Trial`.

    Returns:
        `"out of memory at batch B"`, `"diverged at epoch K"`, or None.
    """
    for name, template in REASON_MESSAGES.items():
        if trial.metrics.exists(name):
            return template.format(int(trial.metrics.get_last_value(name)))
    return None


def fit_seconds(trial):
    """Returns a trial's recorded `fit_seconds`, or None if it has none.

    Args:
        trial: A `keras_tuner.engine.trial.Trial`.

    Returns:
        The wall time of its `model.fit` in seconds (averaged over its
        executions), or None.
    """
    if not trial.metrics.exists(FIT_SECONDS):
        return None
    return trial.metrics.get_last_value(FIT_SECONDS)


class _ScoreOrder:
    """An oracle seen with KerasTuner's ranking: by score alone."""

    def __init__(self, oracle):
        self._oracle = oracle

    def __getattr__(self, name):
        if name == "_oracle":  # not set yet, e.g. while unpickling
            raise AttributeError(name)
        return getattr(self._oracle, name)

    def get_best_trials(self, num_trials=1):
        return keras_tuner.Oracle.get_best_trials(self._oracle, num_trials)


class BatchSearchOracle(
    cluster.WorkerLeases, keras_tuner.oracles.RandomSearchOracle
):
    """Random search that learns which batch sizes run out of memory.

    Behaves as `keras_tuner.oracles.RandomSearchOracle`, and:

    - a trial reported with the metric `out_of_memory_at_batch_size` = B sets
      the ceiling: no batch size >= B is proposed again; the ceiling is part of
      the saved oracle state, so it survives a resumed search and is shared by
      every worker of a distributed search;
    - trials that ran out of memory or diverged (metric `diverged_at_epoch`)
      end FAILED with that reason as their message, and do not count toward
      `max_consecutive_failed_trials`;
    - a trial waiting for a retry whose batch size is at or above the ceiling
      is not run again: it ends FAILED.

    In a distributed search (`KERASTUNER_ORACLE_IP`, ...) this oracle runs on
    the chief; workers report an out-of-memory trial through
    `update_trial`, so a ceiling learnt by one worker holds for every trial
    the chief creates afterwards, whichever worker runs it. A trial whose
    worker falls silent for `worker_timeout` seconds (an argument, through
    `**kwargs`) is taken back and run again by another worker (see
    `keras_batchtune.cluster`).

    With `accumulate=True` the ceiling caps the physical (micro-)batch
    instead: every batch size stays proposable, and batches at or above the
    ceiling run with gradient accumulation.

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

    With a `tolerance`, `get_best_trials` puts first the fastest trial
    (lowest `fit_seconds`) among those whose score is within `tolerance` of
    the best (see `keras_batchtune.ranking.preferred_order`).

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
        super().__init__(*args, **kwargs)
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
        self.accumulate = accumulate
        self.tolerance = ranking.check_tolerance(tolerance)
        # KerasTuner's progress lines ("Best val_loss So Far") stay the best
        # score; the tolerance only reorders what the tuner returns.
        self._display.oracle = _ScoreOrder(self)
        self.batch_size_ceiling = None

    def lower_ceiling(self, batch_size):
        """Records that `batch_size` (a physical batch) ran out of memory.

        Args:
            batch_size: The batch size that did not fit.
        """
        self.batch_size_ceiling = space.lowered_ceiling(
            self.batch_size_ceiling, batch_size
        )

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        # A trial queued for a retry (`max_retries_per_trial`) keeps its
        # values: one at or above a ceiling learnt since is not run again.
        self._drop_retries_at_or_above_ceiling()
        return super().create_trial(tuner_id)

    def _drop_retries_at_or_above_ceiling(self):
        if self.batch_size_ceiling is None or self.accumulate:
            return
        for trial_id in list(self._retry_queue):
            trial = self.trials[trial_id]
            batch_size = trial.hyperparameters.values.get(space.BATCH_SIZE)
            if batch_size is None or batch_size < self.batch_size_ceiling:
                continue
            self._retry_queue.remove(trial_id)
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = (
                f"not retried: batch {batch_size} is at or above the "
                f"out-of-memory ceiling {self.batch_size_ceiling}\n"
                + (trial.message or "")
            )
            self.end_order.append(trial_id)
            self._save_trial(trial)
            self.save()

    def populate_space(self, trial_id):
        budgets = self._rung_epochs()
        if budgets:
            promoted = self._promotion(budgets)
            if promoted is not None:
                return {
                    "status": trial_module.TrialStatus.RUNNING,
                    "values": promoted,
                }
        response = self._populate_below_ceiling(trial_id)
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
            key = self._compute_values_hash(configuration)
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

    def _populate_below_ceiling(self, trial_id):
        batch_hp = self._batch_size_hyperparameter()
        if (
            batch_hp is None
            or self.batch_size_ceiling is None
            or self.accumulate
        ):
            return super().populate_space(trial_id)
        allowed = space.below_ceiling(
            space.hyperparameter_values(batch_hp.get_config()) or [],
            self.batch_size_ceiling,
        )
        if not allowed:
            print(
                "BatchTuner: stopping the search, every batch size in the "
                "search space ran out of memory (the smallest failing one "
                f"was {self.batch_size_ceiling})."
            )
            return {"status": trial_module.TrialStatus.STOPPED, "values": None}
        for _ in range(self._max_collisions):
            response = super().populate_space(trial_id)
            values = response["values"]
            if values is None or values.get(space.BATCH_SIZE) is None:
                return response
            if values[space.BATCH_SIZE] >= self.batch_size_ceiling:
                values[space.BATCH_SIZE] = random.Random(
                    self._seed_state
                ).choice(allowed)
                self._seed_state += 1
            if not self._duplicate(values):
                return response
        return {"status": trial_module.TrialStatus.STOPPED, "values": None}

    def _batch_size_hyperparameter(self):
        for hp in self.hyperparameters.space:
            if hp.name == space.BATCH_SIZE:
                return hp
        return None

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
        rng = random.Random(self._seed_state)
        self._seed_state += 1
        if rng.random() < EXPLORE_FRACTION:
            return
        low, high = (math.log10(bound) for bound in interval)
        values[lr_hp.name] = 10.0 ** rng.uniform(low, high)

    @keras_tuner.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        # Reported apart from the objective, during or after a trial.
        memory_names = set(REASON_MESSAGES) | {
            OUT_OF_MEMORY_AT_MICRO_BATCH_SIZE,
            DYNAMIC_BATCH_SIZE,
        }
        reasons = {k: v for k, v in metrics.items() if k in memory_names}
        if not reasons:
            return super().update_trial(trial_id, metrics, step=step)
        trial = self.trials[trial_id]
        for name, value in reasons.items():
            trial.metrics.update(name, value, step=step)
        for name in (
            OUT_OF_MEMORY_AT_BATCH_SIZE,
            OUT_OF_MEMORY_AT_MICRO_BATCH_SIZE,
        ):
            if name in reasons:
                self.lower_ceiling(reasons[name])
        self._save_trial(trial)
        self.save()
        return trial

    @keras_tuner.synchronized
    def end_trial(self, trial):
        reason = failure_reason(self.trials[trial.trial_id])
        if reason is not None:
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = reason
        super().end_trial(trial)

    def _check_consecutive_failures(self):
        consecutive_failures = 0
        for trial_id in self.end_order:
            trial = self.trials[trial_id]
            if failure_reason(trial) is not None:
                continue
            if trial.status == trial_module.TrialStatus.FAILED:
                consecutive_failures += 1
            else:
                consecutive_failures = 0
            if consecutive_failures == self.max_consecutive_failed_trials:
                raise RuntimeError(
                    "Number of consecutive failures exceeded the limit "
                    f"of {self.max_consecutive_failed_trials}.\n"
                    + (trial.message or "")
                )

    def get_best_trials(self, num_trials=1):
        """Returns the best trials; with a tolerance, the fastest first.

        Without `tolerance`, as `keras_tuner.Oracle.get_best_trials`. With
        it, the completed trials within `tolerance` of the best score come
        first, fastest `fit_seconds` first, then the other completed trials
        by score, then the trials that did not complete.

        Args:
            num_trials: Optional number of trials to return. Defaults to 1.

        Returns:
            A list of at most `num_trials` `Trial`s, the preferred first.
        """
        if self.tolerance is None:
            return super().get_best_trials(num_trials)
        ordered = super().get_best_trials(len(self.trials))
        completed = [
            trial
            for trial in ordered
            if trial.status == trial_module.TrialStatus.COMPLETED
        ]
        order = ranking.preferred_order(
            [
                (trial.score, self._full_budget_seconds(trial))
                for trial in completed
            ],
            self.tolerance,
            self.objective.direction,
        )
        ranked = [completed[index] for index in order]
        return (ranked + ordered[len(completed) :])[:num_trials]

    def _full_budget_seconds(self, trial):
        """A trial's `fit_seconds`, scaled to the full budget if halved.

        Under successive halving a trial of fewer epochs is not a cheaper
        configuration: its time is scaled by `max_epochs` over the epochs it
        trained (`tuner/epochs`, less `tuner/initial_epoch` if warm-started).
        """
        seconds = fit_seconds(trial)
        values = trial.hyperparameters.values
        epochs = values.get(EPOCHS)
        if seconds is None or not epochs or not self.max_epochs:
            return seconds
        trained_epochs = epochs - values.get(INITIAL_EPOCH, 0)
        return seconds * self.max_epochs / max(trained_epochs, 1)

    def get_state(self):
        state = super().get_state()
        state["batch_size_ceiling"] = self.batch_size_ceiling
        # Read by reports; a tuner's own `tolerance` argument wins on reload.
        state["tolerance"] = self.tolerance
        state["range_test_learning_rate"] = self.range_test_learning_rate
        state["max_epochs"] = self.max_epochs
        # Lets a report read the project without the tuner's arguments.
        state["objective"] = {
            "name": self.objective.name,
            "direction": self.objective.direction,
        }
        return state

    def set_state(self, state):
        super().set_state(state)
        self.batch_size_ceiling = state.get("batch_size_ceiling")
        self.range_test_learning_rate = state.get("range_test_learning_rate")
        self.max_epochs = state.get("max_epochs")

    # Project files: written whole (a kill mid-write leaves the previous
    # version), and a damaged or missing one is named on reload.

    def save(self):
        return project_files.write_json(
            self._get_oracle_fname(), self.get_state()
        )

    def _save_trial(self, trial):
        path = os.path.join(self._get_trial_dir(trial.trial_id), "trial.json")
        project_files.write_json(path, trial.get_state())

    def reload(self):
        """Reloads the trials and the oracle state of an existing project.

        As `keras_tuner.Oracle.reload` (the trials that were running are run
        again), but a damaged file stops the reload with an error naming it,
        and no trial is left out silently.

        Raises:
            keras_batchtune.ProjectFileError: naming the file, if a
                `trial_*/trial.json` or `oracle.json` cannot be read, is not
                valid JSON or not a trial record, or a trial listed in
                `oracle.json` has no `trial.json`.
            RuntimeError: as KerasTuner, naming `oracle.json`, if it holds
                the state of another kind of oracle.
        """
        for path in project_files.trial_files(self._project_dir):
            self._reload_trial(path)
        path = self._get_oracle_fname()
        state = project_files.read_json(path)
        for trial_id in state.get("start_order", []):
            if trial_id not in self.trials:
                raise project_files.ProjectFileError(
                    os.path.join(self._project_dir, f"trial_{trial_id}"),
                    f"should hold trial.json: oracle.json lists trial "
                    f"{trial_id!r}",
                )
        try:
            self.set_state(state)
        except KeyError as error:
            raise RuntimeError(
                "Error reloading `Oracle` from existing project: "
                f"{path} lacks {error} (is it the project of another kind "
                "of tuner?). If you did not mean to reload from an existing "
                "project, change the `project_name` or pass `overwrite=True` "
                "when creating the `Tuner`."
            ) from error
        # The trials that were running when the search stopped run again.
        for trial in self.ongoing_trials.values():
            self._retry_queue.append(trial.trial_id)
        self.ongoing_trials = {}

    def _reload_trial(self, path):
        state = project_files.read_json(path)
        try:
            trial = trial_module.Trial.from_state(state)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise project_files.ProjectFileError(
                path, f"is damaged: it is not a trial record ({error!r})"
            ) from error
        expected = f"trial_{trial.trial_id}"
        if os.path.basename(os.path.dirname(path)) != expected:
            raise project_files.ProjectFileError(
                path, f"is damaged: it holds trial {trial.trial_id!r}"
            )
        self.trials[trial.trial_id] = trial
