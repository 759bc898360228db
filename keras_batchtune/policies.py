"""Batch-size resize policies: when and how far to grow or shrink the batch.

Pure Python: no TensorFlow or Keras import. A policy only decides; the
`DynamicBatchSize` callback applies its decisions to the data and to the
learning rate.

The protocol, at every epoch end of a `fit`:

```python
decision = policy.next_batch_size(epoch, current_batch_size, logs, measurements)
# decision.batch_size: the batch size for epoch `epoch + 1`
# decision.lr_factor: an extra learning-rate factor on top of the coupling
```

`measurements` is an optional dict; the keys read are
`"gradient_noise_scale"` (a float `B_simple`, or a `NoiseScale`),
`"examples_per_second"` (the training throughput of the epoch that just ended,
at `current_batch_size`) and `"throughput"` (a dict `{batch_size:
examples_per_second}`). A key missing from `measurements` is looked up in
`logs`, so a callback that writes `gradient_noise_scale` into the epoch logs
needs to pass nothing more.

The policies:

- `SchedulePolicy`: a fixed schedule, `{epoch: batch_size}` or a callable
  (Smith et al. 2018, arXiv 1711.00489, "Don't decay the learning rate,
  increase the batch size"), with their hybrid fallback to learning-rate
  decay once the batch hits `max_batch_size`.
- `PlateauPolicy`: grows the batch when a metric stalls (the
  `ReduceLROnPlateau` analogue).
- `NoiseScalePolicy`: moves the batch toward the measured gradient noise
  scale `B_simple` (McCandlish et al. 2018, arXiv 1812.06162), on the
  power-of-two grid, with hysteresis.
- `GoodputPolicy`: picks the batch that maximises throughput x statistical
  efficiency (Pollux, Qiao et al. OSDI 2021, arXiv 2008.12260).
"""

import math
import numbers
import warnings
from typing import NamedTuple

from keras_batchtune import scaling
from keras_batchtune import space

NOISE_SCALE_KEY = "gradient_noise_scale"
"""Measurement (or logs) key of the gradient noise scale `B_simple`."""

THROUGHPUT_KEY = "examples_per_second"
"""Measurement (or logs) key of the epoch's throughput at the current batch."""

THROUGHPUTS_KEY = "throughput"
"""Measurement key of a dict `{batch_size: examples_per_second}`."""

POLICIES = ("schedule", "plateau", "noise_scale", "goodput")
"""The policy names `get_policy` accepts."""

# Tolerance of the log2 grid arithmetic (batch sizes are exact integers, the
# logarithms are not).
_EPS = 1e-9


class Decision(NamedTuple):
    """What a policy decided for the next epoch.

    Attributes:
        batch_size: Integer, the batch size (examples per optimizer update)
            for the next epoch; equal to the current one for "no change".
        lr_factor: Float > 0, a factor the callback applies to the learning
            rate on top of the coupling rule for the batch change. `1.0`
            means none; `0.5` halves the learning rate (the hybrid schedule's
            fallback to learning-rate decay when the batch cannot grow).
        reason: A short human-readable reason, for verbose logs; empty when
            nothing changed.
    """

    batch_size: int
    lr_factor: float = 1.0
    reason: str = ""


