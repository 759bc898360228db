"""`tf.distribute`: the strategy to use, replicas, and TPU-friendly batches.

The batch grid arithmetic (multiples of the replica count, per-core multiples
of 8 on TPU) is pure Python, in `space.py`; this module reads it off a
strategy and does what needs TensorFlow.
"""

import glob
import inspect
import json
import logging
import math
import os
import warnings

import keras
import tensorflow as tf

from keras_batchtune import data
from keras_batchtune import space

logger = logging.getLogger("keras_batchtune")

# Strategies already created by `resolve_strategy`, by what was resolved: a
# TPU system is connected and initialised once per process (initialising it
# again would wipe the TPU's memory), and one MirroredStrategy per process
# keeps its collective ops apart from another's.
_RESOLVED = {}


def resolve_strategy(tpu=None, verbose=True):
    """Picks the `tf.distribute` strategy for the hardware this runs on.

    In this order:

    1. a `tf.distribute.TPUStrategy` when a TPU is reachable: the one named by
       `tpu`, else one announced by the environment (`TPU_NAME`,
       `COLAB_TPU_ADDR` on a Colab TPU node, or the TPU devices of a Cloud
       TPU VM or a Colab TPU VM runtime, found as `/dev/accel*` or
       `/dev/vfio/*`). The TPU system is connected and initialised once per
       process; calling again returns the same strategy;
    2. a `tf.distribute.MultiWorkerMirroredStrategy` when `TF_CONFIG` names a
       cluster of several workers (and no parameter servers);
    3. a `tf.distribute.MirroredStrategy` over all GPUs when there are two or
       more;
    4. else the default strategy (one device, no distribution).

    What was chosen and why is logged (logger `"keras_batchtune"`, level
    INFO) and, with `verbose`, printed in one line.

    Example:

    ```python
    strategy = keras_batchtune.resolve_strategy()
    tuner = keras_batchtune.BatchTuner(
        build_model, objective="val_accuracy", distribution_strategy=strategy)
    ```

    Args:
        tpu: Optional TPU to connect to: its name, its gRPC address
            (`"grpc://10.0.0.2:8470"`), `"local"` for the TPU of a TPU VM, or
            a `tf.distribute.cluster_resolver.TPUClusterResolver`. When given,
            failing to connect raises; when None, a TPU that the environment
            announces but that cannot be reached is reported and skipped.
        verbose: Whether to print the choice. Defaults to True.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError, RuntimeError or `tf.errors.OpError`: if `tpu` is given
            and cannot be connected to.
    """
    if tpu is not None:
        strategy, reason = _connect_tpu(tpu), "asked for with tpu="
        return _report(strategy, f"{reason}{_tpu_label(tpu)!r}", verbose)
    hint = _tpu_hint()
    skipped = ""
    if hint is not None:
        address, where = hint
        try:
            return _report(_connect_tpu(address), f"TPU {where}", verbose)
        except Exception as error:  # noqa: BLE001 - reported, then skipped
            skipped = (
                f"a TPU {where} could not be reached "
                f"({type(error).__name__}: {str(error)[:200]}); "
            )
    workers = _tf_config_workers()
    if workers > 1:
        strategy = _cached(
            ("multi_worker",), tf.distribute.MultiWorkerMirroredStrategy
        )
        return _report(
            strategy, f"{skipped}TF_CONFIG names {workers} workers", verbose
        )
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        names = tuple(gpu.name for gpu in gpus)
        strategy = _cached(
            ("gpus", names), lambda: tf.distribute.MirroredStrategy(names)
        )
        return _report(strategy, f"{skipped}{len(gpus)} GPUs found", verbose)
    found = "one GPU found" if gpus else "no GPU found"
    return _report(
        tf.distribute.get_strategy(),
        f"{skipped}no TPU found, {found}, TF_CONFIG names no cluster",
        verbose,
    )


def _tpu_label(tpu):
    if isinstance(tpu, str):
        return tpu
    return type(tpu).__name__


# Public names of strategy classes whose Python class is named otherwise.
_PUBLIC_NAMES = {
    "_DefaultDistributionStrategy": "the default strategy",
    "CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy",
    "_CollectiveAllReduceStrategyExperimental": "MultiWorkerMirroredStrategy",
    "TPUStrategyV2": "TPUStrategy",
}


