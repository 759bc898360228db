"""The batch-size logic any KerasTuner oracle takes: `BatchSizeOracleMixin`.

It adds what batch-size search needs: the out-of-memory ceiling,
informative failures, tolerance ranking, whole project files and worker
leases. `keras_batchtune.oracle.BatchSearchOracle` is random search with it
(and the learning-rate band and successive halving);
`keras_batchtune.bayesian` and `keras_batchtune.hyperband` mix it into
KerasTuner's Bayesian optimization and Hyperband oracles.
"""

import os
import random

import keras_tuner
from keras_tuner.engine import trial as trial_module

from keras_batchtune import cluster
from keras_batchtune import project_files
from keras_batchtune import ranking
from keras_batchtune import space
from keras_batchtune.backend import keras_tuner_internals

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


class BatchSizeOracleMixin(cluster.WorkerLeases):
    """What a `keras_batchtune` oracle adds to any KerasTuner oracle.

    Mixed into a `keras_tuner.Oracle` subclass (before it:
    `class MyOracle(BatchSizeOracleMixin, keras_tuner.Oracle)`), it keeps the
    oracle's own way of proposing trials and adds the batch-size logic that
    `BatchSearchOracle` (random search), `BatchBayesianOptimizationOracle`
    and `BatchHyperbandOracle` share:

    - a trial reported with the metric `out_of_memory_at_batch_size` = B sets
      the ceiling: no batch size >= B is proposed again. New random values
      (KerasTuner's `_random_values`, which random search, the first points
      of Bayesian optimization and Hyperband's new configurations draw)
      redraw such a batch among those below the ceiling; any other proposal
      at or above it (a Gaussian process's, say) is lowered to the largest
      batch below it; a trial that continues another (`tuner/trial_id`)
      keeps its batch. The ceiling is part of the saved oracle state, so it
      survives a resumed search and is shared by every worker of a
      distributed search;
    - trials that ran out of memory or diverged (metric `diverged_at_epoch`)
      end FAILED with that reason as their message, and do not count toward
      `max_consecutive_failed_trials`;
    - a trial waiting for a retry whose batch size is at or above the ceiling
      is not run again: it ends FAILED;
    - with a `tolerance`, `get_best_trials` puts first the fastest trial
      (lowest `fit_seconds`, scaled to the full budget for a trial of fewer
      epochs) among those whose score is within `tolerance` of the best;
    - project files are written whole, and a damaged one is named on reload;
    - in a distributed search, a silent worker's trial is taken back
      (`worker_timeout`, see `keras_batchtune.cluster.WorkerLeases`).

    With `accumulate=True` the ceiling caps the physical (micro-)batch
    instead: every batch size stays proposable, and batches at or above the
    ceiling run with gradient accumulation.

    Example:

    ```python
    class MyOracle(BatchSizeOracleMixin, keras_tuner.oracles.GridSearchOracle):
        pass

    oracle = MyOracle(objective="val_loss", max_trials=10, tolerance=0.01)
    ```

    Args:
        *args: The arguments of the KerasTuner oracle it is mixed into.
        accumulate: Boolean, whether the tuner accumulates gradients above the
            ceiling rather than avoiding it. Defaults to False.
        tolerance: None (default: trials ranked by score, as KerasTuner
            does), or a number >= 0 in the objective's units.
        **kwargs: The arguments of that oracle (and `worker_timeout`).
    """

    def __init__(self, *args, accumulate=False, tolerance=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.accumulate = accumulate
        self.tolerance = ranking.check_tolerance(tolerance)
        # KerasTuner's progress lines ("Best val_loss So Far") stay the best
        # score; the tolerance only reorders what the tuner returns.
        keras_tuner_internals.set_progress_oracle(self, _ScoreOrder(self))
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
        queue = keras_tuner_internals.retry_queue(self)
        for trial_id in list(queue):
            trial = self.trials[trial_id]
            batch_size = trial.hyperparameters.values.get(space.BATCH_SIZE)
            if batch_size is None or batch_size < self.batch_size_ceiling:
                continue
            queue.remove(trial_id)
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = (
                f"not retried: batch {batch_size} is at or above the "
                f"out-of-memory ceiling {self.batch_size_ceiling}\n"
                + (trial.message or "")
            )
            self.end_order.append(trial_id)
            keras_tuner_internals.save_trial(self, trial)
            self.save()

    def populate_space(self, trial_id):
        if self._batch_sizes_below_ceiling() == []:
            print(
                "BatchTuner: stopping the search, every batch size in the "
                "search space ran out of memory (the smallest failing one "
                f"was {self.batch_size_ceiling})."
            )
            return {"status": trial_module.TrialStatus.STOPPED, "values": None}
        response = super().populate_space(trial_id)
        values = response.get("values")
        if values is not None and TRIAL_ID not in values:
            # A proposal other than random values' (a Gaussian process's):
            # lowered to the largest batch that fits.
            allowed = self._batch_sizes_below_ceiling()
            batch_size = values.get(space.BATCH_SIZE)
            if allowed and batch_size is not None:
                if batch_size >= self.batch_size_ceiling:
                    values[space.BATCH_SIZE] = max(allowed)
        return response

    def _batch_sizes_below_ceiling(self):
        """The searched batch sizes below the ceiling, or None if unlimited.

        Returns:
            None without a `batch_size` hyperparameter, without a ceiling or
            with `accumulate=True`; else the sorted list of its values below
            the ceiling (empty when none fits).
        """
        batch_hp = self._batch_size_hyperparameter()
        if (
            batch_hp is None
            or self.batch_size_ceiling is None
            or self.accumulate
        ):
            return None
        return space.below_ceiling(
            space.hyperparameter_values(batch_hp.get_config()) or [],
            self.batch_size_ceiling,
        )

    def _random_values(self):
        # Overrides KerasTuner's (`keras_tuner_internals`): random search,
        # the first points of Bayesian optimization and Hyperband's new
        # configurations all draw their values here.
        allowed = self._batch_sizes_below_ceiling()
        if not allowed:
            return super()._random_values()
        for _ in range(keras_tuner_internals.max_collisions(self)):
            values = super()._random_values()
            if values is None or values.get(space.BATCH_SIZE) is None:
                return values
            if values[space.BATCH_SIZE] >= self.batch_size_ceiling:
                seed = keras_tuner_internals.take_seed(self)
                values[space.BATCH_SIZE] = random.Random(seed).choice(allowed)
            if not keras_tuner_internals.is_duplicate(self, values):
                return values
        return None

    def _batch_size_hyperparameter(self):
        for hp in self.hyperparameters.space:
            if hp.name == space.BATCH_SIZE:
                return hp
        return None

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
        keras_tuner_internals.save_trial(self, trial)
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
        # Overrides KerasTuner's (`keras_tuner_internals`).
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

        Under successive halving (or Hyperband) a trial of fewer epochs is
        not a cheaper configuration: its time is scaled by the oracle's
        `max_epochs` over the epochs it trained (`tuner/epochs`, less
        `tuner/initial_epoch` if warm-started).
        """
        seconds = fit_seconds(trial)
        values = trial.hyperparameters.values
        epochs = values.get(EPOCHS)
        max_epochs = getattr(self, "max_epochs", None)
        if seconds is None or not epochs or not max_epochs:
            return seconds
        trained_epochs = epochs - values.get(INITIAL_EPOCH, 0)
        return seconds * max_epochs / max(trained_epochs, 1)

    def get_state(self):
        state = super().get_state()
        state["batch_size_ceiling"] = self.batch_size_ceiling
        # Read by reports; a tuner's own `tolerance` argument wins on reload.
        state["tolerance"] = self.tolerance
        # Lets a report read the project without the tuner's arguments.
        state["objective"] = {
            "name": self.objective.name,
            "direction": self.objective.direction,
        }
        return state

    def set_state(self, state):
        super().set_state(state)
        self.batch_size_ceiling = state.get("batch_size_ceiling")

    # Project files: written whole (a kill mid-write leaves the previous
    # version), and a damaged or missing one is named on reload.

    def save(self):
        return project_files.write_json(
            keras_tuner_internals.oracle_state_path(self), self.get_state()
        )

    def _save_trial(self, trial):
        # Overrides KerasTuner's (`keras_tuner_internals`): written whole.
        directory = keras_tuner_internals.trial_dir(self, trial.trial_id)
        path = os.path.join(directory, "trial.json")
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
        project_dir = keras_tuner_internals.project_dir(self)
        for path in project_files.trial_files(project_dir):
            self._reload_trial(path)
        path = keras_tuner_internals.oracle_state_path(self)
        state = project_files.read_json(path)
        for trial_id in state.get("start_order", []):
            if trial_id not in self.trials:
                raise project_files.ProjectFileError(
                    os.path.join(project_dir, f"trial_{trial_id}"),
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
        queue = keras_tuner_internals.retry_queue(self)
        for trial in self.ongoing_trials.values():
            queue.append(trial.trial_id)
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
