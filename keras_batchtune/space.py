"""Batch-size grids and bounds. Pure Python: no TensorFlow or Keras import."""

from keras_batchtune import scaling

BATCH_SIZE = "batch_size"
"""The name of the batch-size hyperparameter."""


def batch_size_grid(min_batch_size, max_batch_size, step=2, sampling="log"):
    """Lists the batch sizes of a KerasTuner-style integer range.

    Mirrors the values `hp.Int(name, min, max, step, sampling)` can take: with
    `sampling="log"` the step multiplies, otherwise it adds.

    Example:

    ```python
    batch_size_grid(16, 1024)  # [16, 32, 64, 128, 256, 512, 1024]
    batch_size_grid(8, 40, step=8, sampling="linear")  # [8, 16, 24, 32, 40]
    ```

    Args:
        min_batch_size: Positive integer, the smallest batch size.
        max_batch_size: Positive integer >= `min_batch_size`.
        step: Positive integer (> 1 for log sampling), or None for 1.
        sampling: `"log"`, `"linear"` or `"reverse_log"`.

    Returns:
        The sorted list of batch sizes.

    Raises:
        ValueError: if the bounds or the step are invalid.
    """
    check_batch_size_range(min_batch_size, max_batch_size)
    step = 1 if step is None else scaling.check_positive_int("step", step)
    values = []
    value = min_batch_size
    if sampling == "log":
        if step < 2:
            raise ValueError(
                "`step` must be >= 2 with sampling='log'. "
                f"Received: step={step}"
            )
        while value <= max_batch_size:
            values.append(value)
            value *= step
    else:
        values = list(range(min_batch_size, max_batch_size + 1, step))
    return values


def check_batch_size_range(min_batch_size, max_batch_size):
    """Validates a `[min_batch_size, max_batch_size]` range.

    Example:

    ```python
    check_batch_size_range(16, 1024)
    ```

    Args:
        min_batch_size: Positive integer.
        max_batch_size: Positive integer >= `min_batch_size`.

    Raises:
        ValueError: naming the argument, if a bound is not a positive integer
            or `min_batch_size > max_batch_size`.
    """
    scaling.check_positive_int("min_batch_size", min_batch_size)
    scaling.check_positive_int("max_batch_size", max_batch_size)
    if min_batch_size > max_batch_size:
        raise ValueError(
            "`min_batch_size` must be <= `max_batch_size`. Received: "
            f"min_batch_size={min_batch_size}, "
            f"max_batch_size={max_batch_size}"
        )


def hyperparameter_values(config):
    """Lists the values a batch-size hyperparameter can take, from its config.

    Understands the configs of KerasTuner's `Int`, `Choice` and `Fixed`.

    Example:

    ```python
    hyperparameter_values(
        {"min_value": 16, "max_value": 64, "step": 2, "sampling": "log"}
    )  # [16, 32, 64]
    ```

    Args:
        config: The dict returned by the hyperparameter's `get_config()`.

    Returns:
        The sorted list of values, or None if they cannot be enumerated.
    """
    if "values" in config:
        return sorted(config["values"])
    if "value" in config:
        return [config["value"]]
    if "min_value" in config and isinstance(config["min_value"], int):
        return batch_size_grid(
            config["min_value"],
            config["max_value"],
            config.get("step"),
            config.get("sampling") or "linear",
        )
    return None


def below_ceiling(values, ceiling):
    """Keeps the batch sizes strictly below an out-of-memory ceiling.

    Example:

    ```python
    below_ceiling([16, 32, 64, 128], 64)  # [16, 32]
    ```

    Args:
        values: Iterable of batch sizes.
        ceiling: The smallest batch size known not to fit, or None.

    Returns:
        The list of values `< ceiling` (all of them when `ceiling` is None).
    """
    if ceiling is None:
        return list(values)
    return [value for value in values if value < ceiling]


def lowered_ceiling(ceiling, batch_size):
    """Lowers an out-of-memory ceiling to a batch size that did not fit.

    Example:

    ```python
    lowered_ceiling(None, 512)  # 512
    lowered_ceiling(256, 512)  # 256
    ```

    Args:
        ceiling: The smallest batch size known not to fit, or None.
        batch_size: A batch size that did not fit.

    Returns:
        The new ceiling, an int.
    """
    batch_size = int(batch_size)
    return batch_size if ceiling is None else min(ceiling, batch_size)


def split_batch(batch_size, max_micro_batch_size):
    """Splits a batch into equal micro-batches that fit a physical limit.

    The number of accumulation steps is the smallest divisor `k` of
    `batch_size` with `batch_size / k <= max_micro_batch_size`.

    Example:

    ```python
    split_batch(1024, 300)  # (256, 4)
    split_batch(96, 40)  # (32, 3)
    split_batch(64, 64)  # (64, 1)
    ```

    Args:
        batch_size: Positive integer, the batch per optimizer update.
        max_micro_batch_size: Positive integer, the largest batch that fits.

    Returns:
        A tuple `(micro_batch_size, accumulation_steps)`.

    Raises:
        ValueError: if an argument is not a positive integer.
    """
    scaling.check_positive_int("batch_size", batch_size)
    scaling.check_positive_int("max_micro_batch_size", max_micro_batch_size)
    for steps in range(1, batch_size + 1):
        if batch_size % steps == 0 and batch_size // steps <= (
            max_micro_batch_size
        ):
            return batch_size // steps, steps
    return 1, batch_size
