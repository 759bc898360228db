"""The gradient noise scale: estimator maths. Pure Python, no TensorFlow.

The simple noise scale `B_simple = tr(Sigma) / |G|^2` (McCandlish et al.
2018, "An Empirical Model of Large-Batch Training", arXiv 1812.06162), with
`G` the true gradient and `Sigma` the per-example gradient covariance,
predicts the largest batch size that still trains efficiently (the critical
batch size) and grows as the loss falls.

Neither `G` nor `Sigma` is observable, but the squared norm of a mean
gradient over a batch of `B` examples has expectation
`E|G_B|^2 = |G|^2 + tr(Sigma) / B`. Two batch sizes `B_small < B_big` give two
equations and the unbiased estimators of their Appendix A:

```
|G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)
```

Each estimate is noisy and `|G|^2` can even come out negative, so both are
averaged over many batches before dividing: online, with separate
exponential moving averages of the numerator and the denominator (a ratio of
averages, not an average of ratios), which is what `NoiseScaleTracker` does.
"""

import math
import numbers
from typing import NamedTuple

from keras_batchtune import scaling


class NoiseScale(NamedTuple):
    """An estimate of the gradient noise scale and of its two parts.

    Attributes:
        b_simple: `trace_cov / grad_sq_norm`, the simple noise scale, in
            examples. `inf` when `grad_sq_norm <= 0 < trace_cov` (the noise
            swamps the signal: the estimate only says "large"); `nan` when
            neither part is positive.
        grad_sq_norm: The estimate of `|G|^2`, the squared norm of the true
            gradient.
        trace_cov: The estimate of `tr(Sigma)`, the trace of the per-example
            gradient covariance.
    """

    b_simple: float
    grad_sq_norm: float
    trace_cov: float


def _check_finite(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
    ):
        raise ValueError(
            f"`{name}` must be a finite number. Received: {name}={value!r}"
        )
    return float(value)


def check_batch_sizes(small_batch_size, large_batch_size):
    """Validates the two batch sizes of the two-batch estimator.

    Example:

    ```python
    check_batch_sizes(16, 256)  # (16, 256)
    ```

    Args:
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, `B_big > B_small`.

    Returns:
        The pair `(small_batch_size, large_batch_size)` as ints.

    Raises:
        ValueError: naming the argument, if a size is not a positive integer
            or `small_batch_size >= large_batch_size`.
    """
    small = scaling.check_positive_int("small_batch_size", small_batch_size)
    large = scaling.check_positive_int("large_batch_size", large_batch_size)
    if small >= large:
        raise ValueError(
            "`small_batch_size` must be smaller than `large_batch_size`. "
            f"Received: small_batch_size={small}, large_batch_size={large}"
        )
    return small, large


def noise_scale_from_parts(grad_sq_norm, trace_cov):
    """Divides the two parts into a `NoiseScale`.

    Example:

    ```python
    noise_scale_from_parts(4.0, 84.0)  # NoiseScale(21.0, 4.0, 84.0)
    ```

    Args:
        grad_sq_norm: Float, the estimate of `|G|^2`.
        trace_cov: Float, the estimate of `tr(Sigma)`.

    Returns:
        A `NoiseScale`; `b_simple` is `inf` when `grad_sq_norm <= 0` and
        `trace_cov > 0`, and `nan` when both are `<= 0`.
    """
    grad_sq_norm = float(grad_sq_norm)
    trace_cov = float(trace_cov)
    if grad_sq_norm > 0:
        b_simple = trace_cov / grad_sq_norm
    elif trace_cov > 0:
        b_simple = math.inf
    else:
        b_simple = math.nan
    return NoiseScale(b_simple, grad_sq_norm, trace_cov)


def estimate_parts(
    small_sq_norm, large_sq_norm, small_batch_size, large_batch_size
):
    """Returns the unbiased two-batch estimates of `|G|^2` and `tr(Sigma)`.

    McCandlish et al. 2018 (arXiv 1812.06162), Appendix A. Both estimates are
    linear in the squared norms, so averaging the squared norms over many
    batches and then estimating equals averaging the estimates.

    Example:

    ```python
    estimate_parts(9.25, 4.328125, 16, 256)  # (4.0, 84.0)
    ```

    Args:
        small_sq_norm: Float, `|G_small|^2`, the squared norm of a mean
            gradient over `small_batch_size` examples (best: averaged over
            all the small batches inside each large batch).
        large_sq_norm: Float, `|G_big|^2`, the same over `large_batch_size`
            examples.
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, `B_big > B_small`.

    Returns:
        The pair `(grad_sq_norm, trace_cov)` of floats.

    Raises:
        ValueError: if a norm is not a finite number, or the batch sizes are
            not positive integers with `small_batch_size < large_batch_size`.
    """
    small_sq_norm = _check_finite("small_sq_norm", small_sq_norm)
    large_sq_norm = _check_finite("large_sq_norm", large_sq_norm)
    small, large = check_batch_sizes(small_batch_size, large_batch_size)
    grad_sq_norm = (large * large_sq_norm - small * small_sq_norm) / (
        large - small
    )
    trace_cov = (small_sq_norm - large_sq_norm) / (1.0 / small - 1.0 / large)
    return grad_sq_norm, trace_cov


