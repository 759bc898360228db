"""Asynchronous successive halving: which configuration trains longer next.

Successive halving (Jamieson & Talwalkar 2016; Li et al., Hyperband, 2018)
trains many configurations on a small budget and gives a larger one only to
the best of them. Its asynchronous form (ASHA, Li et al. 2020, arXiv
1810.05934) fits KerasTuner's one-trial-at-a-time oracle and its distributed
workers: whenever a trial is asked for, the best configuration not yet
promoted from the highest possible rung is promoted (top `1 / factor` of
that rung's finished trials), and otherwise a new configuration starts on
the smallest budget. Budgets are epochs, so every configuration of a rung
sees the same number of examples, and larger batches make cheaper trials.
A promoted trial can start from the weights its configuration reached on
the lower rung and train only the epochs in between (as KerasTuner's
Hyperband does), so a promotion costs the difference of the budgets.

Pure Python: no TensorFlow.
"""

from keras_batchtune import scaling

DEFAULT_FACTOR = 3
DEFAULT_MIN_EPOCHS = 1
DEFAULT_WARM_START = True


def check_successive_halving(successive_halving):
    """Checks the `successive_halving` argument of `BatchTuner`.

    Example:

    ```python
    check_successive_halving(True)
    # {"factor": 3, "min_epochs": 1, "warm_start": True}
    check_successive_halving({"factor": 2, "warm_start": False})
    # {"factor": 2, "min_epochs": 1, "warm_start": False}
    ```

    Args:
        successive_halving: None or False (off), True (the defaults), or a
            dict with optional keys `factor` (integer >= 2), `min_epochs`
            (integer >= 1) and `warm_start` (bool).

    Returns:
        None, or a dict with the three keys.

    Raises:
        ValueError: naming the argument and the allowed values.
    """
    if successive_halving is None or successive_halving is False:
        return None
    if successive_halving is True:
        successive_halving = {}
    if not isinstance(successive_halving, dict) or set(successive_halving) - {
        "factor",
        "min_epochs",
        "warm_start",
    }:
        raise ValueError(
            "`successive_halving` must be None, False, True or a dict with "
            "the keys 'factor' (an integer >= 2), 'min_epochs' (an "
            "integer >= 1) and 'warm_start' (a bool). Received: "
            f"successive_halving={successive_halving!r}"
        )
    factor = successive_halving.get("factor", DEFAULT_FACTOR)
    min_epochs = successive_halving.get("min_epochs", DEFAULT_MIN_EPOCHS)
    scaling.check_positive_int("successive_halving['factor']", factor)
    scaling.check_positive_int("successive_halving['min_epochs']", min_epochs)
    if factor < 2:
        raise ValueError(
            "`successive_halving['factor']` must be an integer >= 2. "
            f"Received: {factor}"
        )
    warm_start = successive_halving.get("warm_start", DEFAULT_WARM_START)
    if not isinstance(warm_start, bool):
        raise ValueError(
            "`successive_halving['warm_start']` must be True or False. "
            f"Received: {warm_start!r}"
        )
    return {
        "factor": int(factor),
        "min_epochs": int(min_epochs),
        "warm_start": warm_start,
    }


def rung_epochs(
    max_epochs, min_epochs=DEFAULT_MIN_EPOCHS, factor=DEFAULT_FACTOR
):
    """The epochs of each rung: `min_epochs * factor**k`, up to `max_epochs`.

    Example:

    ```python
    rung_epochs(8)  # (1, 3, 8)
    rung_epochs(9, min_epochs=1, factor=3)  # (1, 3, 9)
    rung_epochs(2, min_epochs=4)  # (2,)
    ```

    Args:
        max_epochs: Positive integer, the full budget (the `epochs` of the
            search).
        min_epochs: Positive integer, the smallest budget.
        factor: Integer >= 2, the ratio of successive budgets.

    Returns:
        A tuple of increasing positive integers ending with `max_epochs`.
    """
    max_epochs = scaling.check_positive_int("epochs", max_epochs)
    budgets = []
    epochs = min(min_epochs, max_epochs)
    while epochs < max_epochs:
        budgets.append(epochs)
        epochs *= factor
    budgets.append(max_epochs)
    return tuple(budgets)


def promotion(rungs, factor, direction="max"):
    """The configuration to promote next, and to which rung; or None.

    Looks from the second-highest rung down: a configuration is promotable
    from rung `r` if it is among the best `len(finished) // factor` finished
    configurations of rung `r` and has no trial in rung `r + 1` yet.

    Example:

    ```python
    rungs = [{"a": 0.9, "b": 0.5, "c": 0.7}, {}]
    promotion(rungs, factor=3)  # ("a", 1)
    promotion([{"a": 0.9, "b": None}, {}], factor=3)  # None
    ```

    Args:
        rungs: A list with one dict per rung, from the smallest budget up,
            mapping a configuration key to its score there (None while it
            runs, or if it failed).
        factor: Integer >= 2.
        direction: `"max"` or `"min"`, the objective's direction.

    Returns:
        A tuple `(key, rung)`, or None when a new configuration should start
        on the smallest budget.
    """
    if direction not in ("max", "min"):
        raise ValueError(
            f"`direction` must be 'max' or 'min'. Received: {direction!r}"
        )
    sign = -1.0 if direction == "max" else 1.0
    for rung in range(len(rungs) - 2, -1, -1):
        finished = {
            key: score
            for key, score in rungs[rung].items()
            if score is not None
        }
        ranked = sorted(finished, key=lambda key: sign * finished[key])
        for key in ranked[: len(finished) // factor]:
            if key not in rungs[rung + 1]:
                return key, rung + 1
    return None
