"""Memory: out-of-memory errors, and the largest batch that fits."""

import collections
import math
import time

import keras
import numpy as np

from keras_batchtune import backend
from keras_batchtune import data as data_module
from keras_batchtune import distribute
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

    TensorFlow raises `tf.errors.ResourceExhaustedError`; JAX raises a
    `JaxRuntimeError` (`XlaRuntimeError` in older releases) whose message
    starts with `RESOURCE_EXHAUSTED`; PyTorch raises `torch.OutOfMemoryError`
    on CUDA and a `RuntimeError` from its CPU allocator ("DefaultCPUAllocator:
    can't allocate memory"). Each backend's module in
    `keras_batchtune/backend/` recognises its own.

    Example:

    ```python
    try:
        model.fit(x, y, batch_size=4096)
    except Exception as error:
        if not is_out_of_memory_error(error):
            raise
    ```

    Keras re-raises an error met while it traces or calls a layer with the
    layer's name added (as a `RuntimeError` where the original class cannot
    be rebuilt); the errors it was raised from (`__cause__`, `__context__`)
    are looked at too.

    Args:
        error: An exception.

    Returns:
        True if `error`, or an error it was raised from, reports that an
        allocation failed for lack of memory.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if backend.memory.is_out_of_memory_error(error):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
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


def _check_data(data):
    """Refuses inputs whose batches `find_max_batch_size` cannot size."""
    if data_module.is_tf_dataset(data):
        return
    leaves = [leaf for leaf in keras.tree.flatten(data) if leaf is not None]
    if not leaves or not all(hasattr(leaf, "shape") for leaf in leaves):
        raise ValueError(
            "`data` must be `(x, y)` (or `x` alone) as numpy arrays or "
            "tensors of the backend (possibly nested), or a "
            "`tf.data.Dataset`: each probe batches it at the batch size it "
            f"tries. Received: data of type {type(data).__name__}. A "
            "`keras.utils.PyDataset`, a `torch.utils.data.DataLoader` or a "
            "generator fixes its own batches: pass the arrays or tensors it "
            "reads from instead."
        )


def _probe_data(data, batch_size, steps):
    """`steps` batches of `batch_size` examples, repeating data as needed.

    Returns the positional arguments and keyword arguments of `model.fit`.
    """
    if data_module.is_tf_dataset(data):
        if data_module.describe_batching(data)[0]:
            data = data.unbatch()
        return (data.repeat().batch(batch_size).take(steps),), {}
    x, y = data if isinstance(data, tuple) else (data, None)
    needed = batch_size * steps

    def tile(array):
        if array is None:
            return None
        array = keras.ops.convert_to_numpy(array)
        return np.resize(array, (needed,) + array.shape[1:])

    x, y = keras.tree.map_structure(tile, x), keras.tree.map_structure(tile, y)
    return (x, y), {"batch_size": batch_size, "shuffle": False}


def _num_examples(data):
    if data_module.is_tf_dataset(data):
        return data_module.count_examples(data)
    x = data[0] if isinstance(data, tuple) else data
    return int(np.shape(keras.tree.flatten(x)[0])[0])


def _build(model, data):
    """Builds an unbuilt model by calling it on one example of `data`.

    Its weights must exist before they are copied: the probes would
    otherwise create and train them, and nothing could put them back.
    """
    args, _ = _probe_data(data, 1, 1)
    if data_module.is_tf_dataset(data):
        batch = next(iter(args[0]))
    else:
        batch = args
    x, _, _ = keras.utils.unpack_x_y_sample_weight(tuple(batch))
    model(keras.tree.map_structure(keras.ops.convert_to_numpy, x))


def _state_variables(model):
    """The model's variables, its optimizer's and its metrics', once each."""
    optimizer = getattr(model, "optimizer", None)
    variables, seen = [], set()
    for variable in (
        list(model.variables)
        + (list(optimizer.variables) if optimizer is not None else [])
        + list(model.metrics_variables)
    ):
        if id(variable) not in seen:
            seen.add(id(variable))
            variables.append(variable)
    return variables


class _ModelState:
    """A copy of a model's state, to put back exactly.

    The copy holds the model's variables (weights and random-seed states),
    its optimizer's (slots such as momentum, the iteration count, the
    learning rate) and its metrics', as host (numpy) arrays: on JAX, a
    training step donates the buffers of the state it is given, so only a
    host copy survives a step that failed halfway.
    """

    def __init__(self, model):
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            # Build now, so the slots the probes create are part of the copy.
            optimizer.build(model.trainable_variables)
        self.model = model
        self.variables = _state_variables(model)
        self.values = [
            np.array(keras.ops.convert_to_numpy(variable), copy=True)
            for variable in self.variables
        ]

    def restore(self):
        for variable, value in zip(self.variables, self.values):
            variable.assign(value)
        # Metrics that the probes built (the compiled metrics are built by
        # the first `fit`) had no state before: they start again from zero.
        copied = {id(variable) for variable in self.variables}
        for metric in self.model.metrics:
            if any(id(v) not in copied for v in metric.variables):
                metric.reset_state()