def estimate_noise_scale(
    small_sq_norm, large_sq_norm, small_batch_size, large_batch_size
):
    """Estimates the gradient noise scale from mean-gradient norms.

    The two-batch estimator of McCandlish et al. 2018 (arXiv 1812.06162,
    Appendix A); see `estimate_parts`. Pass squared norms already averaged
    over many batches: the ratio of two noisy estimates is biased and can
    be negative.

    Example:

    ```python
    estimate_noise_scale(9.25, 4.328125, 16, 256)
    # NoiseScale(b_simple=21.0, grad_sq_norm=4.0, trace_cov=84.0)
    ```

    Args:
        small_sq_norm: Float, `|G_small|^2` at `small_batch_size`.
        large_sq_norm: Float, `|G_big|^2` at `large_batch_size`.
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, `B_big > B_small`.

    Returns:
        A `NoiseScale(b_simple, grad_sq_norm, trace_cov)`.

    Raises:
        ValueError: as `estimate_parts`.
    """
    return noise_scale_from_parts(
        *estimate_parts(
            small_sq_norm, large_sq_norm, small_batch_size, large_batch_size
        )
    )


class NoiseScaleTracker:
    """Tracks the gradient noise scale online, as a ratio of moving averages.

    Each `update` turns one pair of squared norms into estimates of `|G|^2`
    and `tr(Sigma)`, folds each into its own exponential moving average
    (with Adam-style bias correction, so the first values are not pulled
    toward zero), and divides the averages. Averaging first and dividing
    after keeps the estimate stable where single-batch estimates of `|G|^2`
    are noisy or negative (McCandlish et al. 2018, arXiv 1812.06162, App. A).

    Example:

    ```python
    tracker = NoiseScaleTracker(decay=0.9)
    tracker.update(9.25, 4.328125, small_batch_size=16, large_batch_size=256)
    tracker.result()  # NoiseScale(b_simple=21.0, grad_sq_norm=4.0, ...)
    ```

    Args:
        decay: Float in `[0, 1)`, the weight of the past in each moving
            average; `0` keeps only the last update. About `1 / (1 - decay)`
            updates are averaged.

    Raises:
        ValueError: if `decay` is not a number in `[0, 1)`.
    """

    def __init__(self, decay=0.9):
        if (
            isinstance(decay, bool)
            or not isinstance(decay, numbers.Real)
            or not 0 <= decay < 1
        ):
            raise ValueError(
                f"`decay` must be a number in [0, 1). Received: decay={decay!r}"
            )
        self.decay = float(decay)
        self.reset()

    def reset(self):
        """Forgets every update."""
        self.count = 0
        self._grad_sq_norm = 0.0
        self._trace_cov = 0.0

    def update(
        self,
        small_sq_norm,
        large_sq_norm,
        small_batch_size,
        large_batch_size,
    ):
        """Folds one measurement in and returns the current estimate.

        Args:
            small_sq_norm: Float, `|G_small|^2` at `small_batch_size`.
            large_sq_norm: Float, `|G_big|^2` at `large_batch_size`.
            small_batch_size: Positive integer, `B_small`.
            large_batch_size: Positive integer, `B_big > B_small`.

        Returns:
            The `NoiseScale` of the averages after this update.

        Raises:
            ValueError: as `estimate_parts`.
        """
        grad_sq_norm, trace_cov = estimate_parts(
            small_sq_norm, large_sq_norm, small_batch_size, large_batch_size
        )
        return self.update_parts(grad_sq_norm, trace_cov)

    def update_parts(self, grad_sq_norm, trace_cov):
        """Folds in one estimate of `|G|^2` and `tr(Sigma)`.

        Args:
            grad_sq_norm: Float, one estimate of `|G|^2`.
            trace_cov: Float, one estimate of `tr(Sigma)`.

        Returns:
            The `NoiseScale` of the averages after this update.

        Raises:
            ValueError: if a value is not a finite number.
        """
        grad_sq_norm = _check_finite("grad_sq_norm", grad_sq_norm)
        trace_cov = _check_finite("trace_cov", trace_cov)
        keep = self.decay
        self._grad_sq_norm = keep * self._grad_sq_norm + (1 - keep) * (
            grad_sq_norm
        )
        self._trace_cov = keep * self._trace_cov + (1 - keep) * trace_cov
        self.count += 1
        return self.result()

    def result(self):
        """Returns the current estimate, or None before the first update.

        Returns:
            A `NoiseScale` of the bias-corrected averages, or None.
        """
        if self.count == 0:
            return None
        correction = 1.0 - self.decay**self.count
        return noise_scale_from_parts(
            self._grad_sq_norm / correction, self._trace_cov / correction
        )

    def get_state(self):
        """Returns the tracker's state as a JSON-serialisable dict."""
        return {
            "decay": self.decay,
            "count": self.count,
            "grad_sq_norm": self._grad_sq_norm,
            "trace_cov": self._trace_cov,
        }

    def set_state(self, state):
        """Restores a state returned by `get_state`.

        Args:
            state: Dict from `get_state`.
        """
        self.decay = float(state["decay"])
        self.count = int(state["count"])
        self._grad_sq_norm = float(state["grad_sq_norm"])
        self._trace_cov = float(state["trace_cov"])
