"""Learning-rate scaling rules that couple the learning rate to the batch size.

Pure Python: no TensorFlow or Keras import, so the maths can be reused and
tested on every Keras backend.

The rules (a rule maps the batch ratio `r = batch_size / base_batch_size` to a
learning-rate multiplier):

- `"linear"`: `r` (Goyal et al. 2017, arXiv 1706.02677; holds up to the
  critical batch size, McCandlish et al. 2018, arXiv 1812.06162).
- `"sqrt"`: `sqrt(r)` (Krizhevsky 2014, arXiv 1404.5997; Hoffer et al. 2017,
  arXiv 1705.08741; the SDE rule for Adam, Malladi et al. 2022,
  arXiv 2205.10287).
- `"none"`: `1`, the learning rate is left as it is.
- a callable `r -> multiplier`, for any other rule.
"""

import math
import numbers

LR_SCALING_RULES = ("linear", "sqrt", "none")
"""The names of the built-in rules; `lr_scaling` also takes a callable."""

_RULES = {
    "linear": lambda ratio: ratio,
    "sqrt": math.sqrt,
    "none": lambda ratio: 1.0,
}


def check_positive_int(name, value):
    """Checks that `value` is a positive integer (not a bool).

    Example:

    ```python
    check_positive_int("batch_size", 32)  # returns 32
    ```

    Args:
        name: String, the argument name used in the error message.
        value: The value to check.

    Returns:
        The value, as an `int`.

    Raises:
        ValueError: if `value` is not an integer greater than zero.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
    ):
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}"
        )
    return int(value)


def get_rule(rule):
    """Returns the multiplier function of a learning-rate scaling rule.

    Example:

    ```python
    get_rule("sqrt")(4.0)  # 2.0
    ```

    Args:
        rule: One of `"linear"`, `"sqrt"`, `"none"`, or a callable mapping the
            batch ratio to a learning-rate multiplier.

    Returns:
        A callable `ratio -> multiplier`.

    Raises:
        ValueError: if `rule` is neither a known name nor a callable.
    """
    if callable(rule):
        return rule
    if isinstance(rule, str) and rule in _RULES:
        return _RULES[rule]
    raise ValueError(
        "`lr_scaling` must be one of "
        f"{', '.join(repr(r) for r in LR_SCALING_RULES)} or a callable "
        f"`ratio -> multiplier`. Received: lr_scaling={rule!r}"
    )


def learning_rate_multiplier(batch_size, base_batch_size, rule="linear"):
    """Returns the factor a rule applies to the learning rate at a batch size.

    Example:

    ```python
    learning_rate_multiplier(256, 32, "linear")  # 8.0
    learning_rate_multiplier(128, 32, "sqrt")  # 2.0
    ```

    Args:
        batch_size: Positive integer, the (global) batch size of the run.
        base_batch_size: Positive integer, the batch size the base learning
            rate was chosen for.
        rule: `"linear"`, `"sqrt"`, `"none"` or a callable
            `ratio -> multiplier`.

    Returns:
        A positive float.

    Raises:
        ValueError: if a size is not a positive integer, the rule is unknown,
            or the rule returns a value that is not a finite number > 0.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    base_batch_size = check_positive_int("base_batch_size", base_batch_size)
    ratio = batch_size / base_batch_size
    multiplier = get_rule(rule)(ratio)
    if (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, numbers.Real)
        or not math.isfinite(multiplier)
        or multiplier <= 0
    ):
        raise ValueError(
            "`lr_scaling` must return a finite number > 0 for every batch "
            f"ratio. Received: lr_scaling({ratio!r}) = {multiplier!r} "
            f"(batch_size={batch_size}, base_batch_size={base_batch_size})"
        )
    return float(multiplier)


def scale_learning_rate(lr, batch_size, base_batch_size, rule="linear"):
    """Rescales a learning rate chosen at one batch size to another.

    The result is `lr * s(batch_size / base_batch_size)`, `s` being the rule.

    Example:

    ```python
    import keras_batchtune

    keras_batchtune.scale_learning_rate(0.1, 256, 32)  # 0.8
    keras_batchtune.scale_learning_rate(1e-3, 128, 32, rule="sqrt")  # 0.002
    keras_batchtune.scale_learning_rate(0.1, 64, 32, rule=lambda r: r**0.8)
    ```

    Args:
        lr: Positive float, the learning rate at `base_batch_size`.
        batch_size: Positive integer, the batch size to scale to.
        base_batch_size: Positive integer, the reference batch size.
        rule: `"linear"` (default), `"sqrt"`, `"none"`, or a callable mapping
            the ratio `batch_size / base_batch_size` to a multiplier.

    Returns:
        The scaled learning rate, a float.

    Raises:
        ValueError: if `lr` is not a finite number > 0, a batch size is not a
            positive integer, or the rule is unknown or returns a value <= 0.
    """
    if (
        isinstance(lr, bool)
        or not isinstance(lr, numbers.Real)
        or not math.isfinite(lr)
        or lr <= 0
    ):
        raise ValueError(
            f"`lr` must be a finite number > 0. Received: lr={lr!r}"
        )
    return float(lr) * learning_rate_multiplier(
        batch_size, base_batch_size, rule
    )


def warmup_multiplier(step, warmup_steps, multiplier):
    """Returns the learning-rate factor at a step of a linear warmup.

    The factor ramps linearly from 1 (the base learning rate) at step 0 to
    `multiplier` (the scaled learning rate) at `warmup_steps`, and stays there
    (Goyal et al. 2017, "gradual warmup").

    Example:

    ```python
    warmup_multiplier(50, 100, 8.0)  # 4.5
    ```

    Args:
        step: Non-negative number, the optimizer step.
        warmup_steps: Non-negative number of warmup steps; 0 means none.
        multiplier: The factor reached at the end of the warmup.

    Returns:
        A float between 1 and `multiplier`.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(multiplier)
    return 1.0 + (multiplier - 1.0) * (step / warmup_steps)
