"""The learning-rate band: where good learning rates lie, per batch size.

Pure maths, free of TensorFlow. Good (batch size, learning rate) pairs lie
on a ridge, `log(lr*) = a + alpha * log(B)`, about one decade wide. This
module fits that line on the best finished trials, turns it into a narrowed
learning-rate interval for a batch size, and reads a band off the loss curve
of a learning-rate range test (Smith 2017, arXiv 1506.01186).
"""

import math
from typing import NamedTuple

import numpy as np

LR_BAND_MODES = ("off", "trials", "range_test", "both")
"""The allowed values of `BatchTuner(lr_band=...)` (None means "off")."""
MIN_TRIALS = 4
"""Finished trials needed before a band is fitted."""
TOP_FRACTION = 0.3
"""Share of the finished trials (the best ones) the line is fitted on."""
MIN_TOP_TRIALS = 3
MAX_SLOPE = 1.2
"""Largest exponent `alpha` (decades of LR per decade of batch)."""
HALF_WIDTH_DECADES = 0.5
"""Default half-width of the band, in decades of learning rate."""


def check_lr_band(lr_band):
    """Validates `lr_band`, returning its mode (None becomes `"off"`).

    Example:

    ```python
    check_lr_band(None)  # "off"
    ```

    Args:
        lr_band: None, `"off"`, `"trials"`, `"range_test"` or `"both"`.

    Returns:
        The mode, a string of `LR_BAND_MODES`.

    Raises:
        ValueError: for any other value.
    """
    if lr_band is None:
        return "off"
    if isinstance(lr_band, str) and lr_band in LR_BAND_MODES:
        return lr_band
    raise ValueError(
        "`lr_band` must be None, 'off', 'trials', 'range_test' or 'both'. "
        f"Received: lr_band={lr_band!r}"
    )


def interval_around(
    learning_rate, half_width=HALF_WIDTH_DECADES, low=None, high=None
):
    """The interval `learning_rate * 10**(+-half_width)`, kept in a range.

    An interval that would stick out of `[low, high]` is shifted inside it
    (keeping its width); if the range is narrower than the interval, the
    whole range is returned.

    Example:

    ```python
    interval_around(0.1, 0.5)  # (0.0316..., 0.316...)
    interval_around(0.1, 0.5, high=0.1)  # (0.01, 0.1)
    ```

    Args:
        learning_rate: Positive float, the centre.
        half_width: Positive float, in decades.
        low: Optional positive float, the smallest allowed learning rate.
        high: Optional positive float, the largest allowed learning rate.

    Returns:
        A tuple `(low, high)` of floats.
    """
    centre = math.log10(learning_rate)
    lower, upper = centre - half_width, centre + half_width
    range_low = -math.inf if low is None else math.log10(low)
    range_high = math.inf if high is None else math.log10(high)
    if upper - lower >= range_high - range_low:
        return float(low), float(high)
    if upper > range_high:
        lower, upper = lower - (upper - range_high), range_high
    if lower < range_low:
        lower, upper = range_low, upper + (range_low - lower)
    return 10.0**lower, 10.0**upper


class LearningRateBand(NamedTuple):
    """A band of good learning rates: `log10(lr) = intercept + slope log10(B)`.

    Example:

    ```python
    band = LearningRateBand(intercept=-2.0, slope=0.5)
    band.centre(100)  # 0.1
    band.interval(100)  # (0.0316..., 0.316...)
    ```

    Attributes:
        intercept: The line's `log10` learning rate at batch 1.
        slope: The exponent `alpha`, in `[0, MAX_SLOPE]` when fitted.
        half_width: Half the band's width, in decades.
        num_trials: How many trials the line was fitted on.
    """

    intercept: float
    slope: float
    half_width: float = HALF_WIDTH_DECADES
    num_trials: int = 0

    def centre(self, batch_size):
        """The learning rate on the line at `batch_size`."""
        return 10.0 ** (self.intercept + self.slope * math.log10(batch_size))

    def interval(self, batch_size, low=None, high=None):
        """The band at `batch_size`, kept inside `[low, high]`.

        Args:
            batch_size: Positive number.
            low: Optional smallest allowed learning rate.
            high: Optional largest allowed learning rate.

        Returns:
            A tuple `(low, high)` of floats.
        """
        return interval_around(
            self.centre(batch_size), self.half_width, low, high
        )