def _is_multi_worker(strategy):
    return distribute.is_multi_worker(strategy)


def _min_across_workers(strategy, value):
    """The smallest of one integer per worker, by one collective op."""
    return int(distribute.gather_from_replicas(strategy, [value]).min())


def _find_across_workers(model, data, strategy, **kwargs):
    """`find_max_batch_size` under a multi-worker strategy.

    A worker that runs out of memory inside a step never joins the gradient
    all-reduce, and its peers would wait for it forever. So each worker
    probes a local copy of the model at the per-replica batch (no collective
    ops), and the workers agree on the smallest answer with one all-gather.
    """
    replicas = distribute.num_replicas(strategy)
    margin = kwargs.pop("margin")
    start, max_batch_size = kwargs.pop("start"), kwargs.pop("max_batch_size")
    try:
        local = find_max_batch_size(
            distribute.local_model_copy(model),
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
    Only out-of-memory errors are caught (`is_out_of_memory_error`: on
    TensorFlow, JAX and PyTorch alike); anything else propagates.

    On JAX each probe's batch size is a new XLA compilation (about 0.3 s
    each for a small MLP on a CPU, most of a probe's time there). On the
    CPU, JAX and PyTorch fail at once; TensorFlow's oneDNN allocator first
    waits about 10 s per failure (`TF_ENABLE_ONEDNN_OPTS=0` fails at once).

    Under a `tf.distribute` strategy (TensorFlow) or a
    `keras.distribution.Distribution` (JAX, the global one that `fit` uses)
    the batch size is global and only multiples of the replica count (the
    devices of the batch axis; times 8 per TPU core) are tried (Keras cannot
    split a global batch unevenly); an out-of-memory error on any device
    fails the whole step, so every device agrees on the answer. Under a
    multi-worker strategy each worker probes a local copy of the model at
    the per-replica batch (a worker out of memory inside a collective step
    would leave its peers waiting), and the workers agree on the smallest
    answer with one all-gather. Over several JAX hosts
    (`keras.distribution.initialize()`) the batch size is global too: each
    host probes with its share of it from its own `data`, and the hosts
    agree on every probe (the smallest answer wins), so all take the same
    steps and return the same result.

    Example:

    ```python
    result = keras_batchtune.find_max_batch_size(
        model, (x_train, y_train), mode="binsearch", margin=0.1)
    result.batch_size  # the largest batch that fits, less 10%
    result.probes  # [Probe(batch_size=1, fits=True, seconds=...), ...]
    ```

    Args:
        model: A compiled `keras.Model` (one not built yet is built on one
            example of `data` first, so that its weights can be copied).
        data: `(x, y)` numpy arrays or tensors of the backend (or `x`
            alone), or a `tf.data.Dataset` where TensorFlow is installed (a
            batched one is unbatched); it is repeated when a probe needs more
            examples than it holds.
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
            `mode`, a `margin` outside [0, 1), or `data` of another kind (a
            `keras.utils.PyDataset`, a `torch.utils.data.DataLoader`, a
            generator: their batches are fixed).
        RuntimeError: if even `start` runs out of memory.
    """
    _check_finder_arguments(mode, start, steps_per_trial, margin)
    _check_data(data)
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

    # `tf.distribute` on TensorFlow; on JAX the global `keras.distribution`.
    strategy = distribute.model_strategy(model)
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
    if not model.built:
        _build(model, data)
    state = _ModelState(model)
    probes = []

    def probe(batch_size):
        backend.memory.release_memory()
        begin = time.perf_counter()
        # Over several JAX hosts each feeds its share of the global batch.
        args, kwargs = _probe_data(
            data, distribute.per_process_batch_size(batch_size), steps_per_trial
        )
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
        # Every host (several on JAX) goes on with the same answer.
        agreed = distribute.agree_on_largest_fitting(batch_size if fits else 0)
        fits = agreed == batch_size
        probes.append(Probe(batch_size, fits, time.perf_counter() - begin))
        return fits

    # Under a strategy, probe only multiples of the replica count (times 8
    # per TPU core): Keras cannot run a global batch that splits unevenly
    # across replicas.
    unit = distribute.num_replicas(strategy) * distribute.per_replica_multiple(
        strategy
    )
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
    backend.memory.release_memory()
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
        backend.memory.release_memory()
    batch_size = max(unit, math.floor(largest * (1.0 - margin)) // unit * unit)
    return BatchSizeSearchResult(batch_size, probes, largest)