def _check_int(name, value, minimum):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _check_number(name, value, minimum, strict):
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(
            f"`{name}` must be a finite number {relation} {minimum}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _lookup(key, logs, measurements):
    if measurements and key in measurements:
        return measurements[key]
    if logs and key in logs:
        return logs[key]
    return None


def _as_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def measured_noise_scale(logs=None, measurements=None):
    """Reads `B_simple` from the measurements (or the logs).

    Example:

    ```python
    measured_noise_scale(measurements={"gradient_noise_scale": 120.0})  # 120.0
    ```

    Args:
        logs: Dict of epoch logs, or None.
        measurements: Dict of measurements, or None. The value under
            `"gradient_noise_scale"` may be a number or a `NoiseScale`.

    Returns:
        A float (possibly `inf`), or None when there is no usable
        measurement (missing or `nan`). A negative `B_simple` reads as 0.
    """
    value = _lookup(NOISE_SCALE_KEY, logs, measurements)
    value = getattr(value, "b_simple", value)
    value = _as_float(value)
    if value is None or math.isnan(value):
        return None
    return max(value, 0.0)


class ResizePolicy:
    """Base class of the batch-size resize policies.

    A policy decides, at each epoch end, the batch size of the next epoch,
    within `[min_batch_size, max_batch_size]`. The `DynamicBatchSize`
    callback calls `set_bounds` with its own bounds, `begin` once before the
    first epoch of each `fit`, and `next_batch_size` at every epoch end.
    `get_state`/`set_state` carry the policy's memory across a restarted
    `fit` (e.g. with `keras.callbacks.BackupAndRestore`).

    Subclasses implement `next_batch_size` and, if they keep state,
    `get_state`/`set_state`.

    Example:

    ```python
    class Double(ResizePolicy):
        def next_batch_size(self, epoch, current_batch_size, logs=None,
                            measurements=None):
            return Decision(self.clip(2 * current_batch_size))
    ```

    Args:
        min_batch_size: Positive integer, the smallest batch size; also the
            base of the power-of-two grid of the adaptive policies.
        max_batch_size: Positive integer >= `min_batch_size`, or None for no
            cap.

    Raises:
        ValueError: if a bound is not a positive integer, or
            `min_batch_size > max_batch_size`.
    """

    name = None

    def __init__(self, *, min_batch_size=1, max_batch_size=None):
        self.set_bounds(min_batch_size, max_batch_size)

    def set_bounds(self, min_batch_size, max_batch_size=None):
        """Sets the batch-size bounds the decisions must respect.

        Args:
            min_batch_size: Positive integer.
            max_batch_size: Positive integer >= `min_batch_size`, or None.

        Raises:
            ValueError: naming the argument, if the bounds are invalid.
        """
        if max_batch_size is None:
            scaling.check_positive_int("min_batch_size", min_batch_size)
        else:
            space.check_batch_size_range(min_batch_size, max_batch_size)
            max_batch_size = int(max_batch_size)
        self.min_batch_size = int(min_batch_size)
        self.max_batch_size = max_batch_size

    def clip(self, batch_size):
        """Clips a batch size to `[min_batch_size, max_batch_size]`.

        Args:
            batch_size: A number.

        Returns:
            An int.
        """
        value = max(batch_size, self.min_batch_size)
        if self.max_batch_size is not None:
            value = min(value, self.max_batch_size)
        return int(value)

    # The power-of-two grid: min_batch_size * 2**k, up to max_batch_size.

    def _top_index(self):
        if self.max_batch_size is None:
            return math.inf
        return math.floor(
            math.log2(self.max_batch_size / self.min_batch_size) + _EPS
        )

    def _grid_value(self, index):
        index = max(0, min(index, self._top_index()))
        return int(self.min_batch_size * 2**index)

    def _log_index(self, batch_size):
        return math.log2(batch_size / self.min_batch_size)

    def grid(self):
        """Lists the grid `min_batch_size * 2**k` up to `max_batch_size`.

        Returns:
            The sorted list of grid batch sizes.

        Raises:
            ValueError: if `max_batch_size` is None (the grid is infinite).
        """
        if self.max_batch_size is None:
            raise ValueError(
                "The batch-size grid needs `max_batch_size`. "
                "Received: max_batch_size=None"
            )
        return space.batch_size_grid(self.min_batch_size, self.max_batch_size)

    def snap(self, batch_size):
        """Snaps a batch size to the nearest grid point (in log scale).

        Args:
            batch_size: A positive number (`inf` snaps to the top).

        Returns:
            An int on the grid.
        """
        if batch_size <= self.min_batch_size:
            return self.min_batch_size
        if math.isinf(batch_size):
            if self.max_batch_size is None:
                raise ValueError(
                    "Cannot snap an infinite batch size without "
                    "`max_batch_size`."
                )
            return self._grid_value(self._top_index())
        index = self._log_index(batch_size)
        return self._grid_value(math.floor(index + 0.5))

    def _grid_floor(self, batch_size):
        """The largest grid point <= `batch_size` (the min if none)."""
        return self._grid_value(math.floor(self._log_index(batch_size) + _EPS))

    def begin(self, epoch, batch_size):
        """Called once before the first epoch of a `fit`.

        Args:
            epoch: Integer >= 0, the index of the first epoch (> 0 when a
                `fit` resumes).
            batch_size: Positive integer, the batch size the data was
                prepared with.

        Returns:
            The `Decision` for epoch `epoch`; by default the batch size
            clipped to the bounds.

        Raises:
            ValueError: if `epoch` or `batch_size` is invalid.
        """
        _check_int("epoch", epoch, 0)
        batch_size = scaling.check_positive_int("batch_size", batch_size)
        return Decision(self.clip(batch_size))

    def next_batch_size(
        self, epoch, current_batch_size, logs=None, measurements=None
    ):
        """Decides the batch size of the next epoch.

        Args:
            epoch: Integer >= 0, the index of the epoch that just ended (as
                in `Callback.on_epoch_end`); the decision is for
                `epoch + 1`.
            current_batch_size: Positive integer, the batch size (examples
                per optimizer update) of the epoch that just ended.
            logs: Dict of the epoch's logs (`loss`, `val_loss`, ...), or
                None.
            measurements: Dict of optional measurements, or None; see the
                module docstring for the keys.

        Returns:
            A `Decision(batch_size, lr_factor, reason)`.
        """
        raise NotImplementedError

    def get_state(self):
        """Returns the policy's memory as a JSON-serialisable dict."""
        return {}

    def set_state(self, state):
        """Restores a state returned by `get_state`.

        Args:
            state: Dict from `get_state`.
        """
        del state


def _hybrid_scale(requested, applied):
    """The LR factor that stands in for growth the cap did not allow."""
    if requested > applied:
        return applied / requested
    return 1.0


class SchedulePolicy(ResizePolicy):
    """Follows a fixed batch-size schedule, with a hybrid LR fallback.

    Smith et al. 2018 (arXiv 1711.00489): multiply the batch size where a
    step schedule would have divided the learning rate. When the schedule
    asks for more than `max_batch_size`, the batch is clipped and, with
    `hybrid=True`, the growth that could not be applied is applied as
    learning-rate decay instead (their "hybrid" schedule): asking for 2048
    with a cap of 1024 halves the learning rate. The factor is relative to
    what was already applied, so each further step of the schedule past the
    cap decays again, and a schedule that comes back under the cap restores
    the learning rate.

    A dict schedule is piecewise constant: the batch size of epoch `e` is
    the value of the largest key `<= e`; before the first key the batch
    size is left as it is.

    Example:

    ```python
    policy = SchedulePolicy({0: 128, 30: 256, 60: 512}, max_batch_size=256)
    policy.next_batch_size(29, 128)  # Decision(256, 1.0, ...)
    policy.next_batch_size(59, 256)  # Decision(256, 0.5, ...)
    ```

    Args:
        schedule: Dict `{epoch: batch_size}` (epochs integers >= 0, batch
            sizes positive integers), or a callable `epoch -> batch_size`
            returning a positive integer or None (no change).
        hybrid: Boolean. If True (default), growth beyond `max_batch_size`
            becomes learning-rate decay; if False the batch is only clipped.
        min_batch_size: Positive integer, the smallest batch size.
        max_batch_size: Positive integer, or None for no cap.

    Raises:
        ValueError: naming `schedule` if it is not a non-empty dict of
            epochs to positive integers nor a callable, or the bounds are
            invalid.
    """

    name = "schedule"

    def __init__(
        self,
        schedule,
        *,
        hybrid=True,
        min_batch_size=1,
        max_batch_size=None,
    ):
        super().__init__(
            min_batch_size=min_batch_size, max_batch_size=max_batch_size
        )
        if isinstance(schedule, dict):
            if not schedule:
                raise ValueError(
                    "`schedule` must not be empty. Received: schedule={}"
                )
            for epoch, batch_size in schedule.items():
                if (
                    isinstance(epoch, bool)
                    or not isinstance(epoch, numbers.Integral)
                    or epoch < 0
                ):
                    raise ValueError(
                        "`schedule` keys must be epochs, integers >= 0. "
                        f"Received: schedule={schedule!r}"
                    )
                self._check_size(batch_size, f"schedule[{epoch}]")
            self._epochs = sorted(int(epoch) for epoch in schedule)
            self._schedule = {int(k): int(v) for k, v in schedule.items()}
        elif callable(schedule):
            self._epochs = None
            self._schedule = schedule
        else:
            raise ValueError(
                "`schedule` must be a dict `{epoch: batch_size}` or a "
                f"callable `epoch -> batch_size`. Received: "
                f"schedule={schedule!r}"
            )
        self.hybrid = bool(hybrid)
        self._lr_scale = 1.0

    @staticmethod
    def _check_size(batch_size, where):
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size <= 0
        ):
            raise ValueError(
                "`schedule` must give batch sizes that are positive "
                f"integers. Received: {where} = {batch_size!r}"
            )

    def requested(self, epoch):
        """Returns the batch size the schedule asks for at an epoch.

        Args:
            epoch: Integer >= 0.

        Returns:
            A positive int (before clipping), or None for "no change".

        Raises:
            ValueError: if a callable schedule returns anything but a
                positive integer or None.
        """
        if self._epochs is None:
            value = self._schedule(epoch)
            if value is None:
                return None
            self._check_size(value, f"schedule({epoch})")
            return int(value)
        value = None
        for key in self._epochs:
            if key > epoch:
                break
            value = self._schedule[key]
        return value

    def _decide(self, epoch, current_batch_size):
        requested = self.requested(epoch)
        if requested is None:
            return Decision(current_batch_size)
        applied = self.clip(requested)
        scale = _hybrid_scale(requested, applied) if self.hybrid else 1.0
        lr_factor = scale / self._lr_scale
        self._lr_scale = scale
        reasons = []
        if applied != current_batch_size:
            reasons.append(f"schedule at epoch {epoch}")
        if lr_factor != 1.0:
            reasons.append(
                f"schedule asks for batch {requested} > max_batch_size "
                f"{self.max_batch_size}: LR x{lr_factor:.4g} instead"
            )
        return Decision(applied, lr_factor, "; ".join(reasons))

    def begin(self, epoch, batch_size):
        """Returns the scheduled batch size for the first epoch, if any."""
        super().begin(epoch, batch_size)
        return self._decide(epoch, self.clip(batch_size))

    def next_batch_size(
        self, epoch, current_batch_size, logs=None, measurements=None
    ):
        """Returns the scheduled batch size of epoch `epoch + 1`."""
        _check_int("epoch", epoch, 0)
        current_batch_size = scaling.check_positive_int(
            "current_batch_size", current_batch_size
        )
        return self._decide(epoch + 1, current_batch_size)

    def get_state(self):
        return {"lr_scale": self._lr_scale}

    def set_state(self, state):
        self._lr_scale = float(state.get("lr_scale", 1.0))