def fit_band(
    batch_sizes,
    learning_rates,
    scores,
    direction="max",
    *,
    min_trials=MIN_TRIALS,
    top_fraction=TOP_FRACTION,
    default_slope=0.0,
    half_width=HALF_WIDTH_DECADES,
):
    """Fits the line of the best learning rate against the batch size.

    Least squares of `log10(lr)` on `log10(B)` over the best trials (the top
    `top_fraction`, at least 3). The slope is clipped to `[0, MAX_SLOPE]`
    (the intercept then refitted). If the best trials all share one batch
    size, the line goes through the best trial with `default_slope`.

    Example:

    ```python
    band = fit_band([16, 64, 256, 16], [0.01, 0.04, 0.16, 1.0],
                    [0.95, 0.96, 0.97, 0.2], "max", min_trials=3)
    band.slope  # 1.0
    ```

    Args:
        batch_sizes: Sequence of positive numbers, one per finished trial.
        learning_rates: Sequence of positive learning rates (the effective
            ones, for the fitted slope to be the exponent of the ridge).
        scores: Sequence of objective values; non-finite ones are dropped.
        direction: `"max"` or `"min"`, the better direction of `scores`.
        min_trials: Fewer usable trials than this give no band.
        top_fraction: Share of the trials the line is fitted on.
        default_slope: Slope used when the best trials share a batch size.
        half_width: Half-width of the returned band, in decades.

    Returns:
        A `LearningRateBand`, or None if there are too few trials.

    Raises:
        ValueError: if the sequences differ in length or `direction` is
            neither `"max"` nor `"min"`.
    """
    if direction not in ("max", "min"):
        raise ValueError(
            "`direction` must be 'max' or 'min'. "
            f"Received: direction={direction!r}"
        )
    if not len(batch_sizes) == len(learning_rates) == len(scores):
        raise ValueError(
            "`batch_sizes`, `learning_rates` and `scores` must have the same "
            f"length. Received lengths: {len(batch_sizes)}, "
            f"{len(learning_rates)}, {len(scores)}"
        )
    rows = [
        (math.log10(b), math.log10(lr), float(s))
        for b, lr, s in zip(batch_sizes, learning_rates, scores)
        if b and b > 0 and lr and lr > 0 and s is not None and math.isfinite(s)
    ]
    if len(rows) < max(1, min_trials):
        return None
    rows.sort(key=lambda row: row[2], reverse=direction == "max")
    count = max(MIN_TOP_TRIALS, math.ceil(top_fraction * len(rows)))
    best = np.array([row[:2] for row in rows[:count]])
    log_batch, log_lr = best[:, 0], best[:, 1]
    if np.ptp(log_batch) < 1e-9:
        slope = default_slope
        intercept = log_lr[0] - slope * log_batch[0]
    else:
        slope = float(np.polyfit(log_batch, log_lr, 1)[0])
        slope = min(max(slope, 0.0), MAX_SLOPE)
        intercept = float(np.mean(log_lr - slope * log_batch))
    return LearningRateBand(
        float(intercept), float(slope), float(half_width), len(best)
    )


def power_law_slope(multiplier, min_batch_size, max_batch_size):
    """The average log-log slope of an LR multiplier over a batch range.

    Example:

    ```python
    power_law_slope(lambda b: b / 32, 16, 1024)  # 1.0
    ```

    Args:
        multiplier: Callable, batch size -> positive LR multiplier.
        min_batch_size: Smallest batch size.
        max_batch_size: Largest batch size.

    Returns:
        A float (0 when the range is a single batch size).
    """
    if max_batch_size <= min_batch_size:
        return 0.0
    return math.log10(
        multiplier(max_batch_size) / multiplier(min_batch_size)
    ) / math.log10(max_batch_size / min_batch_size)


