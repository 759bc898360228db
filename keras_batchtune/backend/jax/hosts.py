"""Agreement across the hosts of a JAX cluster (`keras.distribution`).

After `keras.distribution.initialize()` every host (process) runs the same
program on its own devices, and each compiled step is a collective over all
of them: a batch size, a learning rate or a memory limit that differs from
one host to another makes different programs, and the hosts wait for each
other forever. What one host decides alone (a random draw, the memory it
found) is therefore agreed on before it shapes a step: the smallest value
of every host (`agree_on_min`: the memory finder's answer) or the first
host's value (`broadcast_from_first`: a choice). Each call is a small
collective of `jax.experimental.multihost_utils` that every host must make,
in the same order; with one process nothing is sent.
"""

import jax
import keras
import numpy as np
from jax.experimental import multihost_utils


def process_count():
    """The number of hosts (JAX processes) of the program.

    Example:

    ```python
    keras.distribution.initialize("10.0.0.1:1234", 2, 0)
    process_count()  # 2
    ```

    Returns:
        A positive integer: 1 without `keras.distribution.initialize()`.
    """
    return jax.process_count()


def process_index():
    """This host's index, 0 for the first host (the coordinator).

    Example:

    ```python
    if process_index() == 0:
        print("written once")
    ```

    Returns:
        An integer in `[0, process_count())`.
    """
    return jax.process_index()


def is_multi_host():
    """Tells whether the program spans several hosts.

    Example:

    ```python
    if is_multi_host():
        batch_size = agree_on_min(batch_size)
    ```

    Returns:
        True after `keras.distribution.initialize()` with more than one
        process.
    """
    return process_count() > 1


def _numbers(values, name):
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{name}` must be a number or an array of numbers. "
            f"Received: {name}={values!r}"
        )
    return array


def gather(value):
    """Every host's `value`, in host order.

    Example:

    ```python
    gather(64)  # array([64, 64]) on each of two hosts
    ```

    Args:
        value: A number or an array of numbers of the same shape and dtype
            on every host.

    Returns:
        A numpy array whose first axis is the host index.

    Raises:
        ValueError: naming `value`, if it is not a number.
    """
    array = _numbers(value, "value")
    if not is_multi_host():
        return array[None]
    return np.asarray(multihost_utils.process_allgather(array, tiled=False))


def agree_on_min(value):
    """The smallest `value` of every host, known to every host.

    For what each host finds alone and all must respect, such as the
    largest batch that fits in memory (the host with the least memory
    decides).

    Example:

    ```python
    largest = agree_on_min(result.largest_fitting)
    ```

    Args:
        value: A number (the same dtype on every host).

    Returns:
        The minimum over the hosts, as an `int` for an integer `value`, else
        a `float`.

    Raises:
        ValueError: naming `value`, if it is not a single number.
    """
    array = _numbers(value, "value")
    if array.ndim != 0:
        raise ValueError(
            f"`value` must be a single number. Received: value={value!r}"
        )
    smallest = gather(array).min()
    return int(smallest) if array.dtype.kind in "biu" else float(smallest)


def broadcast_from_first(value):
    """The first host's `value`, on every host.

    For a choice that one host makes and all must follow (a batch size
    drawn at random, a resize decided from host-local numbers).

    Example:

    ```python
    batch_size = broadcast_from_first(batch_size)
    ```

    Args:
        value: A number or an array of numbers, of the same shape and dtype
            on every host.

    Returns:
        Host 0's `value`: a Python number for a single number, else a numpy
        array.

    Raises:
        ValueError: naming `value`, if it is not a number.
    """
    array = _numbers(value, "value")
    if is_multi_host():
        array = np.asarray(multihost_utils.broadcast_one_to_all(array))
    return array.item() if array.ndim == 0 else array


def check_agree(value, what):
    """Checks that every host holds the same `value`.

    Example:

    ```python
    check_agree(batch_size, "the batch size of trial 3")
    ```

    Args:
        value: A number or an array of numbers of the same shape on every
            host.
        what: What `value` is, for the message.

    Returns:
        `value`, unchanged.

    Raises:
        ValueError: on every host, listing each host's value, if they
            differ.
    """
    values = gather(value)
    if not np.all(values == values[0]):
        raise ValueError(
            f"The hosts disagree on {what}: {values.tolist()} (host 0 "
            "first). Every host must run the same steps; pass the same "
            "`seed` and arguments on each."
        )
    return value


def data_processes(distribution=None):
    """The hosts that each feed their own share of every batch.

    After `keras.distribution.initialize()`, Keras's JAX trainer takes what
    each host's `fit` batches from its own data as that host's part of the
    global batch (`jax.make_array_from_process_local_data`): a global batch
    of `B` examples over a batch axis that spans `P` hosts is `B / P` rows
    from each. `keras_batchtune` counts every batch size globally (the grid,
    the learning-rate coupling, the finder's answer) and feeds `fit` the
    per-host share (`keras_batchtune.distribute.per_process_batch_size`).

    Example:

    ```python
    keras.distribution.initialize(coordinator, num_processes=2, process_id=i)
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    data_processes()  # 2
    ```

    Args:
        distribution: A `keras.distribution.Distribution`, or None for the
            global one.

    Returns:
        The number of hosts (JAX processes) the batch axis of the
        distribution's device mesh spans: 1 without a distribution or on
        one host.
    """
    if distribution is None:
        distribution = keras.distribution.distribution()
    if distribution is None or not is_multi_host():
        return 1
    mesh = distribution.device_mesh
    devices = np.asarray(mesh.backend_mesh.devices)
    axis = list(mesh.axis_names).index(distribution.batch_dim_name)
    along_batch = np.moveaxis(devices, axis, 0).reshape(devices.shape[axis], -1)
    return len({device.process_index for device in along_batch[:, 0]})


def agree_on_largest_fitting(batch_size):
    """The smallest of every host's largest fitting batch, on every host.

    Each host compiles its own program and may run out of memory where
    another does not (XLA reports most out-of-memory errors when it
    compiles, per host); every host must go on with the same batch size, or
    the hosts would wait for each other in a collective step forever.

    Example:

    ```python
    agree_on_largest_fitting(48)  # 40 where another host fits only 40
    ```

    Args:
        batch_size: This host's largest fitting batch size (0: none fits).

    Returns:
        The minimum over the hosts; `batch_size` itself on one host.
    """
    if not is_multi_host():
        return batch_size
    return agree_on_min(int(batch_size))


def agree_across_hosts(values):
    """The first host's `values` on every host of a JAX cluster.

    For a decision each host takes from its own numbers (a resize decided
    from a noise-scale probe of local data): every host must resize alike.

    Example:

    ```python
    agree_across_hosts((64, 1.0))  # host 0's (batch_size, lr_factor)
    ```

    Args:
        values: A sequence of numbers, as many on every host.

    Returns:
        A tuple: host 0's `values` (as floats over several hosts), or
        `values` themselves on one host.
    """
    if not is_multi_host():
        return tuple(values)
    agreed = broadcast_from_first(np.asarray(values, dtype="float64"))
    return tuple(float(value) for value in np.atleast_1d(agreed))
