"""Applying a learning-rate multiplier (and warmup) to a Keras optimizer.

Also picks the rule of `lr_scaling="auto"` from the optimizer and sets the
coupled weight decay (`keras_batchtune.optimizer_rules` holds the maths).
Written with `keras.ops` only, so it runs on every Keras backend.
"""

import keras

from keras_batchtune import optimizer_rules
from keras_batchtune import scaling
from keras_batchtune.backend import keras_internals

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


def _to_float(value):
    # Read through a tensor: numpy 2 warns on `keras.Variable.__array__`, and
    # a `tf.distribute` variable's own value (in a strategy's scope) is not
    # an array.
    if isinstance(value, keras.Variable):
        value = keras.ops.convert_to_tensor(value)
    return float(keras.ops.convert_to_numpy(value))


def inner_optimizer(optimizer):
    """The optimizer that holds the learning rate.

    A `keras.optimizers.LossScaleOptimizer` (mixed precision) wraps the one
    whose learning rate is applied; any other optimizer is its own.

    Example:

    ```python
    inner_optimizer(keras.optimizers.LossScaleOptimizer(sgd)) is sgd  # True
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer`, or anything else.

    Returns:
        The wrapped optimizer, or `optimizer` itself.
    """
    return getattr(optimizer, "inner_optimizer", optimizer)


def learning_rate_object(optimizer):
    """What an optimizer reads its learning rate from, not evaluated.

    Example:

    ```python
    learning_rate_object(keras.optimizers.SGD(schedule)) is schedule  # True
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer` (or a loss-scale wrapper).

    Returns:
        The `keras.Variable` of a float learning rate, or the
        `LearningRateSchedule` (or callable) the optimizer was given.
    """
    return keras_internals.optimizer_learning_rate(inner_optimizer(optimizer))


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
    learning_rate = inner_optimizer(optimizer).learning_rate
    return _to_float(learning_rate)


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
    inner = inner_optimizer(optimizer)
    if not isinstance(inner, keras.optimizers.Optimizer):
        raise ValueError(
            "BatchTuner couples the learning rate to the batch size, so the "
            "model must be compiled with a `keras.optimizers.Optimizer` whose "
            "`learning_rate` is a float or a `LearningRateSchedule`. "
            f"Received: optimizer={optimizer!r}"
        )
    learning_rate = learning_rate_object(inner)
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
    return _to_float(learning_rate)


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
    return _to_float(learning_rate)


def uses_schedule(base_learning_rate, warmup_steps=0):
    """Whether the coupled optimizer holds a schedule rather than a float.

    A float base without warmup is assigned as a float (the optimizer keeps
    a plain, settable learning rate, one of its variables); a schedule base,
    or any warmup, installs a `ScaledLearningRate` (no learning-rate
    variable). The optimizer's saved state differs accordingly.

    Example:

    ```python
    uses_schedule(0.1)  # False
    uses_schedule(0.1, warmup_steps=10)  # True
    ```

    Args:
        base_learning_rate: A float or a `LearningRateSchedule`.
        warmup_steps: Non-negative integer, in optimizer updates.

    Returns:
        A boolean.
    """
    return isinstance(base_learning_rate, _Schedule) or warmup_steps > 0


def set_learning_rate_multiplier(
    optimizer,
    base_learning_rate,
    multiplier,
    warmup_steps=0,
    steps_per_update=1,
    as_schedule=False,
):
    """Sets `base_learning_rate * multiplier` on an optimizer, with warmup.

    A float base without warmup is assigned as a float, so the optimizer keeps
    a plain, settable learning rate; otherwise a `ScaledLearningRate` schedule
    is installed (see `uses_schedule`).

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
        as_schedule: Boolean; if True, a `ScaledLearningRate` is installed
            even for a float base without warmup (to match the saved state
            of an optimizer that trained with warmup).

    Returns:
        The effective learning rate after warmup (at step 0 for a schedule),
        a float.
    """
    inner = inner_optimizer(optimizer)
    if as_schedule or uses_schedule(base_learning_rate, warmup_steps):
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


def optimizer_class_names(optimizer):
    """The class names of the optimizer that applies the updates.

    Example:

    ```python
    optimizer_class_names(keras.optimizers.AdamW())[:2]  # ["AdamW", "Adam"]
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer` (or a loss-scale wrapper,
            whose inner optimizer is named).

    Returns:
        The names of its class and base classes, most derived first.
    """
    return [cls.__name__ for cls in type(inner_optimizer(optimizer)).__mro__]


def resolve_lr_scaling(optimizer, lr_scaling):
    """The rule a trial trains with, and the one its optimizer suits.

    Example:

    ```python
    resolve_lr_scaling(keras.optimizers.Adam(), "auto")  # ("sqrt", "sqrt")
    resolve_lr_scaling(keras.optimizers.Adam(), "linear")
    # ("linear", "sqrt")
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer`.
        lr_scaling: `"auto"`, a rule name or a callable.

    Returns:
        `(rule, optimizer_rule)`: the rule to apply (`lr_scaling` itself
        unless it is `"auto"`), and the one `"auto"` picks for this optimizer
        (None if it is not in `keras_batchtune.optimizer_rules`' table).

    Raises:
        ValueError: naming `lr_scaling`, if it is `"auto"` and the optimizer
            is not in the table.
    """
    names = optimizer_class_names(optimizer)
    rule = optimizer_rules.resolve(lr_scaling, names)
    return rule, optimizer_rules.rule_for_optimizer(names)


def get_weight_decay(optimizer):
    """Reads an optimizer's decoupled weight decay, checked.

    Keras 3 applies `weight_decay` decoupled from the gradient for every
    optimizer that sets it (`w <- w - lr * weight_decay * w`); an optimizer
    whose `weight_decay` is None or 0 has none to couple.

    Example:

    ```python
    get_weight_decay(keras.optimizers.AdamW(weight_decay=0.01))  # 0.01
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer` (or a loss-scale wrapper).

    Returns:
        A float > 0.

    Raises:
        ValueError: naming `couple_weight_decay`, if the optimizer has no
            weight decay.
    """
    weight_decay = getattr(inner_optimizer(optimizer), "weight_decay", None)
    if isinstance(weight_decay, keras.Variable):
        weight_decay = _to_float(weight_decay)
    return optimizer_rules.check_weight_decay(weight_decay)


def set_weight_decay(optimizer, weight_decay):
    """Sets the decoupled weight decay an optimizer applies from now on.

    Keras reads `weight_decay` when it traces the train step, so set it
    before `fit`.

    Example:

    ```python
    set_weight_decay(optimizer, 0.02)
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer` (or a loss-scale wrapper).
        weight_decay: Positive float.

    Returns:
        `weight_decay`, a float.
    """
    inner_optimizer(optimizer).weight_decay = float(weight_decay)
    return float(weight_decay)
