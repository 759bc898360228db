"""`find_learning_rate`: the learning-rate range test (Smith 2017).

The rising learning rate is a `LearningRateSchedule` the optimizer
evaluates inside its compiled step, so the test runs the same way on every
Keras backend (a JAX step holds the optimizer's variables as its own state
between steps: a callback assigning the learning rate would not reach it).
"""

import math

import keras
import numpy as np

from keras_batchtune import band as band_module
from keras_batchtune import coupling
from keras_batchtune import memory
from keras_batchtune.backend import keras_internals


class LearningRateFinderResult:
    """What a learning-rate range test measured.

    Example:

    ```python
    result = keras_batchtune.find_learning_rate(model, x, y)
    result.suggestion, result.band
    result.plot("lr_find.png")
    ```

    Attributes:
        learning_rates: The learning rate of each step, a list of floats.
        losses: The training loss of each step (of that step's batch).
        smoothed_losses: The losses after exponential smoothing.
        suggestion: The suggested learning rate: that of the smallest
            smoothed loss, over 10.
        band: A tuple `(low, high)` of good learning rates around it.
        batch_size: The batch size the test ran at.
    """

    def __init__(self, learning_rates, losses, smoothed_losses, batch_size):
        self.learning_rates = list(learning_rates)
        self.losses = list(losses)
        self.smoothed_losses = list(smoothed_losses)
        self.batch_size = batch_size
        self.suggestion = band_module.suggest_learning_rate(
            self.learning_rates, self.smoothed_losses
        )
        self.band = band_module.range_test_band(
            self.learning_rates, self.smoothed_losses, self.suggestion
        )

    def __repr__(self):
        return (
            f"LearningRateFinderResult(suggestion={self.suggestion:.3g}, "
            f"band=({self.band[0]:.3g}, {self.band[1]:.3g}), "
            f"steps={len(self.learning_rates)}, batch_size={self.batch_size})"
        )

    def plot(self, path=None):
        """Plots the loss against the learning rate, band and suggestion.

        Args:
            path: Optional file name; the figure is saved there (PNG, SVG,
                ... by its extension) and closed.

        Returns:
            The matplotlib `Figure`.

        Raises:
            ImportError: if matplotlib is not installed.
        """
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg", force=False)
            from matplotlib import pyplot
        except ImportError as error:
            raise ImportError(
                "LearningRateFinderResult.plot needs matplotlib: "
                "`pip install matplotlib`."
            ) from error
        figure, axes = pyplot.subplots(figsize=(6, 4))
        axes.plot(self.learning_rates, self.losses, alpha=0.3, label="loss")
        axes.plot(self.learning_rates, self.smoothed_losses, label="smoothed")
        axes.axvspan(*self.band, color="green", alpha=0.15, label="band")
        axes.axvline(self.suggestion, color="red", linestyle="--")
        axes.set_xscale("log")
        axes.set_xlabel(f"learning rate (batch {self.batch_size})")
        axes.set_ylabel("training loss")
        finite = [v for v in self.smoothed_losses if math.isfinite(v)]
        if finite:
            top = max(finite[0], min(finite) * 4) * 1.1
            axes.set_ylim(bottom=min(0.0, min(finite)), top=top)
        axes.set_title(f"suggested learning rate {self.suggestion:.3g}")
        axes.legend()
        figure.tight_layout()
        if path is not None:
            figure.savefig(path)
            pyplot.close(figure)
        return figure


class _ExponentialRamp(keras.optimizers.schedules.LearningRateSchedule):
    """`min * (max / min) ** (k / (num_steps - 1))` at the test's step `k`.

    Keras evaluates a schedule at the optimizer's raw step counter, one
    count per batch (micro-batches included), so `k` is that counter minus
    its value when the test starts.

    Args:
        min_learning_rate: Positive float, the rate of the first step.
        max_learning_rate: Float, the rate of step `num_steps - 1`.
        num_steps: Integer >= 2.
        start_step: Integer, the optimizer's step count at the first step.
    """

    def __init__(
        self, min_learning_rate, max_learning_rate, num_steps, start_step
    ):
        self.min_learning_rate = float(min_learning_rate)
        self.max_learning_rate = float(max_learning_rate)
        self.num_steps = int(num_steps)
        self.start_step = int(start_step)

    def __call__(self, step):
        # Subtract in integers: a float32 step count is exact only to 2**24.
        done = keras.ops.subtract(step, self.start_step)
        fraction = keras.ops.cast(done, "float32") / float(self.num_steps - 1)
        fraction = keras.ops.clip(fraction, 0.0, 1.0)
        ratio = self.max_learning_rate / self.min_learning_rate
        return self.min_learning_rate * keras.ops.power(ratio, fraction)

    def get_config(self):
        return {
            "min_learning_rate": self.min_learning_rate,
            "max_learning_rate": self.max_learning_rate,
            "num_steps": self.num_steps,
            "start_step": self.start_step,
        }


class _RangeTest(keras.callbacks.Callback):
    """Records each batch's loss; stops the test once the loss diverges."""

    def __init__(self, smoothing, stop_factor):
        super().__init__()
        self.smoothing = smoothing
        self.stop_factor = stop_factor
        self.losses = []
        self._running_mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        # Keras logs the mean loss since the start of the epoch (the test is
        # one epoch of equal batches): recover this batch's own loss.
        mean = float((logs or {}).get("loss", math.nan))
        loss = (batch + 1) * mean - batch * self._running_mean
        self._running_mean = mean
        self.losses.append(loss)
        smoothed = band_module.smooth_losses(self.losses, self.smoothing)
        if band_module.range_test_has_diverged(smoothed, self.stop_factor):
            self.model.stop_training = True


