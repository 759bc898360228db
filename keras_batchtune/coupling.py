"""Applying a learning-rate multiplier (and warmup) to a Keras optimizer.

Written with `keras.ops` only, so it runs on every Keras backend.
"""

import keras

from keras_batchtune import scaling

_Schedule = keras.optimizers.schedules.LearningRateSchedule


@keras.saving.register_keras_serializable(package="keras_batchtune")
class ScaledLearningRate(_Schedule):
    """A learning rate multiplied by a constant, after an optional warmup.

    `lr(step) = base(step) * m(step)`, where `m` ramps linearly from 1 to
    `multiplier` over `warmup_steps` optimizer updates and then stays at
    `multiplier` (Goyal et al. 2017's gradual warmup). With gradient
    accumulation Keras evaluates schedules at every micro-step; with
    `steps_per_update=k` the step is counted in updates (`step // k`), so the
    base schedule and the warmup advance once per update.

    Example:

    ```python
    schedule = ScaledLearningRate(0.1, multiplier=8.0, warmup_steps=100)
    optimizer = keras.optimizers.SGD(schedule)
    ```

    Args:
        base: A float, or a `LearningRateSchedule`, the learning rate at the
            reference batch size.
        multiplier: Positive float, the factor of the scaling rule.
        warmup_steps: Non-negative integer, the optimizer updates over which
            the multiplier ramps up from 1.
        steps_per_update: Positive integer, the micro-steps per update (the
            optimizer's `gradient_accumulation_steps`, or 1).
    """

    def __init__(self, base, multiplier, warmup_steps=0, steps_per_update=1):
        self.base = base
        self.multiplier = float(multiplier)
        self.warmup_steps = int(warmup_steps)
        self.steps_per_update = int(steps_per_update)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.steps_per_update > 1:
            step = keras.ops.floor(step / float(self.steps_per_update))
        if isinstance(self.base, _Schedule):
            base = keras.ops.cast(self.base(step), "float32")
        else:
            base = keras.ops.convert_to_tensor(self.base, "float32")
        if self.warmup_steps <= 0:
            return base * self.multiplier
        progress = keras.ops.minimum(step / float(self.warmup_steps), 1.0)
        return base * (1.0 + (self.multiplier - 1.0) * progress)

    def get_config(self):
        base = self.base
        if isinstance(base, _Schedule):
            base = keras.optimizers.schedules.serialize(base)
        return {
            "base": base,
            "multiplier": self.multiplier,
            "warmup_steps": self.warmup_steps,
            "steps_per_update": self.steps_per_update,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["base"], dict):
            config["base"] = keras.optimizers.schedules.deserialize(
                config["base"]
            )
        return cls(**config)


def _inner_optimizer(optimizer):
    # A LossScaleOptimizer (mixed precision) holds the real learning rate.
    return getattr(optimizer, "inner_optimizer", optimizer)


def current_learning_rate(optimizer):
    """The learning rate an optimizer applies at its current step.

    Example:

    ```python
    current_learning_rate(keras.optimizers.SGD(0.1))  # 0.1
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer` (or a loss-scale wrapper).

    Returns:
        A float: the value of its float learning rate, or of its schedule at
        the optimizer's current step.
    """
    learning_rate = _inner_optimizer(optimizer).learning_rate
    return float(keras.ops.convert_to_numpy(learning_rate))


def get_base_learning_rate(optimizer):
    """Reads the learning rate an optimizer was created with.

    Example:

    ```python
    get_base_learning_rate(keras.optimizers.SGD(0.1))  # 0.1
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer`.

    Returns:
        A float, or the `LearningRateSchedule` the optimizer was given.

    Raises:
        ValueError: if the optimizer has no settable learning rate.
    """
    inner = _inner_optimizer(optimizer)
    if not isinstance(inner, keras.optimizers.Optimizer) or not hasattr(
        inner, "_learning_rate"
    ):
        raise ValueError(
            "BatchTuner couples the learning rate to the batch size, so the "
            "model must be compiled with a `keras.optimizers.Optimizer` whose "
            "`learning_rate` is a float or a `LearningRateSchedule`. "
            f"Received: optimizer={optimizer!r}"
        )
    learning_rate = inner._learning_rate
    if isinstance(learning_rate, ScaledLearningRate):
        return learning_rate.base
    if isinstance(learning_rate, _Schedule):
        return learning_rate
    if callable(learning_rate) and not hasattr(learning_rate, "numpy"):
        raise ValueError(
            "BatchTuner cannot rescale a learning rate given as a plain "
            "callable; use a float or a `LearningRateSchedule`. "
            f"Received: learning_rate={learning_rate!r}"
        )
    return float(keras.ops.convert_to_numpy(learning_rate))


def initial_value(learning_rate):
    """Returns a float learning rate, or a schedule's value at step 0.

    Example:

    ```python
    initial_value(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5))
    # 0.1
    ```

    Args:
        learning_rate: A float or a `LearningRateSchedule`.

    Returns:
        A float.
    """
    if isinstance(learning_rate, _Schedule):
        learning_rate = learning_rate(0)
    return float(keras.ops.convert_to_numpy(learning_rate))


def set_learning_rate_multiplier(
    optimizer,
    base_learning_rate,
    multiplier,
    warmup_steps=0,
    steps_per_update=1,
):
    """Sets `base_learning_rate * multiplier` on an optimizer, with warmup.

    A float base without warmup is assigned as a float, so the optimizer keeps
    a plain, settable learning rate; otherwise a `ScaledLearningRate` schedule
    is installed.

    Example:

    ```python
    optimizer = keras.optimizers.SGD(0.1)
    set_learning_rate_multiplier(optimizer, 0.1, 8.0)  # returns 0.8
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer`.
        base_learning_rate: What `get_base_learning_rate` returned for it.
        multiplier: Positive float.
        warmup_steps: Non-negative integer, in optimizer updates.
        steps_per_update: Micro-steps per update, with gradient accumulation.

    Returns:
        The effective learning rate after warmup (at step 0 for a schedule),
        a float.
    """
    inner = _inner_optimizer(optimizer)
    if isinstance(base_learning_rate, _Schedule) or warmup_steps > 0:
        inner.learning_rate = ScaledLearningRate(
            base_learning_rate, multiplier, warmup_steps, steps_per_update
        )
    else:
        inner.learning_rate = base_learning_rate * multiplier
    return initial_value(base_learning_rate) * multiplier


def couple_learning_rate(
    optimizer, batch_size, base_batch_size, rule="linear", warmup_steps=0
):
    """Rescales an optimizer's learning rate for a batch size, in place.

    Example:

    ```python
    model.compile(keras.optimizers.SGD(0.1), "mse")
    couple_learning_rate(model.optimizer, 256, 32)  # 0.8
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer` holding the learning rate
            chosen for `base_batch_size`.
        batch_size: Positive integer, the global batch size to train with.
        base_batch_size: Positive integer, the reference batch size.
        rule: A rule accepted by `keras_batchtune.scale_learning_rate`.
        warmup_steps: Optimizer steps of linear warmup from the base learning
            rate to the scaled one.

    Returns:
        The effective learning rate, a float.

    Raises:
        ValueError: if the optimizer has no settable learning rate, or the
            sizes or the rule are invalid.
    """
    base = get_base_learning_rate(optimizer)
    multiplier = scaling.learning_rate_multiplier(
        batch_size, base_batch_size, rule
    )
    return set_learning_rate_multiplier(
        optimizer, base, multiplier, warmup_steps
    )
