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


def split_batch(batch_size, max_micro_batch_size, multiple=1):
    """Splits a batch into equal micro-batches that fit a physical limit.

    The number of accumulation steps is the smallest divisor `k` of
    `batch_size / multiple` with `batch_size / k <= max_micro_batch_size`,
    so every micro-batch stays a multiple of `multiple` (the replica count,
    under a `tf.distribute` strategy); a micro-batch never goes below
    `multiple`.

    Example:

    ```python
    split_batch(1024, 300)  # (256, 4)
    split_batch(96, 40)  # (32, 3)
    split_batch(64, 64)  # (64, 1)
    split_batch(12, 5, multiple=2)  # (4, 3)
    ```

    Args:
        batch_size: Positive integer, the batch per optimizer update.
        max_micro_batch_size: Positive integer, the largest batch that fits.
        multiple: Positive integer dividing `batch_size`. Defaults to 1.

    Returns:
        A tuple `(micro_batch_size, accumulation_steps)`.

    Raises:
        ValueError: if an argument is not a positive integer, or `multiple`
            does not divide `batch_size`.
    """
    scaling.check_positive_int("batch_size", batch_size)
    scaling.check_positive_int("max_micro_batch_size", max_micro_batch_size)
    scaling.check_positive_int("multiple", multiple)
    if batch_size % multiple:
        raise ValueError(
            "`multiple` must divide `batch_size`. Received: "
            f"batch_size={batch_size}, multiple={multiple}"
        )
    units = batch_size // multiple
    for steps in range(1, units + 1):
        if units % steps == 0 and batch_size // steps <= max_micro_batch_size:
            return batch_size // steps, steps
    return multiple, units


TPU_PER_CORE_MULTIPLE = 8
"""Per-core batch multiple the batch grid keeps on TPU.

XLA lays TPU tensors out in tiles of 8 x 128 and pads every other size up to
them, so a per-core batch that is not a multiple of 8 pays for padding rows;
a per-core batch of 128 fills the 128 x 128 matrix unit.
"""


def per_device_multiple(device_kind):
    """The multiple each device's share of a batch keeps: 8 on TPU, else 1.

    A TPU core's matrix units work on the batch dimension in blocks of 8
    rows (XLA tiles TPU tensors as 8 x 128 and pads every other size up to
    them): a per-core batch that is not a multiple of 8 is padded, and the
    padding rows cost compute without training anything. GPUs and CPUs have
    no such tile, so any per-device batch is kept.

    Example:

    ```python
    per_device_multiple("tpu")  # 8
    per_device_multiple("TPU v5 lite")  # 8: a JAX device_kind
    per_device_multiple("tpu:3")  # 8: a Keras device name
    per_device_multiple("gpu")  # 1
    ```

    Args:
        device_kind: A string naming the kind of device: a platform
            (`"tpu"`, `"gpu"`, `"cpu"`), a Keras device name (`"tpu:0"`) or
            a JAX `device_kind` (`"TPU v4"`, `"NVIDIA H100"`).

    Returns:
        `TPU_PER_CORE_MULTIPLE` for a TPU, else 1.

    Raises:
        ValueError: if `device_kind` is not a non-empty string.
    """
    if not isinstance(device_kind, str) or not device_kind.strip():
        raise ValueError(
            "`device_kind` must be a non-empty string such as 'tpu', 'gpu' "
            f"or 'cpu'. Received: device_kind={device_kind!r}"
        )
    if device_kind.strip().lower().startswith("tpu"):
        return TPU_PER_CORE_MULTIPLE
    return 1


def batch_size_unit(num_replicas=1, per_replica=False, per_replica_multiple=1):
    """The number every searched batch size must be a multiple of.

    A global batch is split evenly across `num_replicas` replicas, each
    replica's share being a multiple of `per_replica_multiple` (8 on TPU). A
    per-replica batch only needs the per-replica multiple.

    Example:

    ```python
    batch_size_unit(2)  # 2: a global batch over two replicas
    batch_size_unit(8, per_replica_multiple=8)  # 64: 8 TPU cores
    batch_size_unit(8, per_replica=True, per_replica_multiple=8)  # 8
    ```

    Args:
        num_replicas: Positive integer, the replicas in sync.
        per_replica: Whether the searched batch size is per replica.
        per_replica_multiple: Positive integer, the multiple each replica's
            batch keeps.

    Returns:
        A positive integer.
    """
    scaling.check_positive_int("num_replicas", num_replicas)
    scaling.check_positive_int("per_replica_multiple", per_replica_multiple)
    return per_replica_multiple * (1 if per_replica else num_replicas)