class PlateauPolicy(ResizePolicy):
    """Grows the batch when a metric stops improving.

    The `keras.callbacks.ReduceLROnPlateau` analogue: when `monitor` has not
    improved (by more than `min_delta`) for `patience` epochs, the batch
    grows by `factor`; after a growth, `cooldown` epochs pass before the
    counting starts again. At `max_batch_size` the growth that cannot be
    applied becomes learning-rate decay by the same factor when
    `hybrid=True` (Smith et al. 2018, arXiv 1711.00489).

    Example:

    ```python
    policy = PlateauPolicy(monitor="val_loss", patience=1)
    policy.next_batch_size(0, 32, {"val_loss": 0.5})  # Decision(32, ...)
    policy.next_batch_size(1, 32, {"val_loss": 0.6})  # Decision(64, ...)
    ```

    Args:
        monitor: String, the logs key to watch.
        factor: Number > 1, the growth factor of the batch size.
        patience: Integer >= 0, epochs without improvement before growing.
        min_delta: Number >= 0, the smallest change that counts as an
            improvement.
        mode: `"auto"`, `"min"` or `"max"`. With `"auto"`, the direction is
            `"max"` when `monitor` contains `"acc"`, else `"min"` (as in
            Keras).
        cooldown: Integer >= 0, epochs to wait after a growth before
            counting again.
        hybrid: Boolean, decay the learning rate by the growth the cap did
            not allow (default True).
        min_batch_size: Positive integer, the smallest batch size.
        max_batch_size: Positive integer, or None for no cap.

    Raises:
        ValueError: naming the argument, if `factor <= 1`, `patience < 0`,
            `cooldown < 0`, `min_delta < 0`, `mode` is unknown, `monitor` is
            not a string, or the bounds are invalid.
    """

    name = "plateau"

    def __init__(
        self,
        monitor="val_loss",
        factor=2,
        patience=2,
        min_delta=0,
        mode="auto",
        cooldown=0,
        *,
        hybrid=True,
        min_batch_size=1,
        max_batch_size=None,
    ):
        super().__init__(
            min_batch_size=min_batch_size, max_batch_size=max_batch_size
        )
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                "`monitor` must be the name of a logs entry. "
                f"Received: monitor={monitor!r}"
            )
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                "`mode` must be one of 'auto', 'min', 'max'. "
                f"Received: mode={mode!r}"
            )
        self.monitor = monitor
        self.factor = _check_number("factor", factor, 1, strict=True)
        self.patience = _check_int("patience", patience, 0)
        self.min_delta = _check_number("min_delta", min_delta, 0, False)
        self.cooldown = _check_int("cooldown", cooldown, 0)
        self.mode = mode
        if mode == "max" or (mode == "auto" and "acc" in monitor):
            self._sign = -1.0  # maximise: compare negated values
        else:
            self._sign = 1.0
        self.hybrid = bool(hybrid)
        self._best = math.inf
        self._wait = 0
        self._cooldown_counter = 0

    def _improved(self, value):
        return self._sign * value < self._best - self.min_delta

    def next_batch_size(
        self, epoch, current_batch_size, logs=None, measurements=None
    ):
        """Grows the batch by `factor` once `monitor` has stalled."""
        _check_int("epoch", epoch, 0)
        current_batch_size = scaling.check_positive_int(
            "current_batch_size", current_batch_size
        )
        value = _as_float(_lookup(self.monitor, logs, measurements))
        if value is None:
            warnings.warn(
                f"PlateauPolicy is conditioned on `{self.monitor}`, which is "
                f"not available. Available logs: {sorted(logs or {})}",
                stacklevel=2,
            )
            return Decision(current_batch_size)
        if self._cooldown_counter > 0:
            self._cooldown_counter -= 1
            self._wait = 0
        if not math.isnan(value) and self._improved(value):
            self._best = self._sign * value
            self._wait = 0
            return Decision(current_batch_size)
        if self._cooldown_counter > 0:
            return Decision(current_batch_size)
        self._wait += 1
        if self._wait < self.patience:
            return Decision(current_batch_size)
        self._wait = 0
        self._cooldown_counter = self.cooldown
        requested = current_batch_size * self.factor
        applied = self.clip(max(round(requested), current_batch_size + 1))
        lr_factor = _hybrid_scale(requested, applied) if self.hybrid else 1.0
        if applied == current_batch_size and lr_factor == 1.0:
            return Decision(current_batch_size)
        reason = f"{self.monitor} did not improve for {self.patience} epochs"
        if lr_factor != 1.0:
            reason += (
                f"; batch capped at {self.max_batch_size}: "
                f"LR x{lr_factor:.4g} instead"
            )
        return Decision(applied, lr_factor, reason)

    def get_state(self):
        return {
            "best": self._best,
            "wait": self._wait,
            "cooldown_counter": self._cooldown_counter,
        }

    def set_state(self, state):
        self._best = float(state.get("best", math.inf))
        self._wait = int(state.get("wait", 0))
        self._cooldown_counter = int(state.get("cooldown_counter", 0))


