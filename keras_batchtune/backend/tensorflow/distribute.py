"""`tf.distribute`: the strategy to use, collectives, TPU-friendly batches.

The batch grid arithmetic (multiples of the replica count, per-core multiples
of 8 on TPU) is pure Python, in `space.py`, and the backend-neutral part in
`keras_batchtune/distribute.py`; this module does what needs TensorFlow.
"""

import glob
import inspect
import json
import logging
import math
import os

import keras
import tensorflow as tf

from keras_batchtune.backend import tf_data
from keras_batchtune.backend.common import distribute as common
from keras_batchtune.backend.common.distribute import agree_across_hosts  # noqa: F401
from keras_batchtune.backend.common.distribute import agree_on_largest_fitting  # noqa: F401
from keras_batchtune.backend.common.distribute import data_processes  # noqa: F401
from keras_batchtune.backend.common.distribute import even_split  # noqa: F401
from keras_batchtune.backend.common.distribute import num_replicas  # noqa: F401

logger = logging.getLogger("keras_batchtune")

# Strategies already created by `resolve_strategy`, by what was resolved: a
# TPU system is connected and initialised once per process (initialising it
# again would wipe the TPU's memory), and one MirroredStrategy per process
# keeps its collective ops apart from another's.
_RESOLVED = {}


def resolve_strategy(tpu=None, verbose=True):
    """The `tf.distribute` strategy for this hardware; see the public one.

    The documented function is `keras_batchtune.distribute.resolve_strategy`
    (TPU, then `TF_CONFIG` workers, then several GPUs, else the default
    strategy; the choice logged and, with `verbose`, printed).

    Args:
        tpu: Optional TPU name, address, `"local"` or cluster resolver.
        verbose: Whether to print the choice.

    Returns:
        A `tf.distribute.Strategy`.
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


def resolve_distribution(tpu=None, verbose=True):
    """On TensorFlow, the `tf.distribute` strategy: `resolve_strategy`'s."""
    return resolve_strategy(tpu=tpu, verbose=verbose)


INSTEAD = (
    "On TensorFlow, pass a `tf.distribute.Strategy` as "
    "`distribution_strategy=` (`keras_batchtune.resolve_distribution()` "
    "picks one for this hardware), or set KERAS_BACKEND=jax to use "
    "`keras.distribution`."
)


def check_tuner_distribution(distribution, distribution_strategy):
    """`BatchTuner`'s distribution arguments on TensorFlow.

    Returns:
        `(None, distribution_strategy)`.

    Raises:
        ValueError: for a `distribution`, or a `keras.distribution`
            object as `distribution_strategy`.
    """
    return common.check_tuner_distribution(
        distribution, distribution_strategy, INSTEAD
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
        if not tf_data.describe_batching(validation)[0]:
            fit_kwargs["validation_data"] = validation.batch(batch_size)
    if isinstance(x, tf.data.Dataset):
        fit_kwargs["shuffle"] = False  # a dataset shuffles itself
        return (), {
            "x": tf_data.batch_dataset(x, batch_size, drop_remainder=True),
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
    """Lets Keras 3 `fit` under `MultiWorkerMirroredStrategy` (see the public).

    The documented function is `keras_batchtune.distribute.
    patch_for_multi_worker`: this model object gets its shapes from this
    worker's replica and train/test step logs of shape `[1]`.

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


def local_model_copy(model):
    """The model, compiled alike, outside any strategy: on this worker only.

    Args:
        model: A compiled `keras.Model`, built under a strategy.

    Returns:
        A new `keras.Model` with the same weights and a fresh optimizer of
        the same configuration, under the default strategy.
    """
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


def make_replica_safe(model):
    """Gives the optimizer an accumulation step that runs across replicas.

    See `replica_accumulation`: a no-op with one replica.

    Args:
        model: A compiled `keras.Model`.
    """
    from keras_batchtune.backend.tensorflow import replica_accumulation

    strategy = getattr(model, "distribute_strategy", None)
    if replica_accumulation.needs_install(model.optimizer, strategy):
        replica_accumulation.install(model.optimizer)
