"""One trial's `model.fit`: batch size set, learning rate coupled, timed."""

import copy
import math
import time

import keras
from keras_tuner import errors

from keras_batchtune import accumulation
from keras_batchtune import coupling
from keras_batchtune import data
from keras_batchtune import distribute
from keras_batchtune import memory
from keras_batchtune import optimizer_rules
from keras_batchtune import resizable_data
from keras_batchtune import scaling
from keras_batchtune import space

KERAS_DEFAULT_BATCH_SIZE = 32

EFFECTIVE_LEARNING_RATE = "effective_learning_rate"
EFFECTIVE_WEIGHT_DECAY = "effective_weight_decay"
LR_SCALING_EXPONENT = "lr_scaling_exponent"
OPTIMIZER_LR_SCALING_EXPONENT = "optimizer_lr_scaling_exponent"
EXAMPLES_PER_SECOND = "examples_per_second"
FIT_SECONDS = "fit_seconds"
MICRO_BATCH_SIZE = "micro_batch_size"
ACCUMULATION_STEPS = "accumulation_steps"
GLOBAL_BATCH_SIZE = "global_batch_size"
NUM_REPLICAS = "num_replicas"
BATCH_SIZE_LOG = "batch_size"
LEARNING_RATE_LOG = "learning_rate"
RECORD_NAMES = (
    EFFECTIVE_LEARNING_RATE,
    EFFECTIVE_WEIGHT_DECAY,
    EXAMPLES_PER_SECOND,
    FIT_SECONDS,
    MICRO_BATCH_SIZE,
    ACCUMULATION_STEPS,
    GLOBAL_BATCH_SIZE,
    NUM_REPLICAS,
)


class FitRecorder(keras.callbacks.Callback):
    """Times the training part of each epoch and stops on a NaN/inf loss.

    Only epoch-level hooks are used, so training steps are not slowed down.
    The training part of an epoch ends where validation begins. At the end of
    each epoch it also puts the trial's `batch_size` and the optimizer's
    current `learning_rate` into the epoch logs, unless another callback (a
    dynamic batch size callback) already put them there: callbacks that come
    after it, such as `keras.callbacks.TensorBoard`, then record them.

    Example:

    ```python
    recorder = FitRecorder(examples_per_epoch=len(x), batch_size=64)
    model.fit(x, y, batch_size=64, epochs=3, callbacks=[recorder])
    recorder.epoch_train_seconds  # [..., ..., ...]
    ```

    Args:
        examples_per_epoch: Training examples in one epoch, for throughput.
        batch_size: The batch size of the trial (with gradient accumulation,
            the effective one), or None to log none.
    """

    def __init__(self, examples_per_epoch=0, batch_size=None):
        super().__init__()
        self.examples_per_epoch = examples_per_epoch
        self.batch_size = batch_size
        self.epoch_train_seconds = []
        self.diverged_at_epoch = None
        self._epoch_start = None
        self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        if self._epoch_start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = self._train_end or time.perf_counter()
        self.epoch_train_seconds.append(end - self._epoch_start)
        self._epoch_start = None
        if logs is not None:
            # A dynamic batch size callback's values, already there, win.
            if self.batch_size is not None and BATCH_SIZE_LOG not in logs:
                logs[BATCH_SIZE_LOG] = self.batch_size
            if LEARNING_RATE_LOG not in logs:
                learning_rate = _current_learning_rate(self.model)
                if learning_rate is not None:
                    logs[LEARNING_RATE_LOG] = learning_rate
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at_epoch = epoch + 1
            self.model.stop_training = True


def _current_learning_rate(model):
    """The optimizer's learning rate at its current step, or None."""
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(
        coupling.inner_optimizer(optimizer), keras.optimizers.Optimizer
    ):
        return None
    return coupling.current_learning_rate(optimizer)


def _with_recorder(callbacks, recorder):
    """Puts `recorder` and the `TensorBoard` callbacks last, in that order.

    Whatever any other callback puts into the epoch logs (the batch size and
    learning rate of a dynamic batch size callback, `ReduceLROnPlateau`'s
    learning rate) then reaches TensorBoard, and so do the recorder's.
    """
    callbacks = list(callbacks or [])
    tensorboards = [c for c in callbacks if type(c).__name__ == "TensorBoard"]
    others = [c for c in callbacks if type(c).__name__ != "TensorBoard"]
    return others + [recorder] + tensorboards


