"""`BatchTuner`: random search over batch size, the learning rate coupled."""

import gc
import numbers
import os
import sys

import keras
import keras_tuner
from keras_tuner import errors

from keras_batchtune import backend
from keras_batchtune import band
from keras_batchtune import checkpoint
from keras_batchtune import cluster
from keras_batchtune import data
from keras_batchtune import distribute
from keras_batchtune import distribution_setup
from keras_batchtune import optimizer_rules
from keras_batchtune import oracle as oracle_module
from keras_batchtune import project_files
from keras_batchtune import report
from keras_batchtune import scaling
from keras_batchtune import space
from keras_batchtune import tensorboard
from keras_batchtune import trial_fit
from keras_batchtune import tuner_setup
from keras_batchtune.backend import keras_tuner_internals


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
      optional linear warmup of `warmup_epochs`; `lr_scaling="auto"` picks
      `s` from the optimizer, and `couple_weight_decay=True` scales its
      weight decay to keep the AdamW timescale fixed;
    - each trial records `effective_learning_rate`, `examples_per_second`
      (training) and `fit_seconds` (with `couple_weight_decay`, also
      `effective_weight_decay`), and the rule it trained with;
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
        lr_scaling: `"linear"` (default), `"sqrt"`, `"none"`, a callable
            mapping the batch ratio `B / base_batch_size` to an LR multiplier,
            or `"auto"`: the rule of each trial's optimizer, `"linear"` for
            SGD (with or without momentum), `"sqrt"` for Adam, AdamW,
            Adamax, Nadam, RMSprop, Adagrad, Adadelta, Adafactor, Ftrl, Lion
            and Lamb (subclasses included; another optimizer is refused).
            Each trial records the rule it trained with
            (`lr_scaling_exponent`: 1 linear, 0.5 sqrt, 0 none). A named
            rule that does not fit the optimizer is used as given, and
            `results_summary()` notes it.
        couple_weight_decay: Boolean. If True, the optimizer's decoupled
            `weight_decay` is multiplied by `k / s(k)` (`k` the batch ratio,
            `s` the rule): `sqrt(k)` under `"sqrt"`, 1 under `"linear"`, so
            that the AdamW timescale `B / (lr * weight_decay * N)` stays
            fixed (Bergsma et al. 2025, arXiv 2505.13738). Each trial
            records `effective_weight_decay`. The optimizer must set a
            `weight_decay` (Keras applies it decoupled, for every
            optimizer). Defaults to False.
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
        distribution: Optional `keras.distribution.Distribution`
            (`DataParallel` or `ModelParallel`), JAX backend only: the
            devices every trial trains on. Defaults to None: the global
            distribution (`keras.distribution.set_distribution`, read when
            the tuner is made), if any. The searched batch is global and
            split across the devices of the mesh's batch axis (over all
            hosts); the grid holds only multiples of that count (times 8
            per core on TPU), `per_replica=True` multiplies by it, and the
            learning rate is coupled to the global batch. A `Distribution`
            passed as `distribution_strategy=` is taken the same way.
        **kwargs: The arguments of `keras_tuner.Tuner`: `directory`,
            `project_name`, `overwrite`, `executions_per_trial`,
            `distribution_strategy` (a `tf.distribute.Strategy` on
            TensorFlow, a `keras.distribution.Distribution` on JAX; see
            `keras_batchtune.resolve_distribution`), `max_model_size`,
            `optimizer`, `loss`, `metrics`, `tuner_id`, `logger`.

    Raises:
        ValueError: for a batch size that is not a positive integer,
            `min_batch_size > max_batch_size`, an unknown `lr_scaling`, a rule
            returning a value <= 0, `lr_scaling="auto"` with an optimizer
            not in its table, a `couple_weight_decay` that is not a boolean
            or is True for an optimizer without `weight_decay` (the
            optimizer of the model built with the default hyperparameters,
            or the `optimizer` argument), a negative `warmup_epochs`, a
            `tolerance` that is not a number >= 0, an `lr_band` that is not
            one of None, "off", "trials", "range_test", "both", a
            `successive_halving` that is not None, a boolean or a dict of
            `factor` >= 2, `min_epochs` >= 1 and a bool `warm_start`, a
            global `max_batch_size` smaller than the replica count (less
            than one example per device), both `distribution` and
            `distribution_strategy`, a `distribution` off JAX or a
            `tf.distribute` strategy on JAX, or a distribution whose device
            mesh does not cover the devices there are; raised before
            anything is written to `directory`. A batch size that
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
        couple_weight_decay=False,
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
        distribution=None,
        **kwargs,
    ):
        if hypermodel is None and type(self).run_trial is BatchTuner.run_trial:
            # KerasTuner's own check sees the `HParamsSessions` mixin's
            # `run_trial` as the user's override; made here as it would be.
            raise ValueError(
                "Received `hypermodel=None`. We only allow not specifying "
                "`hypermodel` if the user defines the search space in "
                "`Tuner.run_trial()` by subclassing a `Tuner` class without "
                "using a `HyperModel` instance."
            )
        lr_band = band.check_lr_band(lr_band)
        distribution, strategy = distribution_setup.resolve(
            distribution, kwargs
        )
        min_batch_size, max_batch_size = tuner_setup.check_batch_arguments(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            base_batch_size=base_batch_size,
            lr_scaling=lr_scaling,
            warmup_epochs=warmup_epochs,
            lr_hyperparameter=lr_hyperparameter,
            strategy=strategy,
            per_replica=per_replica,
        )
        self._auto_lr_scaling = tuner_setup.check_optimizer_coupling(
            hypermodel=hypermodel,
            hyperparameters=hyperparameters,
            lr_scaling=lr_scaling,
            couple_weight_decay=couple_weight_decay,
            optimizer=kwargs.get("optimizer"),
        )
        self.couple_weight_decay = couple_weight_decay
        self.per_replica = bool(per_replica)
        self.min_batch_size = int(min_batch_size)
        self.max_batch_size = int(max_batch_size)
        self.base_batch_size = base_batch_size
        self.lr_scaling = lr_scaling
        self.warmup_epochs = warmup_epochs
        self.accumulate = bool(accumulate)
        self.probe_memory = bool(probe_memory)
        self.dynamic = tuner_setup.check_dynamic(dynamic, max_batch_size)
        self.seed = seed
        self._search_batch_size = None
        self._memory_ceiling = None
        self._trial_fit = None
        oracle = self._make_oracle(
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
        # `Tuner`'s, also under `BatchBayesianOptimization` and
        # `BatchHyperband`, whose KerasTuner classes would make their own
        # oracle.
        keras_tuner.Tuner.__init__(self, oracle, hypermodel, **kwargs)
        distribution_setup.attach(self, distribution)
        if (
            keras_tuner_internals.is_worker(self)
            and oracle.worker_timeout is not None
        ):
            # Renews the lease of the running trial; waits while the
            # chief may still hand out a trial taken back from a dead worker.
            self.oracle = cluster.LeasedOracleClient(
                self.oracle, oracle.worker_timeout
            )

    def _make_oracle(self, **kwargs):
        """The tuner's oracle, made from the constructor's arguments.

        `BatchBayesianOptimization` and `BatchHyperband` make theirs here;
        the rest of the tuner is shared.

        Args:
            **kwargs: The arguments of `BatchSearchOracle`.

        Returns:
            A `keras_batchtune.oracle.BatchSearchOracle`.
        """
        return oracle_module.BatchSearchOracle(**kwargs)

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
        with distribution_setup.active(self):
            return self._search_under_distribution(*fit_args, **fit_kwargs)

    def _search_under_distribution(self, *fit_args, **fit_kwargs):
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
            ceiling = tuner_setup.probe_memory(self, fit_args, fit_kwargs)
            self._memory_ceiling = space.lowered_ceiling(
                self._memory_ceiling, ceiling
            )
        tuner_setup.prepare_lr_band(self, fit_args, fit_kwargs)
        is_worker = keras_tuner_internals.is_worker(self)
        if not is_worker and getattr(self.oracle, "successive_halving", None):
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

    def learning_rate_multiplier(self, batch_size):
        """The coupling's learning-rate multiplier at a searched batch size.

        Args:
            batch_size: A batch size of the search (per replica with
                `per_replica=True`).

        Returns:
            The factor `lr_scaling` gives the reference batch's learning
            rate at that (global) batch, a float.
        """
        strategy = getattr(self, "distribution_strategy", None)
        scale = distribute.num_replicas(strategy) if self.per_replica else 1
        reference = (
            self.reference_batch_size or trial_fit.KERAS_DEFAULT_BATCH_SIZE
        )
        rule = self.lr_scaling
        if rule == "auto":
            rule = self._auto_lr_scaling
        if rule is None:
            raise ValueError(
                "`lr_scaling='auto'` found no optimizer in the model built "
                "with the default hyperparameters, so `lr_band` cannot "
                "convert learning rates between batch sizes; pass "
                "`lr_scaling='linear'` or `'sqrt'`."
            )
        return scaling.learning_rate_multiplier(
            batch_size * scale, reference, rule
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
                couple_weight_decay=self.couple_weight_decay,
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
        filepath = keras_tuner_internals.checkpoint_path(self, start_trial_id)
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
          waiting for every step's logs; only where the backend's `fit` loop
          allows it (`backend.trainer.ASYNC_BATCH_CALLBACKS_SAFE`).
        """
        async_safe_here = backend.trainer.ASYNC_BATCH_CALLBACKS_SAFE
        batch_hooks_unused = all(
            getattr(type(self), name) is getattr(keras_tuner.Tuner, name)
            for name in ("on_batch_begin", "on_batch_end")
        )
        prepared = []
        for callback in callbacks or []:
            tuner_callback = keras_tuner_internals.is_tuner_callback(callback)
            if tuner_callback and batch_hooks_unused and async_safe_here:
                callback.async_safe = True
            prepared.append(checkpoint.defer(callback))
        return prepared

    def _report_failure(self, trial, reason, value, error=None):
        """Tells the oracle why a trial has no score, and ends the trial."""
        self.oracle.update_trial(trial.trial_id, {reason: value})
        message = oracle_module.REASON_MESSAGES[reason].format(value)
        raise errors.FailedTrialError(message) from error

    def _try_build(self, hp):
        with distribution_setup.kept():
            model = super()._try_build(hp)
        if self._trial_fit is not None:
            self._trial_fit.install(model)
        distribution_setup.install_even_split(model)
        return model

    def load_model(self, trial):
        """Loads a trial's model, its optimizer at the trial's effective LR.

        As KerasTuner's, the model is built from the trial's hyperparameters
        and given the weights of its best epoch; here the optimizer's state
        of that epoch (slots such as momentum, step count) is loaded too, on
        every backend (see `keras_batchtune.checkpoint.load_best_epoch`),
        where KerasTuner's own `load_model` skips it with a warning.

        Args:
            trial: A `Trial` of this search.

        Returns:
            The `keras.Model` with the weights and optimizer state of its
            best epoch; continuing `fit` trains at the learning rate the
            trial used.
        """
        return checkpoint.load_best_epoch(self, trial, self.warmup_epochs)

    def results_summary(self, num_trials=10):
        """Prints the best trials, with their batch-size records.

        Each trial shows its hyperparameters, score, and the
        `effective_learning_rate`, `examples_per_second` and `fit_seconds`
        it recorded, or why it has no score. When the best batch size or
        learning rate sits at an edge of the searched range, a last line
        says so and suggests the wider range. With a `tolerance`, the trials
        come in its order (the preferred first) and a line says which trial
        is preferred and why. With `lr_scaling="auto"` each trial shows the
        rule it trained with (`lr_scaling_rule`); a line notes the trials
        whose `"linear"` or `"sqrt"` rule does not fit their optimizer.

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
            if self.lr_scaling == "auto":
                rule = trial_fit.lr_scaling_rule(trial)
                print(f"lr_scaling_rule: {rule or '-'} (auto)")
        notices = report.range_notices(self.oracle)
        mismatch = optimizer_rules.mismatch_notice(
            trial_fit.lr_scaling_mismatches(self.oracle.trials.values())
        )
        if mismatch:
            notices.append(mismatch)
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
        if not keras_tuner_internals.is_worker(self):
            self.oracle.save()
        return project_files.write_json(
            keras_tuner_internals.tuner_state_path(self), self.get_state()
        )

    def reload(self):
        """Reloads the project; a damaged file raises an error naming it.

        Raises:
            keras_batchtune.ProjectFileError: naming the file, if a trial
                file, `oracle.json` or the tuner's `<tuner_id>.json` is
                damaged or missing.
        """
        if not keras_tuner_internals.is_worker(self):
            self.oracle.reload()
        self.set_state(
            project_files.read_json(
                keras_tuner_internals.tuner_state_path(self)
            )
        )


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
