"""`DynamicBatchSize`: resizes the batch during a plain `model.fit`."""

import json
import time

import keras
import numpy as np

from keras_batchtune import accumulation
from keras_batchtune import coupling
from keras_batchtune import distribute
from keras_batchtune import fit_loop
from keras_batchtune import noise
from keras_batchtune import policies
from keras_batchtune import resizable_data
from keras_batchtune import scaling
from keras_batchtune import space

BATCH_SIZE_KEY = "batch_size"
PHYSICAL_BATCH_SIZE_KEY = "physical_batch_size"
LEARNING_RATE_KEY = "learning_rate"

# The callback's state travels with the optimizer's variables, so that
# `keras.callbacks.BackupAndRestore` (which saves the model's and optimizer's
# weights) restores it: a JSON document, one byte per int32 entry, after its
# length.
_STATE_VARIABLE = "dynamic_batch_size_state"
_STATE_LENGTH = 4096

_NOT_RESIZABLE = (
    "DynamicBatchSize resizes the batch through its input: pass the training "
    "data to `model.fit` wrapped with `keras_batchtune.resizable(x, y, "
    "batch_size=...)`{received}."
)


class DynamicBatchSize(keras.callbacks.Callback):
    """Resizes the batch during `model.fit`, keeping the learning rate coupled.

    At each epoch end a resize policy picks the batch size (examples per
    optimizer update) of the next epoch, from the epoch's logs and, when it
    needs them, online measurements of the gradient noise scale `B_simple`
    and of throughput. The input must be made with
    `keras_batchtune.resizable`. A batch of `B` (a multiple of the input's
    micro-batch) is made physically, the input making batches of `B` from
    the next epoch on, on every backend (TensorFlow, JAX, PyTorch) on one
    replica and under a `keras.distribution.DataParallel` (JAX), up to the
    input's `max_physical_batch_size`; otherwise (beyond that cap, under a
    `tf.distribute` strategy with several replicas, with `steps_per_epoch`
    or `drop_remainder`) physical batches are accumulated into each update
    (Keras's `gradient_accumulation_steps`). A target is rounded to the
    nearest multiple of the micro-batch within the bounds; under a
    `DataParallel` over `n` devices the micro-batch must be a multiple of
    `n`, so every batch is split evenly, `B / n` per device, and the
    learning rate follows the global batch `B`.
    Either way the steps per epoch, the progress bar and `params["steps"]`
    are right and every example is used once per epoch. On every resize
    the learning rate follows `lr * s(B_new / B_old)` (`lr_scaling`, the
    core's rules) unless `keep_lr=True`, times any learning-rate factor the
    policy asks for (the hybrid schedule's decay once the batch is capped).

    On JAX each distinct batch shape is one compilation of the train step:
    at most two per batch size reached, `B` and the epoch's last, smaller
    batch (`num_examples % B`, a shape of its own unless 0 or seen before);
    a shape seen before compiles nothing, and the noise probe compiles
    once. A new number of accumulated steps, or a resize under a
    learning-rate schedule, makes a new train function that compiles anew.

    Each epoch's `logs` get `batch_size`, `physical_batch_size`,
    `learning_rate` and, when measured, `gradient_noise_scale`; list this
    callback before `CSVLogger`/`TensorBoard` so they record them. With
    `keras.callbacks.BackupAndRestore` listed after this callback, a
    restarted `fit` continues at the batch size and learning rate reached
    (the state is saved with the optimizer's variables).

    Example:

    ```python
    train = keras_batchtune.resizable(x, y, batch_size=32, seed=0)
    model.fit(train, epochs=30, validation_data=(x_val, y_val), callbacks=[
        keras_batchtune.DynamicBatchSize(
            "schedule", schedule={10: 128, 20: 512},
            min_batch_size=32, max_batch_size=512, keep_lr=True),
    ])
    ```

    Args:
        policy: `"schedule"`, `"plateau"`, `"noise_scale"`, `"goodput"` or a
            `keras_batchtune.ResizePolicy`.
        min_batch_size: Positive integer, the smallest batch per update
            (batches are never smaller than the input's micro-batch).
        max_batch_size: Positive integer >= `min_batch_size`.
        lr_scaling: The learning-rate rule on a resize: `"linear"`,
            `"sqrt"`, `"none"` or a callable `ratio -> multiplier`.
        base_batch_size: Positive integer, the batch size the compiled
            learning rate is for; defaults to the input's micro-batch (the
            starting batch).
        keep_lr: Boolean; if True the learning rate is not rescaled on a
            resize (Smith et al.'s schedule holds it).
        measure_noise_scale: Boolean, or None (default) to measure the
            gradient noise scale only for the `"noise_scale"` and
            `"goodput"` policies.
        noise_scale_batch_size: Positive integer, the large batch of the
            two-batch estimator (a multiple of the micro-batch); defaults to
            4 micro-batches. The small batch is the micro-batch (per replica
            under a strategy, per device under a `DataParallel`: the
            gradients before the reduction are the small batches).
        noise_scale_batches: Positive integer, large batches measured at each
            epoch end (drawn beside the epoch's data).
        noise_scale_decay: Float in `[0, 1)`, the decay of the moving
            averages of the estimator's parts across epochs.
        seed: Optional integer, the seed of the measurement batches.
        verbose: 0 or 1; 1 prints each resize and its reason.
        **policy_kwargs: Arguments of the named policy, e.g.
            `schedule={10: 128}` or `monitor="val_loss", patience=2,
            factor=2`.

    Raises:
        ValueError: naming the argument: an unknown policy, bad bounds
            (`min_batch_size > max_batch_size`), an unknown `lr_scaling`, or
            bad policy arguments (a schedule giving sizes <= 0, a plateau
            `factor <= 1`, ...).
    """

    def __init__(
        self,
        policy,
        *,
        min_batch_size,
        max_batch_size,
        lr_scaling="linear",
        base_batch_size=None,
        keep_lr=False,
        measure_noise_scale=None,
        noise_scale_batch_size=None,
        noise_scale_batches=1,
        noise_scale_decay=0.5,
        seed=None,
        verbose=0,
        **policy_kwargs,
    ):
        super().__init__()
        space.check_batch_size_range(min_batch_size, max_batch_size)
        self.policy = policies.get_policy(policy, **policy_kwargs)
        self.policy.set_bounds(min_batch_size, max_batch_size)
        scaling.get_rule(lr_scaling)
        if base_batch_size is not None:
            scaling.check_positive_int("base_batch_size", base_batch_size)
        if noise_scale_batch_size is not None:
            scaling.check_positive_int(
                "noise_scale_batch_size", noise_scale_batch_size
            )
        scaling.check_positive_int("noise_scale_batches", noise_scale_batches)
        self.tracker = noise.NoiseScaleTracker(noise_scale_decay)
        if measure_noise_scale is None:
            measure_noise_scale = self.policy.name in ("noise_scale", "goodput")
        self.min_batch_size = int(min_batch_size)
        self.max_batch_size = int(max_batch_size)
        self.lr_scaling = lr_scaling
        self.base_batch_size = base_batch_size
        self.keep_lr = bool(keep_lr)
        self.measure_noise_scale = bool(measure_noise_scale)
        self.noise_scale_batch_size = noise_scale_batch_size
        self.noise_scale_batches = int(noise_scale_batches)
        self.seed = seed
        self.verbose = verbose
        self.batch_size = None
        self.lr_factor = 1.0
        self.batch_size_history = []
        self._base_learning_rate = None
        self._data = None
        self._probe = None

    # Keras hooks.

    def set_model(self, model):
        super().set_model(model)
        # Before any `on_train_begin`, so the optimizer has the same
        # variables as when `BackupAndRestore` saved it.
        if isinstance(
            getattr(model, "optimizer", None), keras.optimizers.Optimizer
        ):
            self._prepare(model)

    def on_train_begin(self, logs=None):
        data = resizable_data.last_used()
        if data is None:
            raise ValueError(_NOT_RESIZABLE.format(received=""))
        self._data = data
        micro = data.micro_batch_size
        if micro > self.max_batch_size:
            raise ValueError(
                f"The input's micro-batch ({micro}, the `batch_size` given "
                "to `resizable`) is larger than `max_batch_size`="
                f"{self.max_batch_size}."
            )
        self._prepare(self.model)
        self.policy.set_bounds(
            max(self.min_batch_size, micro), self.max_batch_size
        )
        if self._base_learning_rate is None:
            self._base_learning_rate = _current_learning_rate(
                self.model.optimizer
            )
        self._first_epoch = True
        self._verified = False
        self._epochs_begun = data.epochs_begun
        self._probe = None
        self._samples = None
        callback_list = fit_loop.find_caller(keras.callbacks.CallbackList)
        self._progress_bar = fit_loop.progress_bar_of(callback_list)

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:
            self._first_epoch = False
            self._begin(epoch)
        if self._data.physical:
            # The steps of this epoch, for the callbacks after this one.
            steps = self._data.num_batches
            self.params["steps"] = steps
            if self._progress_bar is not None:
                self._progress_bar.target = steps
        self._epoch_start = time.perf_counter()
        self._train_seconds = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._verified:
            return
        if self._data.epochs_begun <= self._epochs_begun:
            raise ValueError(
                _NOT_RESIZABLE.format(
                    received=" (this fit trains on other data)"
                )
            )
        self._verified = True

    def on_test_begin(self, logs=None):
        if self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._epoch_start

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = self._train_seconds
        if seconds is None:
            seconds = time.perf_counter() - self._epoch_start
        measurements = {
            policies.THROUGHPUT_KEY: self._data.examples_per_epoch
            / max(seconds, 1e-9)
        }
        if self.measure_noise_scale:
            estimate = self._measure_noise_scale()
            measurements[policies.NOISE_SCALE_KEY] = estimate
            b_simple = np.nan if estimate is None else estimate.b_simple
            logs[policies.NOISE_SCALE_KEY] = float(b_simple)
        logs[BATCH_SIZE_KEY] = self.batch_size
        logs[PHYSICAL_BATCH_SIZE_KEY] = self._data.batch_size
        logs[LEARNING_RATE_KEY] = coupling.current_learning_rate(
            self.model.optimizer
        )
        self.batch_size_history.append(self.batch_size)
        decision = self.policy.next_batch_size(
            epoch, self.batch_size, logs, measurements
        )
        self._resize(self._agreed(decision), epoch + 1)
        self._save_state()

    # The work.

    def _prepare(self, model):
        accumulation.prepare(model)
        optimizer = model.optimizer
        state = _state_variable_of(optimizer)
        if state is None:
            with accumulation.strategy_scope(model):
                state = optimizer.add_variable(
                    (_STATE_LENGTH,),
                    initializer="zeros",
                    dtype="int32",
                    name=_STATE_VARIABLE,
                )
        self._state_variable = state

    def _begin(self, epoch):
        micro = self._data.micro_batch_size
        if self.base_batch_size is None:
            self.base_batch_size = micro
        state = self._load_state() if epoch > 0 else None
        if state:
            self.batch_size = state["batch_size"]
            self.lr_factor = state["lr_factor"]
            self.batch_size_history = state["history"]
            self.base_batch_size = state["base_batch_size"]
            if state["policy"] == type(self.policy).__name__:
                self.policy.set_state(state["policy_state"])
            if state.get("tracker"):
                self.tracker.set_state(state["tracker"])
            start = self.batch_size
        else:
            self.batch_size = micro
            start = micro
        decision = self.policy.begin(epoch, self._nearest(start))
        self._resize(self._agreed(decision), epoch, force=True)

    def _agreed(self, decision):
        """The first worker's (or host's) decision, on every one of them.

        A policy may decide from numbers that differ between workers of a
        multi-worker strategy or hosts of a JAX cluster (a noise-scale
        probe of local data); every one must resize alike.
        """
        strategy = distribute.model_strategy(self.model)
        values = (decision.batch_size, decision.lr_factor)
        if distribute.is_multi_worker(strategy):
            values = distribute.first_worker_values(strategy, values)
        else:
            values = distribute.agree_across_hosts(values)
        batch_size, lr_factor = values
        return decision._replace(
            batch_size=int(batch_size), lr_factor=lr_factor
        )

    def _nearest(self, batch_size):
        """The multiple of the micro-batch nearest `batch_size`, in range."""
        micro = self._data.micro_batch_size
        steps = max(1, int(round(batch_size / micro)))
        steps = min(steps, self.max_batch_size // micro)
        return steps * micro

    def _resize(self, decision, epoch, force=False):
        new_batch_size = self._nearest(decision.batch_size)
        old_batch_size = self.batch_size
        self.lr_factor *= float(decision.lr_factor)
        changed = force or new_batch_size != old_batch_size
        if self.verbose and (
            new_batch_size != old_batch_size or decision.lr_factor != 1.0
        ):
            reason = f" ({decision.reason})" if decision.reason else ""
            print(
                f"\nDynamicBatchSize: epoch {epoch + 1}: batch size "
                f"{old_batch_size} -> {new_batch_size}{reason}."
            )
        self.batch_size = new_batch_size
        optimizer = self.model.optimizer
        physical_batch_size, steps = self._data.plan(new_batch_size)
        self._data.set_physical_batch_size(physical_batch_size)
        retrace = False
        if steps != accumulation.accumulation_steps(optimizer):
            accumulation.set_accumulation_steps(optimizer, steps)
            retrace = True
        if changed or decision.lr_factor != 1.0:
            retrace |= self._set_learning_rate(steps)
        if retrace:
            self.model.make_train_function(force=True)

    def _set_learning_rate(self, steps):
        """Sets the coupled learning rate; True if a retrace is needed."""
        multiplier = self.lr_factor
        if not self.keep_lr:
            multiplier *= scaling.learning_rate_multiplier(
                self.batch_size, self.base_batch_size, self.lr_scaling
            )
        base = self._base_learning_rate
        coupling.set_learning_rate_multiplier(
            self.model.optimizer, base, multiplier, steps_per_update=steps
        )
        # A schedule is read when the train step is traced.
        return isinstance(base, keras.optimizers.schedules.LearningRateSchedule)

    def _measure_noise_scale(self):
        micro = self._data.micro_batch_size
        strategy = distribute.model_strategy(self.model)
        # Per replica (`tf.distribute`) or per device (a `DataParallel`).
        small = micro // (
            distribute.num_replicas(strategy) * self._data.devices
        )
        large = self.noise_scale_batch_size or 4 * micro
        if self._probe is None:
            from keras_batchtune import gradients

            self._probe = gradients.GradientNoiseProbe(
                self.model, small_batch_size=small, large_batch_size=large
            )
            self._samples = self._data.sample_batches(large, seed=self.seed)
        for _ in range(self.noise_scale_batches):
            small_sq, large_sq = self._probe(*next(self._samples))
            self.tracker.update(small_sq, large_sq, small, large)
        return self.tracker.result()

    def _save_state(self):
        state = {
            "batch_size": self.batch_size,
            "lr_factor": self.lr_factor,
            "base_batch_size": self.base_batch_size,
            "history": self.batch_size_history,
            "policy": type(self.policy).__name__,
            "policy_state": self.policy.get_state(),
            "tracker": self.tracker.get_state(),
        }
        encoded = json.dumps(state).encode()
        if len(encoded) >= _STATE_LENGTH:
            # Keep what resuming needs most; drop the history.
            state["history"] = []
            encoded = json.dumps(state).encode()
        values = np.zeros(_STATE_LENGTH, "int32")
        values[0] = len(encoded)
        values[1 : len(encoded) + 1] = np.frombuffer(encoded, "uint8")
        self._state_variable.assign(values)

    def _load_state(self):
        values = keras.ops.convert_to_numpy(self._state_variable)
        length = int(values[0])
        if length <= 0:
            return None
        encoded = values[1 : length + 1].astype("uint8").tobytes()
        return json.loads(encoded.decode())


def _state_variable_of(optimizer):
    """The callback's state variable among an optimizer's, or None."""
    for variable in optimizer.variables:
        if variable.name == _STATE_VARIABLE:
            return variable
    return None


def _current_learning_rate(optimizer):
    """The optimizer's learning rate: a float, or its schedule object."""
    learning_rate = coupling.learning_rate_object(optimizer)
    if isinstance(
        learning_rate, keras.optimizers.schedules.LearningRateSchedule
    ):
        return learning_rate
    return coupling.get_base_learning_rate(optimizer)
