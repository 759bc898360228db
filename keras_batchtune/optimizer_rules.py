"""Which learning-rate rule suits which optimizer, and the weight decay.

Pure Python: no framework import. `lr_scaling="auto"` looks the optimizer
up in `OPTIMIZER_RULES` by class name (its own, then its base classes', so
a subclass of `Adam` counts as Adam):

- `"linear"` for SGD, with or without (Nesterov) momentum: Goyal et al.
  2017, arXiv 1706.02677; Smith & Le 2017, arXiv 1710.06451.
- `"sqrt"` for the adaptive optimizers (Adam, AdamW, Adamax, Nadam,
  RMSprop, Adagrad, Adadelta, Adafactor, Ftrl, Lion, Lamb): the SDE
  analysis of adaptive methods gives a square-root rule (Malladi et al.
  2022, arXiv 2205.10287); past a peak batch near the noise scale the best
  learning rate of Adam-like optimizers even falls again (Li et al. 2024,
  arXiv 2405.14578), so a rule is a prior the search confirms.

The weight decay: Keras applies `weight_decay` decoupled from the gradient
(`w <- w - lr * weight_decay * w` before each update, for every optimizer
that sets it), so one epoch shrinks the weights with the timescale
`tau = B / (lr * weight_decay * N)` epochs (`N` examples, batch `B`).
Bergsma et al. 2025 ("Power Lines", arXiv 2505.13738) find that this AdamW
timescale is what should stay fixed when the batch changes. When the batch
grows by `k = B / base_batch_size` and the rule multiplies the learning
rate by `s(k)`, the weight decay is multiplied by `k / s(k)`: `sqrt(k)`
under `"sqrt"`, `1` under `"linear"`, `k` under `"none"`.
"""

import math
import numbers

from keras_batchtune import scaling

AUTO = "auto"
"""The `lr_scaling` value that picks the rule from the optimizer."""

LINEAR = "linear"
SQRT = "sqrt"

OPTIMIZER_RULES = {
    "SGD": LINEAR,
    "Adam": SQRT,
    "AdamW": SQRT,
    "Adamax": SQRT,
    "Nadam": SQRT,
    "RMSprop": SQRT,
    "Adagrad": SQRT,
    "Adadelta": SQRT,
    "Adafactor": SQRT,
    "Ftrl": SQRT,
    "Lion": SQRT,
    "Lamb": SQRT,
}
"""Optimizer class name -> the rule `lr_scaling="auto"` picks for it."""

RULE_EXPONENTS = {"linear": 1.0, "sqrt": 0.5, "none": 0.0}
"""The named rules as powers: the multiplier is `ratio ** exponent`."""

CITATIONS = {
    LINEAR: "Goyal et al. 2017, arXiv 1706.02677",
    SQRT: "Malladi et al. 2022, arXiv 2205.10287",
}


def check_lr_scaling(lr_scaling):
    """Checks an `lr_scaling` that may be `"auto"`.

    Example:

    ```python
    check_lr_scaling("auto")  # "auto"
    ```

    Args:
        lr_scaling: `"auto"`, `"linear"`, `"sqrt"`, `"none"`, or a callable
            `ratio -> multiplier`.

    Returns:
        `lr_scaling`.

    Raises:
        ValueError: naming `lr_scaling`, if it is none of those.
    """
    if lr_scaling == AUTO or callable(lr_scaling):
        return lr_scaling
    if isinstance(lr_scaling, str) and lr_scaling in scaling.LR_SCALING_RULES:
        return lr_scaling
    allowed = (AUTO,) + tuple(scaling.LR_SCALING_RULES)
    raise ValueError(
        "`lr_scaling` must be one of "
        f"{', '.join(repr(r) for r in allowed)} or a callable "
        f"`ratio -> multiplier`. Received: lr_scaling={lr_scaling!r}"
    )


def rule_for_optimizer(class_names):
    """The rule `lr_scaling="auto"` picks for an optimizer, or None.

    Example:

    ```python
    rule_for_optimizer(["AdamW", "Adam", "Optimizer"])  # "sqrt"
    rule_for_optimizer(["SGD"])  # "linear"
    rule_for_optimizer(["MyOptimizer", "Optimizer"])  # None
    ```

    Args:
        class_names: The names of the optimizer's class and of its base
            classes, most derived first (the names of its class's MRO).

    Returns:
        `"linear"`, `"sqrt"`, or None if no name is in `OPTIMIZER_RULES`.
    """
    for name in class_names:
        if name in OPTIMIZER_RULES:
            return OPTIMIZER_RULES[name]
    return None


def resolve(lr_scaling, class_names):
    """The rule a trial trains with: `lr_scaling`, or the table's for auto.

    Example:

    ```python
    resolve("auto", ["Adam"])  # "sqrt"
    resolve("linear", ["Adam"])  # "linear" (the user knows best)
    ```

    Args:
        lr_scaling: A value accepted by `check_lr_scaling`.
        class_names: The optimizer's class names, most derived first.

    Returns:
        The rule: a name or a callable.

    Raises:
        ValueError: naming `lr_scaling`, if it is `"auto"` and the optimizer
            is not in the table.
    """
    if lr_scaling != AUTO:
        return lr_scaling
    rule = rule_for_optimizer(class_names)
    if rule is None:
        name = next(iter(class_names), "?")
        known = ", ".join(sorted(OPTIMIZER_RULES))
        raise ValueError(
            f"`lr_scaling='auto'` has no rule for the optimizer {name} (it "
            f"knows {known}); pass `lr_scaling='linear'` or `'sqrt'` (or a "
            "callable) instead."
        )
    return rule


