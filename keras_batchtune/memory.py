"""Memory: out-of-memory errors, and the largest batch that fits."""

import collections
import gc
import math
import time

import keras
import numpy as np

from keras_batchtune import scaling

FINDER_MODES = ("power", "binsearch")

Probe = collections.namedtuple("Probe", ["batch_size", "fits", "seconds"])
Probe.__doc__ = """One batch size tried by `find_max_batch_size`.

Attributes:
    batch_size: The (global) batch size trained.
    fits: Whether `steps_per_trial` training steps ran without running out
        of memory.
    seconds: Wall time of the probe.
"""

BatchSizeSearchResult = collections.namedtuple(
    "BatchSizeSearchResult", ["batch_size", "probes", "largest_fitting"]
)
BatchSizeSearchResult.__doc__ = """What `find_max_batch_size` found.

Attributes:
    batch_size: The largest batch size that fits, after the margin.
    probes: The `Probe`s, in the order they ran.
    largest_fitting: The largest batch size that fitted, before the margin.
"""


def is_out_of_memory_error(error):
    """Tells whether an exception is the backend's out-of-memory error.

    TensorFlow raises `tf.errors.ResourceExhaustedError`; JAX raises an
    `XlaRuntimeError` whose message starts with `RESOURCE_EXHAUSTED`; PyTorch
    raises `torch.OutOfMemoryError`.

    Example:

    ```python
    try:
        model.fit(x, y, batch_size=4096)
    except Exception as error:
        if not is_out_of_memory_error(error):
            raise
    ```

    Args:
        error: An exception.

    Returns:
        True if `error` reports that an allocation failed for lack of memory.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return isinstance(error, tf.errors.ResourceExhaustedError)
    if backend == "jax":
        return type(error).__name__ == "XlaRuntimeError" and (
            "RESOURCE_EXHAUSTED" in str(error)
        )
    if backend == "torch":
        import torch

        return isinstance(error, torch.OutOfMemoryError)
    return False


def _check_finder_arguments(mode, start, steps, margin):
    if mode not in FINDER_MODES:
        raise ValueError(
            f"`mode` must be one of {', '.join(map(repr, FINDER_MODES))}. "
            f"Received: mode={mode!r}"
        )
    if (
        isinstance(start, bool)
        or not isinstance(start, (int, np.integer))
        or start < 1
    ):
        raise ValueError(
            f"`start` must be an integer >= 1. Received: start={start!r}"
        )
    scaling.check_positive_int("steps_per_trial", steps)
    if (
        isinstance(margin, bool)
        or not isinstance(margin, (int, float))
        or not 0.0 <= margin < 1.0
    ):
        raise ValueError(
            f"`margin` must be a number in [0, 1). Received: margin={margin!r}"
        )


def _is_dataset(data):
    # Only a TensorFlow program can hold a tf.data.Dataset: no import needed
    # (nor wanted, on the JAX and PyTorch backends) to tell.
    return type(data).__module__.startswith("tensorflow") and hasattr(
        data, "element_spec"
    )


def _probe_data(data, batch_size, steps):
    """`steps` batches of `batch_size` examples, repeating data as needed.

    Returns the positional arguments and keyword arguments of `model.fit`.
    """
    if _is_dataset(data):
        from keras_batchtune import data as data_module

        if data_module.describe_batching(data)[0]:
            data = data.unbatch()
        return (data.repeat().batch(batch_size).take(steps),), {}
    x, y = data if isinstance(data, tuple) else (data, None)
    needed = batch_size * steps

    def tile(array):
        array = np.asarray(array)
        return np.resize(array, (needed,) + array.shape[1:])

    x, y = keras.tree.map_structure(tile, x), keras.tree.map_structure(tile, y)
    return (x, y), {"batch_size": batch_size, "shuffle": False}


def _num_examples(data):
    if _is_dataset(data):
        from keras_batchtune import data as data_module

        return data_module.count_examples(data)
    x = data[0] if isinstance(data, tuple) else data
    return int(np.shape(keras.tree.flatten(x)[0])[0])


class _ModelState:
    """A copy of a model's weights and optimizer variables, to put back."""

    def __init__(self, model):
        optimizer = model.optimizer
        if optimizer is not None and not optimizer.built:
            # Build now, so the slots the probes create are part of the copy.
            optimizer.build(model.trainable_variables)
        self.model = model
        self.weights = [keras.ops.convert_to_numpy(v) for v in model.weights]
        self.optimizer_values = (
            [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
            if optimizer is not None
            else []
        )

    def restore(self):
        for variable, value in zip(self.model.weights, self.weights):
            variable.assign(value)
        if self.model.optimizer is not None:
            for variable, value in zip(
                self.model.optimizer.variables, self.optimizer_values
            ):
                variable.assign(value)


def _release_memory():
    gc.collect()


def _local_copy(model):
    """The model, compiled alike, outside any strategy: on this worker only."""
    import tensorflow as tf

    with tf.distribute.get_strategy().scope():
        copy = keras.models.clone_model(model)
        copy.compile(
            optimizer=type(model.optimizer).from_config(
                model.optimizer.get_config()
            ),
            loss=model.loss,
        )
    copy.set_weights(model.get_weights())
    return copy


def _is_multi_worker(strategy):
    if strategy is None:  # not the TensorFlow backend
        return False
    from keras_batchtune import distribute

    return distribute.is_multi_worker(strategy)


def _min_across_workers(strategy, value):
    """The smallest of one integer per worker, by one collective op."""
    from keras_batchtune import distribute

    return int(distribute.gather_from_replicas(strategy, [value]).min())


def _find_across_workers(model, data, strategy, **kwargs):
    """`find_max_batch_size` under a multi-worker strategy.

    A worker that runs out of memory inside a step never joins the gradient
    all-reduce, and its peers would wait for it forever. So each worker
    probes a local copy of the model at the per-replica batch (no collective
    ops), and the workers agree on the smallest answer with one all-gather.
    """
    replicas = strategy.num_replicas_in_sync
    margin = kwargs.pop("margin")
    start, max_batch_size = kwargs.pop("start"), kwargs.pop("max_batch_size")
    try:
        local = find_max_batch_size(
            _local_copy(model),
            data,
            start=max(1, math.ceil(start / replicas)),
            max_batch_size=max(1, max_batch_size // replicas),
            margin=0.0,
            **kwargs,
        )
        largest, probes = local.largest_fitting, local.probes
    except RuntimeError:
        largest, probes = 0, []
    per_replica = _min_across_workers(strategy, largest)
    probes = [Probe(p.batch_size * replicas, p.fits, p.seconds) for p in probes]
    if per_replica == 0:
        raise RuntimeError(
            f"Even the smallest batch size tried (start={start}) runs out of "
            "memory on at least one worker."
        )
    largest = per_replica * replicas
    batch_size = math.floor(largest * (1.0 - margin)) // replicas * replicas
    return BatchSizeSearchResult(max(replicas, batch_size), probes, largest)


def find_max_batch_size(
    model,
    data,
    *,
    mode="power",
    start=1,
    max_batch_size=None,
    steps_per_trial=3,
    margin=0.0,
):
    """Finds the largest batch size whose training steps fit in memory.

    `"power"` doubles the batch size from `start` until the backend runs out
    of memory (or `max_batch_size` is reached); `"binsearch"` then bisects
    between the last batch that fitted and the first that did not. Each probe
    runs `steps_per_trial` real training steps (`model.fit`); memory is
    released between probes, and the model's weights and optimizer variables
    (slots and iteration count included) are put back exactly as they were.
    Only out-of-memory errors are caught; anything else propagates.

    Under a `tf.distribute` strategy the batch size is global and only
    multiples of `num_replicas_in_sync` are tried (Keras cannot split a global
    batch unevenly); an out-of-memory error on any replica fails the whole
    step, so every replica agrees on the answer. Under a multi-worker strategy
    each worker probes a local copy of the model at the per-replica batch
    (a worker out of memory inside a collective step would leave its peers
    waiting), and the workers agree on the smallest answer with one
    all-gather.

    Example:

    ```python
    result = keras_batchtune.find_max_batch_size(
        model, (x_train, y_train), mode="binsearch", margin=0.1)
    result.batch_size  # the largest batch that fits, less 10%
    result.probes  # [Probe(batch_size=1, fits=True, seconds=...), ...]
    ```

    Args:
        model: A compiled `keras.Model`.
        data: `(x, y)` arrays (or `x` alone), or an unbatched
            `tf.data.Dataset`; it is repeated when a probe needs more examples
            than it holds.
        mode: `"power"` (default) or `"binsearch"`.
        start: Integer >= 1, the first batch size tried. Defaults to 1.
        max_batch_size: The largest batch size to try. Defaults to the number
            of examples in `data` (required for a dataset of unknown size).
        steps_per_trial: Positive integer, training steps per probe.
        margin: Fraction in [0, 1) taken off the largest fitting batch size,
            as headroom (the result is `floor(largest * (1 - margin))`, at
            least 1).

    Returns:
        A `BatchSizeSearchResult(batch_size, probes, largest_fitting)`.

    Raises:
        ValueError: for `start < 1`, `max_batch_size < start`, an unknown
            `mode` or a `margin` outside [0, 1).
        RuntimeError: if even `start` runs out of memory.
    """
    _check_finder_arguments(mode, start, steps_per_trial, margin)
    if max_batch_size is None:
        num_examples = _num_examples(data)
        if num_examples is None:
            raise ValueError(
                "`max_batch_size` is required when `data` is a dataset of "
                "unknown size."
            )
        max_batch_size = max(num_examples, start)
    scaling.check_positive_int("max_batch_size", max_batch_size)
    if max_batch_size < start:
        raise ValueError(
            "`max_batch_size` must be >= `start`. Received: "
            f"max_batch_size={max_batch_size}, start={start}"
        )

    strategy = getattr(model, "distribute_strategy", None)  # TF backend only
    if _is_multi_worker(strategy):
        return _find_across_workers(
            model,
            data,
            strategy,
            mode=mode,
            start=start,
            max_batch_size=max_batch_size,
            steps_per_trial=steps_per_trial,
            margin=margin,
        )
    state = _ModelState(model)
    probes = []

    def probe(batch_size):
        _release_memory()
        begin = time.perf_counter()
        args, kwargs = _probe_data(data, batch_size, steps_per_trial)
        try:
            # `fit`, not `train_on_batch`: under a strategy, `fit` splits the
            # global batch across replicas; `train_on_batch` gives each
            # replica the whole batch.
            model.fit(*args, epochs=1, verbose=0, **kwargs)
            fits = True
        except Exception as error:
            if not is_out_of_memory_error(error):
                raise
            fits = False
        finally:
            state.restore()
        probes.append(Probe(batch_size, fits, time.perf_counter() - begin))
        return fits

    # Under a strategy, probe only multiples of the replica count: Keras
    # cannot run a global batch that splits unevenly across replicas.
    unit = strategy.num_replicas_in_sync if strategy is not None else 1
    largest, smallest_failing = None, None
    batch_size = math.ceil(start / unit) * unit
    max_batch_size = max(batch_size, max_batch_size // unit * unit)
    while True:
        if probe(batch_size):
            largest = batch_size
            if batch_size == max_batch_size:
                break
            batch_size = min(batch_size * 2, max_batch_size)
        else:
            smallest_failing = batch_size
            break
    _release_memory()
    if largest is None:
        raise RuntimeError(
            f"Even the smallest batch size tried, {batch_size} (start={start}"
            f"), runs out of memory: make the model or its inputs smaller, or "
            "use a device with more memory."
        )
    if mode == "binsearch" and smallest_failing is not None:
        low, high = largest // unit, smallest_failing // unit
        while high - low > 1:
            middle = (low + high) // 2
            if probe(middle * unit):
                low = middle
            else:
                high = middle
        largest = low * unit
        _release_memory()
    batch_size = max(unit, math.floor(largest * (1.0 - margin)) // unit * unit)
    return BatchSizeSearchResult(batch_size, probes, largest)
