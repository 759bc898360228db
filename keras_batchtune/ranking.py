"""Cost-aware ranking of trials: tolerance on the objective, Pareto front.

Pure Python: each trial is seen as a `(score, seconds)` pair, `seconds`
being its training time (`fit_seconds`) or None when it was not recorded.
"""

import math
import numbers

# Scores such as accuracies are sums of float fractions: 0.98 - 0.975 is
# 0.0050000000000000044, not 0.005. A difference this much above the
# tolerance still counts as within it.
_ROUNDING = 1e-9


def check_tolerance(tolerance):
    """Checks a `tolerance` argument: None or a finite number >= 0.

    Example:

    ```python
    check_tolerance(0.005)  # 0.005
    check_tolerance(-1)  # raises ValueError
    ```

    Args:
        tolerance: None (cost-blind ranking) or how far from the best score,
            in the objective's own units, a trial may be and still be
            preferred for being faster.

    Returns:
        `tolerance` as a float, or None.

    Raises:
        ValueError: if `tolerance` is not None and not a finite number >= 0.
    """
    if tolerance is None:
        return None
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not math.isfinite(tolerance)
        or tolerance < 0
    ):
        raise ValueError(
            "`tolerance` must be None (rank by the objective only) or a "
            "finite number >= 0 in the objective's units, e.g. 0.005 for half "
            "a point of accuracy. Received: "
            f"tolerance={tolerance!r}"
        )
    return float(tolerance)


def _better_first(direction):
    if direction not in ("min", "max"):
        raise ValueError(
            '`direction` must be "min" or "max". '
            f"Received: direction={direction!r}"
        )
    return -1.0 if direction == "max" else 1.0


def within_tolerance(score, best_score, tolerance, direction):
    """Whether `score` is within `tolerance` of `best_score` (inclusive).

    Example:

    ```python
    within_tolerance(0.975, 0.98, 0.005, "max")  # True
    within_tolerance(0.31, 0.30, 0.005, "min")  # False
    ```

    Args:
        score: A trial's score.
        best_score: The best score of the search.
        tolerance: A number >= 0, in the objective's units.
        direction: `"max"` or `"min"`, the objective's direction.

    Returns:
        True if `score` is no more than `tolerance` worse than `best_score`.
    """
    worse_by = (best_score - score) * -_better_first(direction)
    slack = _ROUNDING * max(1.0, abs(best_score))
    return worse_by <= tolerance + slack


def preferred_order(entries, tolerance, direction):
    """Ranks trials: the fastest within `tolerance` of the best score first.

    `entries` must come in the objective's order (best score first, as
    `keras_tuner.Oracle.get_best_trials` returns them). Without a tolerance
    that order is returned. With one, the trials whose score is within
    `tolerance` of the best come first, fastest first (ties: better score,
    then the given order), then every other trial in the given order. If a
    trial within the tolerance has no recorded seconds, costs cannot be
    compared and the given order is kept.

    Example:

    ```python
    entries = [(0.981, 4.7), (0.978, 1.3), (0.95, 0.9)]
    preferred_order(entries, 0.005, "max")  # [1, 0, 2]
    preferred_order(entries, None, "max")  # [0, 1, 2]
    ```

    Args:
        entries: A list of `(score, seconds)` pairs, best score first;
            `seconds` may be None.
        tolerance: None, or a number >= 0 (see `check_tolerance`).
        direction: `"max"` or `"min"`, the objective's direction.

    Returns:
        A list of indices into `entries`, the preferred trial first.

    Raises:
        ValueError: for a bad `tolerance` or `direction`.
    """
    tolerance = check_tolerance(tolerance)
    sign = _better_first(direction)
    given = list(range(len(entries)))
    if tolerance is None or not entries:
        return given
    best_score = entries[0][0]
    band = [
        index
        for index in given
        if within_tolerance(entries[index][0], best_score, tolerance, direction)
    ]
    if any(entries[index][1] is None for index in band):
        return given
    band.sort(
        key=lambda index: (entries[index][1], sign * entries[index][0], index)
    )
    in_band = set(band)
    return band + [index for index in given if index not in in_band]


def pareto_front(entries, direction):
    """Finds the trials no other trial beats on both score and seconds.

    A trial is on the front unless another one has a score at least as good
    and took no longer, and is strictly better on one of the two. Entries
    without seconds are left out. Of trials equal on both, the first is kept.

    Example:

    ```python
    entries = [(0.981, 4.7), (0.978, 1.3), (0.95, 2.0), (0.90, 0.8)]
    pareto_front(entries, "max")  # [3, 1, 0]
    ```

    Args:
        entries: A list of `(score, seconds)` pairs in any order; `seconds`
            may be None.
        direction: `"max"` or `"min"`, the objective's direction.

    Returns:
        The indices of the front, fastest (and so worst scoring) first.

    Raises:
        ValueError: for a bad `direction`.
    """
    sign = _better_first(direction)
    timed = [
        index
        for index, (score, seconds) in enumerate(entries)
        if seconds is not None and score is not None
    ]
    # Fastest first; among equally fast trials the best score first.
    timed.sort(
        key=lambda index: (entries[index][1], sign * entries[index][0], index)
    )
    front = []
    for index in timed:
        score = entries[index][0]
        if front and sign * score >= sign * entries[front[-1]][0]:
            continue  # no better than a trial at least as fast
        front.append(index)
    return front
