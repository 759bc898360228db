"""`BatchTuner`: random search over batch size, the learning rate coupled."""

import gc
import numbers
import os
import sys

import keras
import keras_tuner
from keras_tuner import errors

from keras_batchtune import band
from keras_batchtune import callbacks as callbacks_module
from keras_batchtune import checkpoint
from keras_batchtune import cluster
from keras_batchtune import coupling
from keras_batchtune import data
from keras_batchtune import distribute
from keras_batchtune import lr_finder
from keras_batchtune import memory
from keras_batchtune import oracle as oracle_module
from keras_batchtune import project_files
from keras_batchtune import report
from keras_batchtune import scaling
from keras_batchtune import space
from keras_batchtune import tensorboard
from keras_batchtune import trial_fit


class BatchTuner(tensorboard.HParamsSessions, keras_tuner.Tuner):
    """Random search that makes batch size a searched hyperparameter.

    A drop-in replacement for `keras_tuner.RandomSearch`: same arguments,
    methods, directory layout and resume behaviour. In addition:

    - the batch size is searched, as
      `hp.Int("batch_size", min_batch_size, max_batch_size, step=2,
      sampling="log")`, unless the hypermodel registers its own
      `"batch_size"` (in `hyperparameters=`, in `build` or in
      `HyperModel.fit`); the tuner passes it to `fit` itself;
    - the learning rate the model is compiled with is the one for the
      reference batch size; a trial at batch `B` trains with
      `lr * s(B / base_batch_size)`, `s` given by `lr_scaling`, after an
      optional linear warmup of `warmup_epochs`;
    - each trial records `effective_learning_rate`, `examples_per_second`
      (training) and `fit_seconds`;
    - a trial that runs out of memory at batch `B` is recorded as
      "out of memory at batch B" and no batch >= `B` is proposed again; a
      NaN/inf loss records "diverged at epoch K". Neither counts toward
      `max_consecutive_failed_trials`.
    - with a `keras.callbacks.TensorBoard` callback given to `search`, each
      execution of a trial writes one HParams session with its
      `batch_size`, `effective_learning_rate` and `lr_scaling` (see
      `keras_batchtune.tensorboard.HParamsSessions`).
    - with `tolerance=t`, `get_best_hyperparameters()`, `get_best_models()`
      and `results_summary()` put first the fastest trial (lowest
      `fit_seconds`) among those within `t` of the best score.

    Example:

    ```python
    def build_model(hp):
        model = keras.Sequential([
            keras.Input((64,)),
            keras.layers.Dense(hp.Int("units", 32, 128, step=32),
                               activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ])
        model.compile(
            keras.optimizers.SGD(hp.Float("learning_rate", 1e-2, 1e-1,
                                          sampling="log"), momentum=0.9),
            loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    tuner = keras_batchtune.BatchTuner(
        build_model, objective="val_accuracy", max_trials=8,
        min_batch_size=16, max_batch_size=512, lr_scaling="linear")
    tuner.search(x, y, epochs=5, validation_data=(x_val, y_val))
    ```

    Args:
        hypermodel: A `keras_tuner.HyperModel`, or a function `hp -> model`.
        objective: As for `keras_tuner.RandomSearch`.
        max_trials: Integer, the most trials to run. Defaults to 10.
        seed: Optional integer, the random seed.
        hyperparameters: Optional `HyperParameters` registered in advance.
        tune_new_entries: As for `keras_tuner.RandomSearch`. When False,
            the tuner's own `batch_size` entry is not added either.
        allow_new_entries: As for `keras_tuner.RandomSearch`. When False,
            the tuner's own `batch_size` entry is not added either.
        max_retries_per_trial: As for `keras_tuner.RandomSearch`.
        max_consecutive_failed_trials: As for `keras_tuner.RandomSearch`;
            out-of-memory and diverged trials do not count.
        min_batch_size: Positive integer, the smallest searched batch size.
            Defaults to 16.
        max_batch_size: Positive integer, the largest searched batch size.
            Defaults to 1024.
        base_batch_size: Positive integer, the batch size the compiled
            learning rate was chosen for. Defaults to the `batch_size` given
            to `search()`, else the batch size of a batched dataset, else 32.
        lr_scaling: `"linear"` (default), `"sqrt"`, `"none"`, or a callable
            mapping the batch ratio `B / base_batch_size` to an LR multiplier.
        warmup_epochs: Non-negative number of epochs over which the learning
            rate ramps linearly from the base to the scaled one. Defaults to 0.
        accumulate: Boolean. If True, every searched batch size stays
            feasible: a trial whose batch runs out of memory is retried as
            accumulated micro-batches (half the size, then a quarter, ...)
            instead of failing, and batches above the known memory ceiling
            run that way from the start; the trial records its
            `micro_batch_size` and `accumulation_steps`. Defaults to False.
        probe_memory: Boolean. If True, `search` first runs
            `keras_batchtune.find_max_batch_size` on a model built with the
            default hyperparameters, and caps the physical batch with it.
            Defaults to False.
        dynamic: Optional `keras_batchtune.DynamicBatchSize`. Every trial
            then trains with a copy of it, starting at the trial's batch size
            (the input wrapped by `keras_batchtune.resizable`); the batch
            sizes each trial went through are in its metric
            `dynamic_batch_size`, one value per epoch. Its `max_batch_size`
            must be at least the tuner's.
        per_replica: Boolean. If False (default), the searched batch size is
            global, as in Keras, and split across the
            `num_replicas_in_sync` replicas of `distribution_strategy`; if
            True, it is per replica and the global batch is
            `batch_size * num_replicas_in_sync`. Either way the grid holds
            only batches that split evenly (times 8 per core on TPU; other
            bounds are rounded, with a warning) and the learning rate is
            coupled to the global batch. Without a strategy there is one
            replica and both meanings agree.
        tolerance: None (default: trials are ranked by their score, as in
            KerasTuner), or a number >= 0 in the objective's units (0.005 is
            half a point of accuracy): among the completed trials whose score
            is within `tolerance` of the best, the one with the lowest
            `fit_seconds` is returned first by `get_best_hyperparameters()`,
            `get_best_models()` and `oracle.get_best_trials()`, the others
            within it next, fastest first, then the rest by score. If a trial
            within it has no `fit_seconds`, the order is the score's.
        lr_band: Where the base learning rate is sampled. None or `"off"`
            (default): over its whole range, as RandomSearch does.
            `"trials"`: once 4 trials have finished, a line
            `log(lr) = a + alpha log(B)` is fitted on the best third of them
            (effective learning rates), and 3 trials in 4 sample the
            learning rate within half a decade of that line at their batch
            size (1 in 4 still explores the whole range). `"range_test"`:
            before the first trial, `keras_batchtune.find_learning_rate` runs
            at the reference batch on the search data (a model built with
            the default hyperparameters), and 3 trials in 4 sample within
            half a decade of its suggestion (coupling carries it to every
            batch). `"both"`: the range test until the fitted line exists.
            The band is derived from the finished trials and the saved
            range-test result, so a resumed or distributed search keeps it.
        lr_hyperparameter: Optional name of the hyperparameter that is the
            base learning rate (the one the model is compiled with). By
            default the `hp.Float` named `"learning_rate"` or `"lr"`; with
            neither, `lr_band` has no effect (a notice says so).
        worker_timeout: In a distributed search (KerasTuner's
            `KERASTUNER_*` variables), the seconds after which the chief
            takes back the trial of a worker it has not heard from (a
            worker sends a heartbeat every quarter of it while it runs a
            trial) and has it run again by another worker; workers wait
            for such trials before they leave. None waits for every
            worker forever, as KerasTuner does. Give every process the
            same value. Defaults to 60.
        successive_halving: None (default: every trial trains for the
            search's `epochs`, as RandomSearch), True, or a dict with
            `factor` (integer >= 2, default 3), `min_epochs` (integer
            >= 1, default 1) and `warm_start` (bool, default True):
            asynchronous successive halving (ASHA). A new configuration
            first trains for `min_epochs`; whenever one of the best
            `1 / factor` of the finished trials of a budget has not been
            promoted, the next trial trains it for `factor` times as many
            epochs, up to the search's `epochs`. With `warm_start`, that
            trial starts from the lower budget's checkpoint (weights and
            optimizer state) and trains only the epochs in between, as
            KerasTuner's Hyperband does; otherwise it starts from scratch.
            Every trial of a budget sees the same number of examples, so
            large batches are cheap trials. `max_trials` counts every trial;
            the trial's budget is its value `tuner/epochs` (its start
            `tuner/initial_epoch`, from the checkpoint of `tuner/trial_id`).
        **kwargs: The arguments of `keras_tuner.Tuner`: `directory`,
            `project_name`, `overwrite`, `executions_per_trial`,
            `distribution_strategy` (a `tf.distribute.Strategy`, see
            `keras_batchtune.resolve_strategy`), `max_model_size`,
            `optimizer`, `loss`, `metrics`, `tuner_id`, `logger`.

    Raises:
        ValueError: for a batch size that is not a positive integer,
            `min_batch_size > max_batch_size`, an unknown `lr_scaling`, a rule
            returning a value <= 0, a negative `warmup_epochs`, a
            `tolerance` that is not a number >= 0, an `lr_band` that is not
            one of None, "off", "trials", "range_test", "both", a
            `successive_halving` that is not None, a boolean or a dict of
            `factor` >= 2, `min_epochs` >= 1 and a bool `warm_start`, or a
            global `min_batch_size` smaller than the replica count; raised
            before anything is written to `directory`. A batch size that
            does not split evenly across the replicas (one registered by the
            hypermodel, or passed to `fit` by it) stops the search with a
            `ValueError` at its first trial.
    """

    def __init__(
        self,
        hypermodel=None,
        objective=None,
        max_trials=10,
        seed=None,
        hyperparameters=None,
        tune_new_entries=True,
        allow_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
        *,
        min_batch_size=16,
        max_batch_size=1024,
        base_batch_size=None,
        lr_scaling="linear",
        warmup_epochs=0,
        accumulate=False,
        probe_memory=False,
        dynamic=None,
        per_replica=False,
        tolerance=None,
        lr_band=None,
        lr_hyperparameter=None,
        worker_timeout=cluster.DEFAULT_WORKER_TIMEOUT,
        successive_halving=None,
        **kwargs,
    ):
        lr_band = band.check_lr_band(lr_band)
        if lr_hyperparameter is not None and not (
            isinstance(lr_hyperparameter, str) and lr_hyperparameter
        ):
            raise ValueError(
                "`lr_hyperparameter` must be None or the name (a non-empty "
                "string) of the learning-rate hyperparameter. "
                f"Received: lr_hyperparameter={lr_hyperparameter!r}"
            )
        strategy = kwargs.get("distribution_strategy")
        min_batch_size, max_batch_size = distribute.aligned_batch_range(
            min_batch_size, max_batch_size, strategy, per_replica
        )
        self.per_replica = bool(per_replica)
        # The LR rule is checked on global batches.
        scale = distribute.num_replicas(strategy) if per_replica else 1
        grid = space.batch_size_grid(min_batch_size, max_batch_size)
        if base_batch_size is not None:
            scaling.check_positive_int("base_batch_size", base_batch_size)
        reference = base_batch_size or trial_fit.KERAS_DEFAULT_BATCH_SIZE
        for batch_size in grid + [min_batch_size, max_batch_size]:
            scaling.learning_rate_multiplier(
                batch_size * scale, reference, lr_scaling
            )
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, numbers.Real)
            or not warmup_epochs >= 0
        ):
            raise ValueError(
                "`warmup_epochs` must be a number >= 0. "
                f"Received: warmup_epochs={warmup_epochs!r}"
            )
        self.min_batch_size = int(min_batch_size)
        self.max_batch_size = int(max_batch_size)
        self.base_batch_size = base_batch_size
        self.lr_scaling = lr_scaling
        self.warmup_epochs = warmup_epochs
        self.accumulate = bool(accumulate)
        self.probe_memory = bool(probe_memory)
        self.dynamic = _check_dynamic(dynamic, max_batch_size)
        self.seed = seed
        self._search_batch_size = None
        self._memory_ceiling = None
        self._trial_fit = None
        oracle = oracle_module.BatchSearchOracle(
            objective=objective,
            max_trials=max_trials,
            seed=seed,
            hyperparameters=hyperparameters,
            tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
            accumulate=self.accumulate,
            tolerance=tolerance,
            lr_band=lr_band,
            lr_hyperparameter=lr_hyperparameter,
            worker_timeout=worker_timeout,
            successive_halving=successive_halving,
        )
        super().__init__(oracle, hypermodel, **kwargs)
        if self._is_worker() and oracle.worker_timeout is not None:
            # Renews the lease of the running trial; waits while the
            # chief may still hand out a trial taken back from a dead worker.
            self.oracle = cluster.LeasedOracleClient(
                self.oracle, oracle.worker_timeout
            )

    @property
    def reference_batch_size(self):
        """The batch size the compiled learning rate is for, if known yet."""
        return self.base_batch_size or self._search_batch_size

    def _fit_is_overridden(self):
        return type(self.hypermodel).fit is not keras_tuner.HyperModel.fit

    def _can_add_batch_size(self, hp):
        return (
            self.hypermodel is not None
            and self.oracle.tune_new_entries
            and self.oracle.allow_new_entries
            and all(p.name != space.BATCH_SIZE for p in hp.space)
        )

    def _register_batch_size(self, hp):
        return hp.Int(
            space.BATCH_SIZE,
            self.min_batch_size,
            self.max_batch_size,
            step=2,
            sampling="log",
        )

    def _populate_initial_space(self):
        super()._populate_initial_space()
        hp = self.oracle.get_space()
        # A `HyperModel.fit` of the user's may register "batch_size" itself:
        # that is only seen once it has run, so the tuner's entry then joins
        # the space after the first trial (see `_build_and_fit_model`).
        if self._can_add_batch_size(hp) and not self._fit_is_overridden():
            self._register_batch_size(hp)
            self.oracle.update_space(hp)

    def search(self, *fit_args, **fit_kwargs):
        """Searches batch size and the other hyperparameters.

        Takes the arguments of `model.fit` (and of `keras_tuner.Tuner.search`).
        A `batch_size` given here is not used for training: it is taken as the
        batch size the compiled learning rate was chosen for (unless
        `base_batch_size` was given), and the batch size is still searched.

        Args:
            *fit_args: Positional arguments for `fit`, such as `x` and `y`.
            **fit_kwargs: Keyword arguments for `fit`.

        Raises:
            ValueError: if `batch_size` is not a positive integer, or `x` is
                data whose batches the tuner cannot set.
        """
        batch_size = fit_kwargs.pop("batch_size", None)
        if batch_size is not None:
            self._search_batch_size = scaling.check_positive_int(
                "batch_size", batch_size
            )
            if fit_kwargs.get("verbose", 1) and self.base_batch_size is None:
                print(
                    f"BatchTuner: search(batch_size={batch_size}) is the "
                    "reference batch of the learning-rate coupling; the batch "
                    "size is still searched in "
                    f"[{self.min_batch_size}, {self.max_batch_size}]."
                )
        if self.hypermodel is not None and not self._fit_is_overridden():
            x = fit_args[0] if fit_args else fit_kwargs.get("x")
            data.check_batchable(x)
        if self.probe_memory:
            self._probe_memory(fit_args, fit_kwargs)
        self._prepare_lr_band(fit_args, fit_kwargs)
        if not self._is_worker() and self.oracle.successive_halving:
            self.oracle.max_epochs = scaling.check_positive_int(
                "epochs", fit_kwargs.get("epochs", 1)
            )
        # KerasTuner runs two full garbage collections before each trial's
        # build; with TensorFlow loaded they scan some 400k long-lived objects
        # (~0.2 s each on 2 cores). Freezing the objects that exist before the
        # search keeps them out of those scans; each trial's own models are
        # created after the freeze and are still collected.
        gc.freeze()
        try:
            with cluster.watch_workers(self.oracle):
                return super().search(*fit_args, **fit_kwargs)
        finally:
            gc.unfreeze()

    def _max_micro_batch_size(self):
        """The largest physical batch known to fit, with `accumulate=True`."""
        if not self.accumulate:
            return None
        ceilings = [
            ceiling
            for ceiling in (
                self._memory_ceiling,
                getattr(self.oracle, "batch_size_ceiling", None),
            )
            if ceiling is not None
        ]
        if not ceilings:
            return sys.maxsize  # no limit known yet: no split
        return max(1, min(ceilings) - 1)

    def _learning_rate_multiplier(self, batch_size):
        """The coupling's LR multiplier at a searched batch size."""
        strategy = getattr(self, "distribution_strategy", None)
        scale = distribute.num_replicas(strategy) if self.per_replica else 1
        reference = (
            self.reference_batch_size or trial_fit.KERAS_DEFAULT_BATCH_SIZE
        )
        return scaling.learning_rate_multiplier(
            batch_size * scale, reference, self.lr_scaling
        )

    def _prepare_lr_band(self, fit_args, fit_kwargs):
        """Gives the oracle the coupling; runs the range test if asked."""
        oracle = self.oracle
        if not isinstance(oracle, oracle_module.BatchSearchOracle):
            return  # a worker of a distributed search: the chief samples
        if oracle.lr_band == "off":
            return
        oracle.learning_rate_multiplier = self._learning_rate_multiplier
        verbose = fit_kwargs.get("verbose", 1)
        lr_hp = oracle.learning_rate_hyperparameter()
        if lr_hp is None:
            if verbose:
                print(
                    f"BatchTuner: lr_band={oracle.lr_band!r} has no effect: "
                    "no learning-rate hyperparameter (a positive `hp.Float` "
                    "named 'learning_rate' or 'lr', or pass "
                    "`lr_hyperparameter=`) in the search space."
                )
            return
        wants_test = oracle.lr_band in ("range_test", "both")
        if not wants_test or oracle.range_test_learning_rate is not None:
            return
        x = fit_args[0] if fit_args else fit_kwargs.get("x")
        y = fit_args[1] if len(fit_args) > 1 else fit_kwargs.get("y")
        model = self._try_build(oracle.get_space())
        reference = (
            self.reference_batch_size or trial_fit.KERAS_DEFAULT_BATCH_SIZE
        )
        result = lr_finder.find_learning_rate(model, x, y, batch_size=reference)
        oracle.range_test_learning_rate = result.suggestion
        oracle.save()
        if verbose:
            low, high = oracle.learning_rate_interval(reference)
            print(
                f"BatchTuner: range test at batch {reference} suggests "
                f"{lr_hp.name}={result.suggestion:.3g}; 3 trials in 4 sample "
                f"it in [{low:.3g}, {high:.3g}] (times the coupling's "
                "multiplier relative to the reference batch)."
            )

    def _probe_memory(self, fit_args, fit_kwargs):
        """Finds the largest batch that fits and caps the physical batch."""
        x = fit_args[0] if fit_args else fit_kwargs.get("x")
        y = fit_args[1] if len(fit_args) > 1 else fit_kwargs.get("y")
        model = self._try_build(self.oracle.get_space())
        # The finder works in global batches; the ceiling in searched ones.
        scale = 1
        if self.per_replica:
            scale = distribute.num_replicas(distribute.model_strategy(model))
        result = memory.find_max_batch_size(
            model,
            x if y is None else (x, y),
            mode="binsearch",
            start=self.min_batch_size * scale,
            max_batch_size=self.max_batch_size * scale,
        )
        ceiling = result.batch_size // scale + 1
        self._memory_ceiling = space.lowered_ceiling(
            self._memory_ceiling, ceiling
        )
        if hasattr(self.oracle, "lower_ceiling"):
            self.oracle.lower_ceiling(ceiling)
            self.oracle.save()
        if fit_kwargs.get("verbose", 1):
            seconds = sum(probe.seconds for probe in result.probes)
            print(
                "BatchTuner: probe_memory found that batches of up to "
                f"{result.batch_size} fit ({len(result.probes)} probes, "
                f"{seconds:.1f} s)."
            )

    def _build_and_fit_model(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        kwargs["callbacks"] = self._trial_callbacks(kwargs.get("callbacks"))
        if oracle_module.EPOCHS in hp.values:
            # A successive-halving budget.
            kwargs["epochs"] = hp.values[oracle_module.EPOCHS]
            kwargs.update(self._warm_start_kwargs(hp, kwargs["callbacks"]))
        while True:
            run = trial_fit.TrialFit(
                batch_size=hp.values.get(space.BATCH_SIZE),
                reference_batch_size=self.reference_batch_size,
                lr_scaling=self.lr_scaling,
                warmup_epochs=self.warmup_epochs,
                max_micro_batch_size=self._max_micro_batch_size(),
                dynamic=self.dynamic,
                per_replica=self.per_replica,
            )
            self._trial_fit = run
            try:
                results = super()._build_and_fit_model(trial, *args, **kwargs)
                break
            except Exception as error:
                failed_batch_size = run.out_of_memory_batch_size
                if failed_batch_size is None:
                    raise
                if self.accumulate and failed_batch_size > 1:
                    # Retry the same trial with smaller micro-batches.
                    self.oracle.update_trial(
                        trial.trial_id,
                        {
                            oracle_module.OUT_OF_MEMORY_AT_MICRO_BATCH_SIZE: (
                                failed_batch_size
                            )
                        },
                    )
                    self._memory_ceiling = space.lowered_ceiling(
                        self._memory_ceiling, failed_batch_size
                    )
                    continue
                self._report_failure(
                    trial,
                    oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE,
                    failed_batch_size,
                    error,
                )
            finally:
                self._trial_fit = None
        for callback in run.dynamic_callbacks:
            for epoch, size in enumerate(callback.batch_size_history):
                self.oracle.update_trial(
                    trial.trial_id,
                    {oracle_module.DYNAMIC_BATCH_SIZE: size},
                    step=epoch,
                )
        if run.diverged_at_epoch is not None:
            self._report_failure(
                trial, oracle_module.DIVERGED_AT_EPOCH, run.diverged_at_epoch
            )
        if run.tuner_set_batch_size and self._can_add_batch_size(hp):
            # The user's `fit` left the batch size to the tuner: search it
            # from the next trial on, and record the one used for this trial.
            self._register_batch_size(hp)
            hp.values[space.BATCH_SIZE] = run.batch_size_used
        return _with_records(results, run.records(), self.oracle.objective)

    def _warm_start_kwargs(self, hp, callbacks):
        """`initial_epoch` and callbacks continuing a lower-rung trial.

        Returns:
            The `fit` arguments to update: none if the trial trains from
            scratch (no `tuner/trial_id`, or that trial's checkpoint is
            missing, which is said).
        """
        start_trial_id = hp.values.get(oracle_module.TRIAL_ID)
        if start_trial_id is None:
            return {}
        filepath = self._get_checkpoint_fname(start_trial_id)
        if not os.path.exists(filepath):
            print(
                f"BatchTuner: trial {start_trial_id}'s checkpoint {filepath} "
                "is missing; this successive-halving trial trains from "
                "scratch instead."
            )
            return {}
        return {
            "initial_epoch": hp.values[oracle_module.INITIAL_EPOCH],
            "callbacks": [checkpoint.WarmStart(filepath)] + callbacks,
        }

    def _trial_callbacks(self, callbacks):
        """Lightens two of KerasTuner's per-trial callbacks (same results).

        - `SaveBestEpoch` writes the checkpoint at every improving epoch; it
          is deferred to one write at the end of `fit`.
        - `TunerCallback` forwards batch hooks to `Tuner.on_batch_begin/end`;
          while those are KerasTuner's no-ops, it is marked `async_safe`, so
          Keras keeps dispatching batch callbacks asynchronously instead of
          waiting for every step's logs.
        """
        batch_hooks_unused = all(
            getattr(type(self), name) is getattr(keras_tuner.Tuner, name)
            for name in ("on_batch_begin", "on_batch_end")
        )
        prepared = []
        for callback in callbacks or []:
            tuner_callback = type(callback).__name__ == "TunerCallback"
            if tuner_callback and batch_hooks_unused:
                callback.async_safe = True
            prepared.append(checkpoint.defer(callback))
        return prepared

    def _report_failure(self, trial, reason, value, error=None):
        """Tells the oracle why a trial has no score, and ends the trial."""
        self.oracle.update_trial(trial.trial_id, {reason: value})
        message = oracle_module.REASON_MESSAGES[reason].format(value)
        raise errors.FailedTrialError(message) from error

    def _try_build(self, hp):
        model = super()._try_build(hp)
        if self._trial_fit is not None:
            self._trial_fit.install(model)
        return model

    def load_model(self, trial):
        """Loads a trial's model, its optimizer at the trial's effective LR.

        Args:
            trial: A `Trial` of this search.

        Returns:
            The `keras.Model` with the weights of its best epoch; continuing
            `fit` trains at the learning rate the trial used.
        """
        model = super().load_model(trial)
        name = trial_fit.EFFECTIVE_LEARNING_RATE
        if model.optimizer is not None and trial.metrics.exists(name):
            effective = trial.metrics.get_last_value(name)
            base = coupling.get_base_learning_rate(model.optimizer)
            coupling.set_learning_rate_multiplier(
                model.optimizer, base, effective / coupling.initial_value(base)
            )
        return model

    def results_summary(self, num_trials=10):
        """Prints the best trials, with their batch-size records.

        Each trial shows its hyperparameters, score, and the
        `effective_learning_rate`, `examples_per_second` and `fit_seconds`
        it recorded, or why it has no score. When the best batch size or
        learning rate sits at an edge of the searched range, a last line
        says so and suggests the wider range. With a `tolerance`, the trials
        come in its order (the preferred first) and a line says which trial
        is preferred and why.

        Args:
            num_trials: Optional number of trials to display. Defaults to 10.
        """
        print("Results summary")
        print(f"Results in {self.project_dir}")
        print(f"Showing {num_trials} best trials")
        print(f"{self.oracle.objective}")
        for trial in self.oracle.get_best_trials(num_trials):
            print()
            trial.summary()
            for name in trial_fit.RECORD_NAMES:
                if trial.metrics.exists(name):
                    value = trial.metrics.get_last_value(name)
                    print(f"{name}: {value:.6g}")
        notices = report.range_notices(self.oracle)
        preferred = report.preferred_line(self.oracle)
        if preferred:
            notices.insert(0, preferred)
        if notices:
            print()
        for notice in notices:
            print(notice)

    def get_state(self):
        state = super().get_state()
        state["search_batch_size"] = self._search_batch_size
        return state

    def set_state(self, state):
        super().set_state(state)
        self._search_batch_size = state.get("search_batch_size")

    def save(self):
        """Saves the project's JSON files, each written whole."""
        if not self._is_worker():
            self.oracle.save()
        return project_files.write_json(
            self._get_tuner_fname(), self.get_state()
        )

    def reload(self):
        """Reloads the project; a damaged file raises an error naming it.

        Raises:
            keras_batchtune.ProjectFileError: naming the file, if a trial
                file, `oracle.json` or the tuner's `<tuner_id>.json` is
                damaged or missing.
        """
        if not self._is_worker():
            self.oracle.reload()
        self.set_state(project_files.read_json(self._get_tuner_fname()))


def _check_dynamic(dynamic, max_batch_size):
    if dynamic is None:
        return None
    if not isinstance(dynamic, callbacks_module.DynamicBatchSize):
        raise ValueError(
            "`dynamic` must be a `keras_batchtune.DynamicBatchSize` or None. "
            f"Received: dynamic={dynamic!r}"
        )
    if dynamic.max_batch_size < max_batch_size:
        raise ValueError(
            "`dynamic`: its `max_batch_size` "
            f"({dynamic.max_batch_size}) must be >= the tuner's "
            f"`max_batch_size` ({max_batch_size}), the largest starting batch."
        )
    return dynamic


def _with_records(results, records, objective):
    """Adds the trial records to what `HyperModel.fit` returned."""
    if not records:
        return results
    if isinstance(results, keras.callbacks.History):
        epochs = max((len(v) for v in results.history.values()), default=1)
        for name, value in records.items():
            results.history[name] = [value] * epochs
        return results
    if isinstance(results, dict):
        return {**results, **records}
    if isinstance(results, numbers.Real):
        return {objective.name: float(results), **records}
    return results