def rule_exponent(rule):
    """The power of a named rule (`ratio ** exponent`), or None.

    Example:

    ```python
    rule_exponent("sqrt")  # 0.5
    ```

    Args:
        rule: A rule name or a callable.

    Returns:
        1.0 for `"linear"`, 0.5 for `"sqrt"`, 0.0 for `"none"`; None for a
        callable.
    """
    if isinstance(rule, str):
        return RULE_EXPONENTS.get(rule)
    return None


def rule_from_exponent(exponent):
    """The named rule of a recorded exponent, or None.

    Example:

    ```python
    rule_from_exponent(0.5)  # "sqrt"
    ```

    Args:
        exponent: A number, as `rule_exponent` returned it.

    Returns:
        `"linear"`, `"sqrt"`, `"none"`, or None.
    """
    for name, value in RULE_EXPONENTS.items():
        if exponent is not None and math.isclose(exponent, value):
            return name
    return None


def weight_decay_multiplier(batch_size, base_batch_size, rule="linear"):
    """The factor that keeps the AdamW timescale fixed under a rule.

    `tau = B / (lr * weight_decay * N)` stays fixed when the batch grows by
    `k = batch_size / base_batch_size` and the learning rate by `s(k)` if the
    weight decay is multiplied by `k / s(k)` (Bergsma et al. 2025, arXiv
    2505.13738).

    Example:

    ```python
    weight_decay_multiplier(128, 32, "sqrt")  # 2.0
    weight_decay_multiplier(128, 32, "linear")  # 1.0
    ```

    Args:
        batch_size: Positive integer, the (global) batch size of the trial.
        base_batch_size: Positive integer, the reference batch size.
        rule: `"linear"`, `"sqrt"`, `"none"` or a callable (not `"auto"`:
            resolve it first).

    Returns:
        A positive float.

    Raises:
        ValueError: as `keras_batchtune.scale_learning_rate`, naming the
            argument.
    """
    lr_multiplier = scaling.learning_rate_multiplier(
        batch_size, base_batch_size, rule
    )
    return (batch_size / base_batch_size) / lr_multiplier


def check_weight_decay(weight_decay):
    """Checks that an optimizer has a decoupled weight decay to couple.

    Example:

    ```python
    check_weight_decay(0.004)  # 0.004
    ```

    Args:
        weight_decay: The optimizer's `weight_decay`.

    Returns:
        It, as a float.

    Raises:
        ValueError: naming `couple_weight_decay`, if it is None, zero, or not
            a finite positive number.
    """
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, numbers.Real)
        or not math.isfinite(weight_decay)
        or weight_decay <= 0
    ):
        raise ValueError(
            "`couple_weight_decay=True` scales the optimizer's decoupled "
            "weight decay, but the optimizer has none (weight_decay="
            f"{weight_decay!r}). Set `weight_decay` on the optimizer (e.g. "
            "`keras.optimizers.AdamW(weight_decay=0.004)` or "
            "`keras.optimizers.SGD(weight_decay=1e-4)`), or leave "
            "`couple_weight_decay=False`."
        )
    return float(weight_decay)


def scale_weight_decay(weight_decay, batch_size, base_batch_size, rule):
    """Rescales a decoupled weight decay so the AdamW timescale stays fixed.

    Example:

    ```python
    scale_weight_decay(0.01, 128, 32, "sqrt")  # 0.02
    ```

    Args:
        weight_decay: Positive float, the weight decay at `base_batch_size`.
        batch_size: Positive integer, the batch size to scale to.
        base_batch_size: Positive integer, the reference batch size.
        rule: The learning-rate rule (a name or a callable, not `"auto"`).

    Returns:
        `weight_decay * k / s(k)`, a float.

    Raises:
        ValueError: naming `couple_weight_decay` for a missing weight decay,
            or the argument at fault otherwise.
    """
    return check_weight_decay(weight_decay) * weight_decay_multiplier(
        batch_size, base_batch_size, rule
    )


def adamw_timescale(batch_size, learning_rate, weight_decay, num_examples):
    """The AdamW timescale `B / (lr * weight_decay * N)`, in epochs.

    Example:

    ```python
    adamw_timescale(32, 1e-3, 0.1, 60_000)  # 5.33...
    ```

    Args:
        batch_size: The batch size `B`.
        learning_rate: The learning rate.
        weight_decay: The decoupled weight decay.
        num_examples: The examples per epoch `N`.

    Returns:
        A float.
    """
    return batch_size / (learning_rate * weight_decay * num_examples)


def mismatch_notice(mismatches):
    """The `results_summary` note on rules that do not fit the optimizer.

    Example:

    ```python
    mismatch_notice([("0", "linear", "sqrt"), ("2", "linear", "sqrt")])
    # "Note: trials 0, 2 scaled the learning rate with lr_scaling='linear'
    #  but their optimizer usually wants 'sqrt' ..."
    ```

    Args:
        mismatches: `(trial_id, rule_used, rule_for_optimizer)` tuples, one
            per trial whose named rule differs from its optimizer's.

    Returns:
        One line per pair of rules, joined by newlines; None if none.
    """
    by_pair = {}
    for trial_id, used, wanted in mismatches:
        by_pair.setdefault((used, wanted), []).append(str(trial_id))
    lines = []
    for (used, wanted), trial_ids in by_pair.items():
        kind = (
            "SGD-like optimizers"
            if wanted == LINEAR
            else "Adam-like (adaptive) optimizers"
        )
        noun = "trial" if len(trial_ids) == 1 else "trials"
        lines.append(
            f"Note: {noun} {', '.join(trial_ids)} scaled the learning rate "
            f"with lr_scaling={used!r}, which does not fit the optimizer: "
            f"{kind} usually want {wanted!r} ({CITATIONS[wanted]}); "
            "lr_scaling='auto' picks it."
        )
    return "\n".join(lines) or None