class NoiseScalePolicy(ResizePolicy):
    """Moves the batch toward the measured gradient noise scale.

    The useful batch size is about the critical batch size, which is about
    the gradient noise scale `B_simple = tr(Sigma) / |G|^2` (McCandlish et
    al. 2018, arXiv 1812.06162); it grows as the loss falls. The target
    `scale * B_simple` is clipped to the bounds and snapped to the grid
    `min_batch_size * 2**k`.

    Hysteresis: the batch only moves when the target is at least `threshold`
    times the current batch (or at most `1 / threshold` times it) for
    `patience` consecutive measurements; it then moves to the grid point
    nearest the target, at least one grid step. Without it, an estimate
    near the boundary between two grid points flips the batch at every
    epoch; with the defaults (`threshold=2`, `patience=2`), estimates
    scattered by a factor of `exp(0.3)` around such a boundary moved the
    batch at most twice in 200 epochs. Epochs without a measurement leave
    everything as it is.

    Example:

    ```python
    policy = NoiseScalePolicy(min_batch_size=16, max_batch_size=1024)
    measurements = {"gradient_noise_scale": 150.0}
    policy.next_batch_size(0, 32, measurements=measurements)  # stays at 32
    policy.next_batch_size(1, 32, measurements=measurements)
    # Decision(128, 1.0, ...): twice in a row at least 2x the batch
    ```

    Args:
        scale: Number > 0, the target is `scale * B_simple`.
        threshold: Number > 1, the ratio of target to current batch needed
            to move.
        patience: Integer >= 1, consecutive measurements beyond the
            threshold, in the same direction, needed to move.
        min_batch_size: Positive integer, the smallest batch size and the
            base of the grid.
        max_batch_size: Positive integer, or None for no cap.

    Raises:
        ValueError: naming the argument, if `scale <= 0`, `threshold <= 1`,
            `patience < 1`, or the bounds are invalid.
    """

    name = "noise_scale"

    def __init__(
        self,
        scale=1.0,
        threshold=2.0,
        patience=2,
        *,
        min_batch_size=1,
        max_batch_size=None,
    ):
        super().__init__(
            min_batch_size=min_batch_size, max_batch_size=max_batch_size
        )
        self.scale = _check_number("scale", scale, 0, strict=True)
        self.threshold = _check_number("threshold", threshold, 1, strict=True)
        self.patience = _check_int("patience", patience, 1)
        self._direction = 0
        self._count = 0

    def target(self, b_simple):
        """Returns the grid batch size nearest `scale * b_simple`.

        Args:
            b_simple: Number >= 0 (or `inf`), the measured noise scale.

        Returns:
            An int on the grid, within the bounds; None when the target is
            infinite and there is no `max_batch_size`.
        """
        target = self.scale * b_simple
        if self.max_batch_size is not None:
            target = min(target, self.max_batch_size)
        if math.isinf(target):
            return None
        return self.snap(max(target, self.min_batch_size))

    def next_batch_size(
        self, epoch, current_batch_size, logs=None, measurements=None
    ):
        """Moves toward the measured `B_simple`, with hysteresis."""
        _check_int("epoch", epoch, 0)
        current = scaling.check_positive_int(
            "current_batch_size", current_batch_size
        )
        b_simple = measured_noise_scale(logs, measurements)
        if b_simple is None:
            return Decision(current)
        wanted = self.scale * b_simple
        if self.max_batch_size is not None:
            wanted = min(wanted, self.max_batch_size)
        wanted = max(wanted, self.min_batch_size)
        ratio = wanted / current
        if ratio >= self.threshold:
            direction = 1
        elif ratio <= 1.0 / self.threshold:
            direction = -1
        else:
            self._direction, self._count = 0, 0
            return Decision(current)
        if direction == self._direction:
            self._count += 1
        else:
            self._direction, self._count = direction, 1
        if self._count < self.patience:
            return Decision(current)
        self._direction, self._count = 0, 0
        target = self.target(b_simple)
        if direction > 0:
            # At least one grid step up, at most the top of the grid.
            step_up = self._grid_floor(current * 2)
            new = step_up if target is None else max(target, step_up)
            if self.max_batch_size is not None:
                new = min(new, self._grid_value(self._top_index()))
            new = max(new, current)
        else:
            # At least one grid step down.
            step_down = self._grid_value(
                math.ceil(self._log_index(current / 2) - _EPS)
            )
            new = min(target, step_down, current)
        new = self.clip(new)
        if new == current:
            return Decision(current)
        return Decision(
            new, 1.0, f"gradient noise scale {b_simple:.4g} -> batch {new}"
        )

    def get_state(self):
        return {"direction": self._direction, "count": self._count}

    def set_state(self, state):
        self._direction = int(state.get("direction", 0))
        self._count = int(state.get("count", 0))