def smooth_losses(losses, smoothing=0.98):
    """Exponential moving average of losses, with bias correction.

    Example:

    ```python
    smooth_losses([1.0, 1.0, 1.0])  # [1.0, 1.0, 1.0]
    ```

    Args:
        losses: Sequence of floats.
        smoothing: Float in `[0, 1)`; 0 keeps the losses as they are.

    Returns:
        A list of floats, one per loss.
    """
    smoothed, average = [], 0.0
    for step, loss in enumerate(losses, start=1):
        average = smoothing * average + (1.0 - smoothing) * loss
        smoothed.append(average / (1.0 - smoothing**step))
    return smoothed


def range_test_has_diverged(smoothed_losses, stop_factor=4.0):
    """Whether a range test should stop: the loss left its minimum behind.

    Args:
        smoothed_losses: The smoothed losses so far.
        stop_factor: The test stops once the last smoothed loss exceeds
            `stop_factor` times the smallest one (or is not finite).

    Returns:
        A boolean.
    """
    if not smoothed_losses:
        return False
    last = smoothed_losses[-1]
    if not math.isfinite(last):
        return True
    return last > stop_factor * min(smoothed_losses)


def suggest_learning_rate(learning_rates, smoothed_losses):
    """Reads a learning rate off the loss curve of a range test.

    The suggestion is the learning rate of the smallest smoothed loss,
    divided by 10 (Smith 2017; fastai's `lr_find`): past the minimum the
    loss degrades, a decade below it training is fast and stable. (On the
    digits MLP of `../shared/science.md`, the steepest descent of the
    smoothed curve landed at the top edge of the good band, because the
    moving average lags behind the rising rate; the minimum over 10 lands in
    its middle.)

    Example:

    ```python
    rates = np.geomspace(1e-4, 10.0, 50)
    suggest_learning_rate(rates, (np.log10(rates) - 0.0) ** 2)  # about 0.1
    ```

    Args:
        learning_rates: Increasing learning rates, one per step.
        smoothed_losses: The smoothed loss at each step.

    Returns:
        A float.

    Raises:
        ValueError: if the two sequences differ in length, are empty, or
            hold no finite loss.
    """
    rates = np.asarray(learning_rates, dtype=float)
    losses = np.asarray(smoothed_losses, dtype=float)
    if rates.shape != losses.shape or rates.size == 0:
        raise ValueError(
            "`learning_rates` and `smoothed_losses` must be non-empty and of "
            f"the same length. Received lengths: {rates.size}, {losses.size}"
        )
    if not np.isfinite(losses).any():
        raise ValueError(
            "`smoothed_losses` holds no finite loss: the range test diverged "
            "from its first step; lower `min_learning_rate`."
        )
    return float(rates[_best_step(losses)] / 10.0)


def _best_step(losses):
    return int(np.argmin(np.where(np.isfinite(losses), losses, np.inf)))


def range_test_band(
    learning_rates, smoothed_losses, suggestion, half_width=HALF_WIDTH_DECADES
):
    """The band of a range test: around the suggestion, below divergence.

    The band is `suggestion * 10**(+-half_width)`, its top lowered to the
    rate of the smallest loss (past it, training degrades) when that is
    lower, and kept inside the tested range.

    Args:
        learning_rates: The tested learning rates.
        smoothed_losses: The smoothed loss at each of them.
        suggestion: The suggested learning rate.
        half_width: Half-width in decades.

    Returns:
        A tuple `(low, high)` of floats.
    """
    rates = np.asarray(learning_rates, dtype=float)
    losses = np.asarray(smoothed_losses, dtype=float)
    low, high = interval_around(
        suggestion, half_width, float(rates.min()), float(rates.max())
    )
    best_rate = float(rates[_best_step(losses)])
    return low, max(suggestion, min(high, best_rate))