def _report(strategy, reason, verbose):
    name = type(strategy).__name__
    name = _PUBLIC_NAMES.get(name, name)
    replicas = strategy.num_replicas_in_sync
    message = (
        f"keras_batchtune: using {name} with {replicas} replica"
        f"{'s' if replicas != 1 else ''} in sync ({reason})."
    )
    logger.info(message)
    if verbose:
        print(message)
    return strategy


def _cached(key, make):
    if key not in _RESOLVED:
        _RESOLVED[key] = make()
    return _RESOLVED[key]


def _tpu_hint():
    """Where the environment says a TPU is, as `(address, why)`, or None."""
    if os.environ.get("TPU_NAME"):
        name = os.environ["TPU_NAME"]
        return name, f"named by TPU_NAME={name!r}"
    if os.environ.get("COLAB_TPU_ADDR"):
        address = "grpc://" + os.environ["COLAB_TPU_ADDR"]
        return address, f"of this Colab runtime at {address}"
    devices = glob.glob("/dev/accel[0-9]*") + glob.glob("/dev/vfio/[0-9]*")
    if devices:
        return "local", f"attached to this VM ({devices[0]})"
    return None


def _connect_tpu(tpu):
    """Connects to a TPU and initialises it, once per process."""
    if isinstance(tpu, tf.distribute.cluster_resolver.TPUClusterResolver):
        resolver = tpu
    else:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    key = ("tpu", resolver.master())
    if key not in _RESOLVED:
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        _RESOLVED[key] = tf.distribute.TPUStrategy(resolver)
    return _RESOLVED[key]