class GoodputPolicy(ResizePolicy):
    """Picks the batch that maximises goodput = throughput x efficiency.

    Pollux (Qiao et al., OSDI 2021, arXiv 2008.12260): the statistical
    efficiency of batch `B` relative to the starting batch `B0` is
    `(B_simple + B0) / (B_simple + B)` (examples at `B` are worth that
    fraction of examples at `B0`), and goodput is throughput (examples per
    second) times efficiency. The throughput is measured for each batch size
    tried (the best value seen is kept, since timing noise only slows
    things down) and modelled as `B / (a + b * B)`: a time per step `a + b *
    B`, fitted by least squares to the measured points (`a, b >= 0`). With
    one measured point the time per step is taken as constant (throughput
    linear in `B`). Candidates are the grid batch sizes
    `min_batch_size * 2**k` up to `max_extrapolation` times the largest
    batch measured, so the policy explores upward one step at a time instead
    of trusting the model far from its data. The batch changes only when the
    predicted goodput gain exceeds `min_gain` (AdaptDL's 5%).

    Example:

    ```python
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    policy.begin(0, 32)
    policy.next_batch_size(
        0, 32, measurements={"gradient_noise_scale": 200.0,
                             "examples_per_second": 3200.0},
    )  # Decision(64, ...): doubling is predicted to pay
    ```

    Args:
        min_gain: Number >= 0, the relative goodput gain needed to switch.
        max_extrapolation: Number >= 1, candidates are limited to this
            factor times the largest batch size with a measured throughput.
        min_batch_size: Positive integer, the smallest batch size and the
            base of the grid.
        max_batch_size: Positive integer >= `min_batch_size`, the largest.

    Raises:
        ValueError: naming the argument, if `min_gain < 0`,
            `max_extrapolation < 1`, or the bounds are invalid.
    """

    name = "goodput"

    def __init__(
        self,
        min_gain=0.05,
        max_extrapolation=2.0,
        *,
        min_batch_size=1,
        max_batch_size=None,
    ):
        super().__init__(
            min_batch_size=min_batch_size, max_batch_size=max_batch_size
        )
        self.min_gain = _check_number("min_gain", min_gain, 0, strict=False)
        self.max_extrapolation = _check_number(
            "max_extrapolation", max_extrapolation, 1, strict=False
        )
        self.initial_batch_size = None
        self.throughputs = {}

    def begin(self, epoch, batch_size):
        """Records the starting batch `B0` (kept across resumed fits)."""
        decision = super().begin(epoch, batch_size)
        if self.initial_batch_size is None:
            self.initial_batch_size = decision.batch_size
        return decision

    def record_throughput(self, batch_size, examples_per_second):
        """Records a throughput measurement (the best per batch is kept).

        Args:
            batch_size: Positive integer.
            examples_per_second: Number; non-finite or <= 0 is ignored.
        """
        batch_size = scaling.check_positive_int("batch_size", batch_size)
        value = _as_float(examples_per_second)
        if value is None or not math.isfinite(value) or value <= 0:
            return
        self.throughputs[batch_size] = max(
            value, self.throughputs.get(batch_size, 0.0)
        )

    def step_time_model(self):
        """Fits the time per step `a + b * B` to the measured throughputs.

        Returns:
            The pair `(a, b)` of floats >= 0 (seconds, seconds per example),
            or None before any measurement.
        """
        points = [(b, b / t) for b, t in sorted(self.throughputs.items())]
        if not points:
            return None
        if len(points) == 1:
            return points[0][1], 0.0
        n = len(points)
        mean_b = sum(b for b, _ in points) / n
        mean_t = sum(t for _, t in points) / n
        var_b = sum((b - mean_b) ** 2 for b, _ in points)
        cov = sum((b - mean_b) * (t - mean_t) for b, t in points)
        slope = cov / var_b
        intercept = mean_t - slope * mean_b
        if slope < 0:
            # Bigger batches measured no slower per step: constant time.
            return mean_t, 0.0
        if intercept < 0:
            # No fixed cost per step: least squares through the origin.
            slope = sum(b * t for b, t in points) / sum(
                b * b for b, _ in points
            )
            return 0.0, slope
        return intercept, slope

    def throughput(self, batch_size):
        """Returns the modelled throughput at a batch size, or None."""
        model = self.step_time_model()
        if model is None:
            return None
        a, b = model
        return batch_size / (a + b * batch_size)

    def efficiency(self, batch_size, b_simple):
        """Returns Pollux's statistical efficiency relative to `B0`.

        Args:
            batch_size: Positive number, `B`.
            b_simple: Number >= 0 (or `inf`), the gradient noise scale.

        Returns:
            `(b_simple + B0) / (b_simple + B)`; 1 when `b_simple` is `inf`.
        """
        if math.isinf(b_simple):
            return 1.0
        initial = self.initial_batch_size or batch_size
        return (b_simple + initial) / (b_simple + batch_size)

    def goodput(self, batch_size, b_simple):
        """Returns the predicted goodput at a batch size, or None."""
        throughput = self.throughput(batch_size)
        if throughput is None:
            return None
        return throughput * self.efficiency(batch_size, b_simple)

    def candidates(self, current_batch_size):
        """Lists the batch sizes considered, the current one included."""
        limit = self.max_extrapolation * max(
            self.throughputs, default=current_batch_size
        )
        if self.max_batch_size is not None:
            limit = min(limit, self.max_batch_size)
        values = {current_batch_size}
        value = self.min_batch_size
        while value <= limit * (1 + _EPS):
            values.add(value)
            value *= 2
        return sorted(values)

    def next_batch_size(
        self, epoch, current_batch_size, logs=None, measurements=None
    ):
        """Switches to the best predicted goodput if it gains > `min_gain`."""
        _check_int("epoch", epoch, 0)
        current = scaling.check_positive_int(
            "current_batch_size", current_batch_size
        )
        if self.initial_batch_size is None:
            self.initial_batch_size = current
        rate = _lookup(THROUGHPUT_KEY, logs, measurements)
        if rate is not None:
            self.record_throughput(current, rate)
        for size, value in dict(
            _lookup(THROUGHPUTS_KEY, None, measurements) or {}
        ).items():
            self.record_throughput(size, value)
        b_simple = measured_noise_scale(logs, measurements)
        if b_simple is None or not self.throughputs:
            return Decision(current)
        now = self.goodput(current, b_simple)
        best = max(
            self.candidates(current),
            key=lambda size: (self.goodput(size, b_simple), -size),
        )
        best_goodput = self.goodput(best, b_simple)
        if now > 0:
            gain = best_goodput / now
        else:  # a throughput so small that the goodput underflows to 0
            gain = math.inf if best_goodput > 0 else 1.0
        if best == current or gain <= 1.0 + self.min_gain:
            return Decision(current)
        return Decision(
            best,
            1.0,
            f"goodput x{gain:.3g} predicted at batch {best} "
            f"(gradient noise scale {b_simple:.4g})",
        )

    def get_state(self):
        return {
            "initial_batch_size": self.initial_batch_size,
            "throughputs": {str(k): v for k, v in self.throughputs.items()},
        }

    def set_state(self, state):
        self.initial_batch_size = state.get("initial_batch_size")
        self.throughputs = {
            int(k): float(v)
            for k, v in (state.get("throughputs") or {}).items()
        }