class TrialFit:
    """Runs a model's `fit` at a trial's batch size with the coupled LR.

    `install(model)` replaces `model.fit` on that one model object, so that a
    `HyperModel.fit` of the user's, which calls `model.fit(*args, **kwargs)`,
    trains at the searched batch size without knowing about it. A
    `batch_size` the user's code passes itself wins, and the learning rate is
    coupled to that one.

    Example:

    ```python
    trial_fit = TrialFit(batch_size=256, reference_batch_size=32)
    trial_fit.install(model)
    model.fit(x, y, epochs=2)  # batch 256, learning rate x 8
    trial_fit.records()
    ```

    Args:
        batch_size: The trial's batch size, or None for the reference one.
        reference_batch_size: The batch size the compiled learning rate was
            chosen for, or None to take a batched dataset's batch size, or
            Keras's default of 32.
        lr_scaling: A rule accepted by `keras_batchtune.scale_learning_rate`,
            or `"auto"`: the rule of the optimizer's class (see
            `keras_batchtune.optimizer_rules`).
        warmup_epochs: Epochs of linear warmup to the scaled learning rate.
        max_micro_batch_size: The largest batch that fits in memory, or None.
            A larger batch `B` set by the tuner runs as `k` accumulated
            micro-batches of `B / k` (Keras's optimizer
            `gradient_accumulation_steps`); the LR is coupled to `B`.
        per_replica: Whether `batch_size` (and `max_micro_batch_size`) are
            per replica of the model's `tf.distribute` strategy; the global
            batch is then `batch_size * num_replicas_in_sync`. The LR is
            always coupled to the global batch.
        drop_remainder: Whether to train on full batches only (one batch
            shape), as always under a `TPUStrategy`.
        couple_weight_decay: Whether to scale the optimizer's decoupled
            `weight_decay` by `k / s(k)` along with the learning rate, so
            that the AdamW timescale stays fixed.
    """

    def __init__(
        self,
        batch_size=None,
        reference_batch_size=None,
        lr_scaling="linear",
        warmup_epochs=0,
        max_micro_batch_size=None,
        per_replica=False,
        drop_remainder=False,
        dynamic=None,
        couple_weight_decay=False,
    ):
        self.batch_size = batch_size
        self.couple_weight_decay = couple_weight_decay
        self.dynamic = dynamic
        self.dynamic_callbacks = []
        self.per_replica = per_replica
        self.drop_remainder = drop_remainder
        self.num_replicas = 1
        self.max_micro_batch_size = max_micro_batch_size
        self.micro_batch_size = None
        self.accumulation_steps = 1
        self.reference_batch_size = reference_batch_size
        self.lr_scaling = lr_scaling
        self.warmup_epochs = warmup_epochs
        self.batch_size_used = None
        self.tuner_set_batch_size = False
        self.out_of_memory_batch_size = None
        self.effective_learning_rate = None
        self.effective_weight_decay = None
        self.lr_scaling_rule = None
        self.optimizer_lr_scaling_rule = None
        self.fit_seconds = 0.0
        self._base_learning_rate = None
        self._base_weight_decay = None
        self._recorders = []

    def install(self, model):
        """Makes `model.fit` run through this object.

        Args:
            model: A compiled `keras.Model`.
        """
        original_fit = model.fit

        def fit(*args, **kwargs):
            return self._fit(model, original_fit, *args, **kwargs)

        model.fit = fit

    @property
    def diverged_at_epoch(self):
        """The 1-based epoch whose loss was NaN or inf, or None."""
        for recorder in self._recorders:
            if recorder.diverged_at_epoch is not None:
                return recorder.diverged_at_epoch
        return None

    def records(self):
        """Returns the trial records measured by the fits run so far.

        Returns:
            A dict with `effective_learning_rate`, `examples_per_second` and
            `fit_seconds`; `lr_scaling_exponent` (the rule trained with:
            1 linear, 0.5 sqrt, 0 none; absent for a callable) and
            `optimizer_lr_scaling_exponent` (the rule `lr_scaling="auto"`
            picks for the optimizer; absent if it has none); and with
            `couple_weight_decay`, `effective_weight_decay`. Empty if no fit
            ran. Throughput leaves out the first epoch (graph tracing)
            whenever there are several.
        """
        if not self._recorders:
            return {}
        records = {
            EFFECTIVE_LEARNING_RATE: self.effective_learning_rate,
            EFFECTIVE_WEIGHT_DECAY: self.effective_weight_decay,
            LR_SCALING_EXPONENT: optimizer_rules.rule_exponent(
                self.lr_scaling_rule
            ),
            OPTIMIZER_LR_SCALING_EXPONENT: optimizer_rules.rule_exponent(
                self.optimizer_lr_scaling_rule
            ),
            FIT_SECONDS: self.fit_seconds,
        }
        if self.max_micro_batch_size is not None:
            records[MICRO_BATCH_SIZE] = self.micro_batch_size
            records[ACCUMULATION_STEPS] = self.accumulation_steps
        if self.per_replica or self.num_replicas > 1:
            records[GLOBAL_BATCH_SIZE] = self.batch_size_used
            records[NUM_REPLICAS] = self.num_replicas
        examples, seconds = 0, 0.0
        for recorder in self._recorders:
            epochs = recorder.epoch_train_seconds
            timed = epochs[1:] if len(epochs) > 1 else epochs
            examples += recorder.examples_per_epoch * len(timed)
            seconds += sum(timed)
        if seconds > 0:
            records[EXAMPLES_PER_SECOND] = examples / seconds
        return {k: v for k, v in records.items() if v is not None}

    def _reference(self, x):
        if self.reference_batch_size is not None:
            return self.reference_batch_size
        if data.is_tf_dataset(x):
            batched, batch_size = data.describe_batching(x)
            if batched and batch_size:
                return batch_size
        return KERAS_DEFAULT_BATCH_SIZE

    def _fit(self, model, original_fit, *args, **kwargs):
        try:
            args, kwargs = self._prepare(model, list(args), kwargs)
        except ValueError as error:
            # Bad input, or an optimizer without a settable learning rate:
            # every trial would fail alike, so the search stops here.
            raise errors.FatalValueError(str(error)) from error
        # Over several JAX hosts each host's `fit` feeds its share.
        for name in ("batch_size", "validation_batch_size"):
            if kwargs.get(name) is not None:
                kwargs[name] = distribute.per_process_batch_size(kwargs[name])
        start = time.perf_counter()
        try:
            return original_fit(*args, **kwargs)
        except Exception as error:
            if memory.is_out_of_memory_error(error):
                # In the units of the searched batch size (per replica, or
                # global), as the oracle's ceiling compares it.
                self.out_of_memory_batch_size = self.micro_batch_size // (
                    self.num_replicas if self.per_replica else 1
                )
            raise
        finally:
            self.fit_seconds += time.perf_counter() - start

    def _prepare(self, model, args, kwargs):
        """Sets the batch size, batches the data and couples the LR."""
        x = args[0] if args else kwargs.get("x")
        reference = self._reference(x)
        strategy = distribute.model_strategy(model)
        self.num_replicas = distribute.num_replicas(strategy)
        if distribute.is_tpu_strategy(strategy):
            self.drop_remainder = True  # one batch shape: one XLA program
        num_examples = None
        if kwargs.get("batch_size") is not None:
            batch_size = scaling.check_positive_int(
                "batch_size", kwargs["batch_size"]
            )
            space.check_global_batch_size(batch_size, self.num_replicas)
        else:
            batch_size = self.batch_size or reference
            if self.batch_size:
                batch_size = space.global_batch_size(
                    batch_size, self.num_replicas, self.per_replica
                )
            space.check_global_batch_size(batch_size, self.num_replicas)
            self.tuner_set_batch_size = True
            data.check_batchable(x)
            # Over several JAX hosts each holds its share of the examples
            # (as many on each) and the batch is global: count them all.
            num_examples = _count_examples(x, kwargs)
            if num_examples is not None:
                num_examples *= distribute.data_processes()
            physical_batch_size = self._accumulate(model, batch_size)
            if self.dynamic is not None:
                args, kwargs = self._make_resizable(args, kwargs, batch_size)
            elif self.drop_remainder:
                args, kwargs = distribute.static_batches(
                    args, kwargs, physical_batch_size
                )
                x = kwargs["x"]
                if num_examples is not None:
                    num_examples -= num_examples % physical_batch_size
            elif data.is_tf_dataset(x):
                from keras_batchtune.backend import tf_data

                x = tf_data.batch_dataset(x, physical_batch_size)
                if args:
                    args[0] = x
                else:
                    kwargs["x"] = x
                kwargs.pop("batch_size", None)
                validation = kwargs.get("validation_data")
                if data.is_tf_dataset(validation):
                    if not data.describe_batching(validation)[0]:
                        kwargs["validation_data"] = validation.batch(
                            physical_batch_size
                        )
            else:
                kwargs["batch_size"] = physical_batch_size
        if distribute.is_multi_worker(strategy):
            distribute.check_workers_agree(strategy, batch_size)
            distribute.patch_for_multi_worker(model)
        if self.micro_batch_size is None:
            self.micro_batch_size = batch_size
        self.batch_size_used = batch_size
        steps_per_epoch = _steps_per_epoch(
            x, num_examples, self.micro_batch_size, kwargs
        )
        if model.optimizer is not None:
            self._couple(
                model.optimizer, batch_size, reference, steps_per_epoch
            )
        if kwargs.get("steps_per_epoch") or num_examples is None:
            num_examples = (steps_per_epoch or 0) * self.micro_batch_size
        recorder = FitRecorder(
            examples_per_epoch=num_examples, batch_size=batch_size
        )
        kwargs["callbacks"] = _with_recorder(kwargs.get("callbacks"), recorder)
        self._recorders.append(recorder)
        return args, kwargs

    def _make_resizable(self, args, kwargs, batch_size):
        """Wraps the data for a copy of the `DynamicBatchSize` template."""
        x = args[0] if args else kwargs.pop("x", None)
        y = args[1] if len(args) > 1 else kwargs.pop("y", None)
        kwargs.pop("batch_size", None)
        kwargs.pop("shuffle", None)
        max_physical_batch_size = None
        if self.max_micro_batch_size is not None:
            scale = self.num_replicas if self.per_replica else 1
            max_physical_batch_size = max(
                self.max_micro_batch_size * scale, batch_size
            )
        kwargs["x"] = resizable_data.resizable(
            x,
            y,
            batch_size=batch_size,
            drop_remainder=self.drop_remainder,
            max_physical_batch_size=max_physical_batch_size,
        )
        callback = copy.deepcopy(self.dynamic)
        self.dynamic_callbacks.append(callback)
        kwargs["callbacks"] = [callback] + list(kwargs.get("callbacks") or [])
        return args[2:], kwargs

    def _accumulate(self, model, batch_size):
        """Splits `batch_size` to fit `max_micro_batch_size`; sets up Keras."""
        if self.max_micro_batch_size is None:
            return batch_size
        scale = self.num_replicas if self.per_replica else 1
        # Each replica's share of a micro-batch keeps the multiple its
        # device wants (8 per TPU core) where the batch allows it.
        multiple = self.num_replicas * distribute.per_replica_multiple(
            distribute.model_strategy(model)
        )
        if batch_size % multiple:
            multiple = self.num_replicas
        micro_batch_size, steps = space.split_batch(
            batch_size,
            self.max_micro_batch_size * scale,
            multiple=multiple,
        )
        if steps > 1:
            optimizer = model.optimizer
            if optimizer.built and not optimizer.gradient_accumulation_steps:
                raise ValueError(
                    "Gradient accumulation needs an optimizer that has not "
                    "been built yet (Keras creates the accumulators when it "
                    "builds the optimizer); do not build it in `build`."
                )
            optimizer.gradient_accumulation_steps = steps
            accumulation.make_replica_safe(model)
        self.micro_batch_size, self.accumulation_steps = micro_batch_size, steps
        return micro_batch_size

    def _couple(self, optimizer, batch_size, reference, steps_per_epoch):
        if self._base_learning_rate is None:
            self._base_learning_rate = coupling.get_base_learning_rate(
                optimizer
            )
        warmup_steps = 0
        if self.warmup_epochs:
            if not steps_per_epoch:
                raise ValueError(
                    "`warmup_epochs` needs the number of steps per epoch, "
                    "which cannot be known for this input; pass "
                    "`steps_per_epoch` to `search()`."
                )
            updates_per_epoch = steps_per_epoch / self.accumulation_steps
            warmup_steps = max(1, round(self.warmup_epochs * updates_per_epoch))
        rule, self.optimizer_lr_scaling_rule = coupling.resolve_lr_scaling(
            optimizer, self.lr_scaling
        )
        self.lr_scaling_rule = rule
        multiplier = scaling.learning_rate_multiplier(
            batch_size, reference, rule
        )
        self.effective_learning_rate = coupling.set_learning_rate_multiplier(
            optimizer,
            self._base_learning_rate,
            multiplier,
            warmup_steps,
            self.accumulation_steps,
        )
        if self.couple_weight_decay:
            if self._base_weight_decay is None:
                self._base_weight_decay = coupling.get_weight_decay(optimizer)
            self.effective_weight_decay = coupling.set_weight_decay(
                optimizer,
                optimizer_rules.scale_weight_decay(
                    self._base_weight_decay, batch_size, reference, rule
                ),
            )