def aligned_batch_range(
    min_batch_size,
    max_batch_size,
    num_replicas=1,
    per_replica=False,
    per_replica_multiple=1,
):
    """Rounds a batch-size range to multiples of the replica layout's unit.

    `min_batch_size` is rounded up and `max_batch_size` down to multiples of
    `batch_size_unit(num_replicas, per_replica, per_replica_multiple)`; the
    log-step grid from the rounded minimum then holds only such multiples.
    A global `min_batch_size` below the replica count is aligned up the same
    way (to one example per replica at least, times the per-replica
    multiple).

    Example:

    ```python
    aligned_batch_range(16, 1024, num_replicas=8, per_replica_multiple=8)
    # (64, 1024): 8 TPU cores, 8 examples per core at least
    aligned_batch_range(3, 100, num_replicas=2)  # (4, 100)
    aligned_batch_range(4, 512, num_replicas=8)  # (8, 512)
    ```

    Args:
        min_batch_size: Positive integer, the smallest batch size asked for.
        max_batch_size: Positive integer >= `min_batch_size`.
        num_replicas: Positive integer, the replicas in sync.
        per_replica: Whether the bounds are per-replica batch sizes.
        per_replica_multiple: The multiple each replica's batch keeps.

    Returns:
        A tuple `(min_batch_size, max_batch_size)` of multiples of the unit.

    Raises:
        ValueError: if a bound is not a positive integer, `min_batch_size >
            max_batch_size`, a global `max_batch_size` is smaller than
            `num_replicas` (less than one example per replica), or no
            multiple of the unit lies in the range.
    """
    check_batch_size_range(min_batch_size, max_batch_size)
    if not per_replica and max_batch_size < num_replicas:
        raise ValueError(
            "`max_batch_size` is a global batch split across "
            f"{num_replicas} replicas (devices), so it must be >= "
            f"{num_replicas}: a smaller batch leaves less than one example "
            "per replica. Received: "
            f"max_batch_size={max_batch_size}. Use max_batch_size >= "
            f"{num_replicas}, or per_replica=True."
        )
    unit = batch_size_unit(num_replicas, per_replica, per_replica_multiple)
    low = -(-min_batch_size // unit) * unit
    high = max_batch_size // unit * unit
    if high < low:
        raise ValueError(
            f"`max_batch_size` must be >= {low}, the smallest multiple of "
            f"{unit} (the batch unit of {num_replicas} replicas with "
            f"{per_replica_multiple} per replica at least) in the range. "
            f"Received: min_batch_size={min_batch_size}, "
            f"max_batch_size={max_batch_size}"
        )
    return low, high


def global_batch_size(batch_size, num_replicas=1, per_replica=False):
    """The global batch size `model.fit` gets for a searched batch size.

    Example:

    ```python
    global_batch_size(32, num_replicas=8, per_replica=True)  # 256
    global_batch_size(32, num_replicas=8)  # 32
    ```

    Args:
        batch_size: Positive integer, the searched value.
        num_replicas: Positive integer, the replicas in sync.
        per_replica: Whether `batch_size` is per replica.

    Returns:
        The global batch size, an int.
    """
    return int(batch_size) * (num_replicas if per_replica else 1)


def check_global_batch_size(batch_size, num_replicas=1):
    """Checks that a global batch splits evenly across the replicas.

    Keras cannot train on a global batch that splits unevenly (its replicas
    would hold tensors of different shapes).

    Example:

    ```python
    check_global_batch_size(64, num_replicas=8)  # passes
    ```

    Args:
        batch_size: Positive integer, a global batch size.
        num_replicas: Positive integer, the replicas in sync.

    Returns:
        `batch_size`.

    Raises:
        ValueError: if the batch holds fewer examples than replicas, or is
            not a multiple of `num_replicas`.
    """
    scaling.check_positive_int("batch_size", batch_size)
    if batch_size < num_replicas:
        raise ValueError(
            f"A batch of {batch_size} across {num_replicas} replicas leaves "
            "some replicas less than one example; the batch size must be at "
            f"least {num_replicas}. Received: batch_size={batch_size}"
        )
    if batch_size % num_replicas:
        lower = batch_size // num_replicas * num_replicas
        raise ValueError(
            f"The batch size must be a multiple of the {num_replicas} "
            "replicas in sync, which share each batch evenly. Received: "
            f"batch_size={batch_size}; use {lower} or "
            f"{lower + num_replicas}."
        )
    return batch_size