def _tf_config_workers():
    """The number of workers (and chief) of a `TF_CONFIG` cluster, or 0."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return 0
    cluster = config.get("cluster") or {}
    if cluster.get("ps"):
        return 0  # a parameter-server cluster: not ours to pick for
    return len(cluster.get("worker") or []) + len(cluster.get("chief") or [])


def model_strategy(model):
    """The strategy a Keras model trains under, or None.

    Args:
        model: A `keras.Model`.

    Returns:
        The model's `tf.distribute.Strategy` (the default one when it was
        built outside any scope), or None when the backend has none.
    """
    return getattr(model, "distribute_strategy", None)


def num_replicas(strategy):
    """The replicas in sync of a strategy; 1 for None.

    Example:

    ```python
    num_replicas(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))  # 2
    ```

    Args:
        strategy: A `tf.distribute.Strategy`, or None.

    Returns:
        A positive integer.
    """
    if strategy is None:
        return 1
    return int(strategy.num_replicas_in_sync)


def is_tpu_strategy(strategy):
    """Tells whether a strategy runs on TPU cores.

    Args:
        strategy: A `tf.distribute.Strategy`, or None.

    Returns:
        True for a `TPUStrategy` (either API version).
    """
    return isinstance(
        strategy,
        (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy),
    )


def is_multi_worker(strategy):
    """Tells whether a strategy spans several worker processes.

    Args:
        strategy: A `tf.distribute.Strategy`, or None.

    Returns:
        True for a `MultiWorkerMirroredStrategy` with more than one worker.
    """
    extended = getattr(strategy, "extended", None)
    in_multi_worker_mode = getattr(extended, "_in_multi_worker_mode", None)
    return bool(in_multi_worker_mode and in_multi_worker_mode())


def per_replica_multiple(strategy):
    """The multiple each replica's batch keeps: 8 on TPU, else 1.

    Args:
        strategy: A `tf.distribute.Strategy`, or None.

    Returns:
        `space.TPU_PER_CORE_MULTIPLE` for a TPU strategy, else 1.
    """
    return space.TPU_PER_CORE_MULTIPLE if is_tpu_strategy(strategy) else 1


def aligned_batch_range(min_batch_size, max_batch_size, strategy, per_replica):
    """The batch-size range of a search, aligned to a strategy's replicas.

    Bounds that are not multiples of the unit (`num_replicas` for a global
    batch, times 8 on TPU) are rounded, the minimum up and the maximum down,
    with one warning that says why.

    Example:

    ```python
    aligned_batch_range(16, 1024, tpu_strategy, per_replica=False)
    # (64, 1024) on 8 TPU cores, with a warning
    ```

    Args:
        min_batch_size: Positive integer, the smallest batch asked for.
        max_batch_size: Positive integer, the largest batch asked for.
        strategy: The `tf.distribute.Strategy` of the search, or None.
        per_replica: Whether the bounds are per replica.

    Returns:
        A tuple `(min_batch_size, max_batch_size)`.

    Raises:
        ValueError: as `space.aligned_batch_range`.
    """
    replicas = num_replicas(strategy)
    multiple = per_replica_multiple(strategy)
    low, high = space.aligned_batch_range(
        min_batch_size, max_batch_size, replicas, per_replica, multiple
    )
    if (low, high) != (min_batch_size, max_batch_size):
        unit = space.batch_size_unit(replicas, per_replica, multiple)
        why = (
            f"{replicas} TPU cores, {multiple} examples per core at least "
            "(XLA pads TPU tensors to tiles of 8 rows)"
            if multiple > 1
            else f"{replicas} replicas share each batch evenly"
        )
        kind = "per-replica" if per_replica else "global"
        warnings.warn(
            f"keras_batchtune: the {kind} batch sizes must be multiples of "
            f"{unit} ({why}): the range [{min_batch_size}, "
            f"{max_batch_size}] is searched as [{low}, {high}].",
            UserWarning,
            stacklevel=3,
        )
    return low, high


def check_workers_agree(strategy, batch_size):
    """Checks that every worker of a multi-worker strategy uses one batch.

    Workers that disagree would feed the gradient all-reduce tensors of
    different shapes; one all-gather of the batch size finds out first.

    Args:
        strategy: A multi-worker `tf.distribute.Strategy`.
        batch_size: This worker's global batch size.

    Raises:
        ValueError: if the workers' batch sizes differ.
    """

    sizes = [
        int(row[0]) for row in gather_from_replicas(strategy, [batch_size])
    ]
    if len(set(sizes)) > 1:
        raise ValueError(
            "The workers of the MultiWorkerMirroredStrategy disagree on the "
            f"batch size (one per replica: {sizes}). Give every worker the "
            "same tuner arguments, `seed` included."
        )


def first_worker_values(strategy, values):
    """Returns the first worker's `values` on every worker of a strategy.

    Decisions taken from local measurements (a worker's timings, its own
    gradient samples) can differ between workers; every worker must apply
    the same batch size, or their all-reduces would not match. One
    all-gather hands every worker the decision of worker 0. With a single
    worker, `values` is returned as is.

    Example:

    ```python
    batch_size, lr_factor = first_worker_values(strategy, (64, 1.0))
    ```

    Args:
        strategy: A `tf.distribute.Strategy`, or None.
        values: A sequence of numbers.

    Returns:
        A tuple of floats: worker 0's `values`.
    """
    values = tuple(float(value) for value in values)
    if strategy is None or not is_multi_worker(strategy):
        return values
    first = gather_from_replicas(strategy, values, dtype=tf.float64)[0]
    return tuple(float(value) for value in first)


def gather_from_replicas(strategy, values, dtype=tf.int64):
    """Every replica's `values`, by one all-gather (a collective op).

    Example:

    ```python
    gather_from_replicas(strategy, [batch_size])  # [[64], [64]]
    ```

    Args:
        strategy: A `tf.distribute.Strategy`.
        values: A sequence of numbers, this worker's.
        dtype: The TensorFlow dtype they are sent as.

    Returns:
        A numpy array of shape `(num_replicas_in_sync, len(values))`, the
        rows in replica order (worker 0's first).
    """

    def gather():
        context = tf.distribute.get_replica_context()
        return context.all_gather(tf.constant([list(values)], dtype), axis=0)

    gathered = strategy.experimental_local_results(strategy.run(gather))
    return gathered[0].numpy()


_FIT_SIGNATURE = inspect.signature(keras.Model.fit)


def static_batches(args, kwargs, batch_size):
    """Rewrites `fit` arguments so that every training batch is full.

    For TPUs, which compile one program per batch shape: arrays (and an
    unbatched or batched dataset) become a `tf.data.Dataset` batched with
    `drop_remainder=True`, so training sees one shape; the last partial
    batch of each epoch is left out (the examples left out change from epoch
    to epoch, as the arrays are shuffled unless `shuffle=False`).
    `validation_split` is applied to the arrays here, as Keras would (the
    last examples), and validation data keeps all its examples.

    Example:

    ```python
    args, kwargs = static_batches((x, y), {"epochs": 3}, 64)
    model.fit(*args, **kwargs)  # every training batch holds 64 examples
    ```

    Args:
        args: The positional arguments of `model.fit`.
        kwargs: The keyword arguments of `model.fit`.
        batch_size: Positive integer, the global batch size.

    Returns:
        A tuple `(args, kwargs)` for `model.fit`.

    Raises:
        ValueError: if the training data holds fewer examples than one batch.
    """
    bound = _FIT_SIGNATURE.bind_partial(None, *args, **kwargs)
    fit_kwargs = dict(bound.arguments)
    fit_kwargs.pop("self", None)
    fit_kwargs.update(fit_kwargs.pop("kwargs", {}))
    x = fit_kwargs.pop("x", None)
    fit_kwargs.pop("batch_size", None)
    validation = fit_kwargs.get("validation_data")
    if isinstance(validation, tf.data.Dataset):
        if not data.describe_batching(validation)[0]:
            fit_kwargs["validation_data"] = validation.batch(batch_size)
    if isinstance(x, tf.data.Dataset):
        fit_kwargs["shuffle"] = False  # a dataset shuffles itself
        return (), {
            "x": data.batch_dataset(x, batch_size, drop_remainder=True),
            **fit_kwargs,
        }
    y = fit_kwargs.pop("y", None)
    sample_weight = fit_kwargs.pop("sample_weight", None)
    split = fit_kwargs.pop("validation_split", None) or 0.0
    shuffle = fit_kwargs.pop("shuffle", True)
    arrays = tuple(a for a in (x, y, sample_weight) if a is not None)
    num_examples = int(tf.nest.flatten(x)[0].shape[0])
    if split:
        cut = int(math.floor(num_examples * (1.0 - split)))
        train = tf.nest.map_structure(lambda a: a[:cut], arrays)
        if fit_kwargs.get("validation_data") is None:
            fit_kwargs["validation_data"] = tf.nest.map_structure(
                lambda a: a[cut:], arrays
            )
        arrays, num_examples = train, cut
    if num_examples < batch_size:
        raise ValueError(
            f"The training data holds {num_examples} examples, fewer than one "
            f"batch of {batch_size}: with static batch shapes (TPU) no full "
            "batch would be left to train on."
        )
    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        dataset = dataset.shuffle(num_examples, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if fit_kwargs.get("validation_batch_size") is None:
        fit_kwargs["validation_batch_size"] = batch_size
    fit_kwargs["shuffle"] = False  # shuffled above, if asked for
    return (), {"x": dataset.prefetch(tf.data.AUTOTUNE), **fit_kwargs}


def patch_for_multi_worker(model):
    """Lets Keras 3 `fit` a model under a `MultiWorkerMirroredStrategy`.

    Keras 3 (3.15 included; keras-team/keras#20585) fails there in two
    places: before training it averages the first distributed batch across
    replicas only to read its shapes, and after each step it averages the
    per-replica scalar logs with `strategy.reduce("MEAN", v, axis=0)`, which
    needs a leading axis. This gives the model (this one object) the shapes
    from this worker's replica, and its train and test steps logs of shape
    `[1]`, which that reduction averages across all replicas of all workers.
    Epoch logs, read from the metrics, are unchanged: global.

    Example:

    ```python
    with multi_worker_strategy.scope():
        model = build_model()
    patch_for_multi_worker(model)
    model.fit(x, y, batch_size=64)
    ```

    Args:
        model: A compiled `keras.Model` built under a multi-worker strategy.
    """
    if getattr(model, "_batchtune_multi_worker", False):
        return
    strategy = model.distribute_strategy

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def with_leading_axis(step):
        def wrapped(data):
            return tf.nest.map_structure(
                lambda v: v if v is None else tf.reshape(v, [1]), step(data)
            )

        return wrapped

    model._maybe_symbolic_build = maybe_symbolic_build
    model.train_step = with_leading_axis(model.train_step)
    model.test_step = with_leading_axis(model.test_step)
    model._batchtune_multi_worker = True