def _count_examples(x, fit_kwargs):
    """Counts the training examples of one epoch, or None if unknown."""
    return data.count_examples(x, fit_kwargs.get("validation_split") or 0.0)


def _steps_per_epoch(x, num_examples, batch_size, fit_kwargs):
    """The number of training steps `fit` will run per epoch, or None."""
    if fit_kwargs.get("steps_per_epoch"):
        return fit_kwargs["steps_per_epoch"]
    if num_examples:
        return math.ceil(num_examples / batch_size)
    if data.is_tf_dataset(x):
        from keras_batchtune.backend import tf_data

        return tf_data.cardinality(x) or None
    return None


def lr_scaling_mismatches(trials):
    """The trials whose named rule does not fit their optimizer.

    Read from each trial's records `lr_scaling_exponent` and
    `optimizer_lr_scaling_exponent`: a `"linear"` or `"sqrt"` rule that
    differs from what `lr_scaling="auto"` would pick. `"none"` (no coupling
    asked for) and callables are never reported.

    Example:

    ```python
    lr_scaling_mismatches(tuner.oracle.trials.values())
    # [("0", "linear", "sqrt")]
    ```

    Args:
        trials: `keras_tuner` trials.

    Returns:
        A list of `(trial_id, rule_used, rule_for_optimizer)` tuples.
    """
    mismatches = []
    for trial in trials:
        metrics = trial.metrics
        if not (
            metrics.exists(LR_SCALING_EXPONENT)
            and metrics.exists(OPTIMIZER_LR_SCALING_EXPONENT)
        ):
            continue
        used = optimizer_rules.rule_from_exponent(
            metrics.get_last_value(LR_SCALING_EXPONENT)
        )
        wanted = optimizer_rules.rule_from_exponent(
            metrics.get_last_value(OPTIMIZER_LR_SCALING_EXPONENT)
        )
        if used in ("linear", "sqrt") and wanted and used != wanted:
            mismatches.append((trial.trial_id, used, wanted))
    return mismatches


def lr_scaling_rule(trial):
    """The named rule a trial trained with, from its records, or None.

    Example:

    ```python
    lr_scaling_rule(tuner.oracle.trials["0"])  # "sqrt"
    ```

    Args:
        trial: A `keras_tuner` trial.

    Returns:
        `"linear"`, `"sqrt"` or `"none"`; None for a callable rule or a
        trial without records.
    """
    if not trial.metrics.exists(LR_SCALING_EXPONENT):
        return None
    return optimizer_rules.rule_from_exponent(
        trial.metrics.get_last_value(LR_SCALING_EXPONENT)
    )