_CLASSES = {
    "schedule": SchedulePolicy,
    "plateau": PlateauPolicy,
    "noise_scale": NoiseScalePolicy,
    "goodput": GoodputPolicy,
}


def get_policy(policy, **kwargs):
    """Returns a resize policy from its name or as given.

    Example:

    ```python
    get_policy("plateau", monitor="val_accuracy", patience=3)
    get_policy("schedule", schedule={0: 32, 10: 64})
    ```

    Args:
        policy: `"schedule"`, `"plateau"`, `"noise_scale"`, `"goodput"`, or
            a `ResizePolicy` instance (returned as is).
        **kwargs: Arguments of the named policy's constructor.

    Returns:
        A `ResizePolicy`.

    Raises:
        ValueError: naming `policy`, if it is neither a known name nor a
            `ResizePolicy`, or if `kwargs` are given with a policy object;
            or the constructor's `ValueError` for bad arguments.
    """
    if isinstance(policy, ResizePolicy):
        if kwargs:
            raise ValueError(
                "Keyword arguments only apply to a policy given by name. "
                f"Received: policy={policy!r} with {sorted(kwargs)}"
            )
        return policy
    if isinstance(policy, str) and policy in _CLASSES:
        return _CLASSES[policy](**kwargs)
    raise ValueError(
        "`policy` must be one of "
        f"{', '.join(repr(name) for name in POLICIES)} or a `ResizePolicy` "
        f"instance. Received: policy={policy!r}"
    )