def find_learning_rate(
    model,
    x,
    y=None,
    *,
    batch_size=32,
    min_learning_rate=1e-5,
    max_learning_rate=10.0,
    num_steps=100,
    smoothing=0.98,
    stop_factor=4.0,
    verbose=0,
):
    """Runs a learning-rate range test and suggests a learning rate.

    Trains `model` for up to `num_steps` batches of `batch_size` while its
    learning rate rises exponentially from `min_learning_rate` to
    `max_learning_rate` (Smith 2017, arXiv 1506.01186; Lightning's
    `lr_find`), and stops early once the smoothed loss exceeds
    `stop_factor` times its minimum. The model's weights, its optimizer's
    variables (slots, step count) and its learning rate (the same variable
    or schedule object) are put back afterwards. It runs on every Keras
    backend. The suggestion
    holds for `batch_size`; `keras_batchtune.scale_learning_rate` carries it
    to other batch sizes.

    Example:

    ```python
    result = keras_batchtune.find_learning_rate(model, x_train, y_train)
    print(result.suggestion, result.band)
    result.plot("lr_find.png")
    ```

    Args:
        model: A compiled `keras.Model` whose optimizer is a
            `keras.optimizers.Optimizer` (float or schedule learning rate).
        x: Input data: arrays (with `y`), or a `tf.data.Dataset` of
            `(x, y)` examples, batched or not (re-batched at `batch_size`).
        y: Targets, for array inputs.
        batch_size: Positive integer. Defaults to 32.
        min_learning_rate: Positive float, the first rate. Defaults to 1e-5.
        max_learning_rate: Float above `min_learning_rate`, the last rate.
            Defaults to 10.
        num_steps: Integer >= 10, the most training steps. Defaults to 100.
        smoothing: Float in `[0, 1)`, the loss's moving-average factor.
            Defaults to 0.98.
        stop_factor: Float > 1; the test stops when the smoothed loss exceeds
            this times its minimum. Defaults to 4.
        verbose: Verbosity passed to `fit`. Defaults to 0.

    Returns:
        A `LearningRateFinderResult`.

    Raises:
        ValueError: for a bad argument (named in the message), or a model
            that is not compiled with a settable learning rate.
    """
    _check_arguments(
        batch_size,
        min_learning_rate,
        max_learning_rate,
        num_steps,
        smoothing,
        stop_factor,
    )
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            "`model` must be compiled with an optimizer before "
            "`find_learning_rate`."
        )
    optimizer = coupling.inner_optimizer(model.optimizer)
    coupling.get_base_learning_rate(optimizer)  # refuses a bare callable
    original_learning_rate = keras_internals.optimizer_learning_rate(optimizer)
    data = x if y is None else (x, y)
    if not model.built:
        # Its weights must exist to be copied and put back.
        memory._build(model, data)
    state = memory._ModelState(model)
    fit_args, fit_kwargs = memory._probe_data(data, batch_size, num_steps)
    # Arrays are tiled in order, so shuffle them; a dataset is used as is.
    fit_kwargs["shuffle"] = "batch_size" in fit_kwargs
    rates = np.geomspace(min_learning_rate, max_learning_rate, num_steps)
    start_step = keras.ops.convert_to_numpy(
        keras_internals.optimizer_iterations(optimizer)
    )
    # The optimizer reads the rising rate from a schedule, inside its step;
    # the step is traced again with it, and again after.
    ramp = _ExponentialRamp(
        min_learning_rate, max_learning_rate, num_steps, start_step
    )
    keras_internals.set_optimizer_learning_rate(optimizer, ramp)
    model.train_function = None
    callback = _RangeTest(smoothing, stop_factor)
    try:
        model.fit(
            *fit_args,
            epochs=1,
            callbacks=[callback],
            verbose=verbose,
            **fit_kwargs,
        )
    finally:
        state.restore()
        keras_internals.set_optimizer_learning_rate(
            optimizer, original_learning_rate
        )
        model.train_function = None
        model.stop_training = False
    losses = callback.losses
    return LearningRateFinderResult(
        [float(rate) for rate in rates[: len(losses)]],
        losses,
        band_module.smooth_losses(losses, smoothing),
        batch_size,
    )


def _check_arguments(
    batch_size, min_learning_rate, max_learning_rate, steps, smoothing, stop
):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    if batch_size < 1:
        raise ValueError(
            "`batch_size` must be a positive integer. "
            f"Received: batch_size={batch_size!r}"
        )
    if not 0 < min_learning_rate < max_learning_rate < math.inf:
        raise ValueError(
            "`min_learning_rate` and `max_learning_rate` must satisfy "
            "0 < min_learning_rate < max_learning_rate. Received: "
            f"min_learning_rate={min_learning_rate!r}, "
            f"max_learning_rate={max_learning_rate!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
        raise ValueError(
            "`num_steps` must be an integer >= 10. "
            f"Received: num_steps={steps!r}"
        )
    if not 0 <= smoothing < 1:
        raise ValueError(
            f"`smoothing` must be in [0, 1). Received: smoothing={smoothing!r}"
        )
    if not stop > 1:
        raise ValueError(
            f"`stop_factor` must be > 1. Received: stop_factor={stop!r}"
        )
