"""Replicas and batch alignment, on every backend.

The strategy itself (`tf.distribute` on TensorFlow, `keras.distribution` on
JAX, one device on PyTorch) is the backend's
(`keras_batchtune.backend.distribute`); the batch grid arithmetic is pure
Python (`space.py`). This module joins them. Here "strategy" means either: a
`tf.distribute.Strategy` on TensorFlow, a `keras.distribution.Distribution`
on JAX; its replicas are the devices a global batch is split across.
"""

import warnings

from keras_batchtune import space
from keras_batchtune.backend import distribute as backend_distribute

model_strategy = backend_distribute.model_strategy
is_tpu_strategy = backend_distribute.is_tpu_strategy
is_multi_worker = backend_distribute.is_multi_worker
check_workers_agree = backend_distribute.check_workers_agree
first_worker_values = backend_distribute.first_worker_values
gather_from_replicas = backend_distribute.gather_from_replicas
static_batches = backend_distribute.static_batches
local_model_copy = backend_distribute.local_model_copy
even_split = backend_distribute.even_split
check_tuner_distribution = backend_distribute.check_tuner_distribution
# Several hosts that each feed their own data exist on JAX only.
data_processes = backend_distribute.data_processes
agree_on_largest_fitting = backend_distribute.agree_on_largest_fitting
agree_across_hosts = backend_distribute.agree_across_hosts


def resolve_distribution(tpu=None, verbose=True):
    """Picks the distribution for the hardware this runs on, per backend.

    The successor of `resolve_strategy`, named for what it returns on every
    backend:

    - JAX: a `keras.distribution.DataParallel` over every accelerator of
      JAX's default platform, over all hosts (after
      `keras.distribution.initialize()`): the cores of a TPU (8 on a Colab
      TPU runtime), the GPUs, or the CPU devices when there is no
      accelerator. Each global batch is split evenly across them.
    - TensorFlow: the `tf.distribute.Strategy` `resolve_strategy` picks
      (TPU, multi-worker, several GPUs, else the default strategy).
    - PyTorch: None. Keras 3 trains a PyTorch model on one device
      (`keras.distribution` is implemented for JAX); the model trains on one
      device, and KerasTuner's distributed search spreads trials over
      processes.

    What was chosen and why is logged (logger `"keras_batchtune"`, level
    INFO) and, with `verbose`, printed in one line. Pass the result as
    `distribution_strategy=` (every backend) or, on JAX, as `distribution=`.

    Example:

    ```python
    tuner = keras_batchtune.BatchTuner(
        build_model, objective="val_accuracy",
        distribution_strategy=keras_batchtune.resolve_distribution())
    ```

    Args:
        tpu: Optional TPU. On TensorFlow as for `resolve_strategy`; on JAX
            None or `"local"` (JAX finds the TPU cores itself; `"local"`
            raises when there is none); on PyTorch None.
        verbose: Whether to print the choice. Defaults to True.

    Returns:
        A `keras.distribution.Distribution` on JAX, a
        `tf.distribute.Strategy` on TensorFlow, None on PyTorch.

    Raises:
        ValueError: for a `tpu` the backend cannot use; on TensorFlow as for
            `resolve_strategy`.
    """
    return backend_distribute.resolve_distribution(tpu=tpu, verbose=verbose)


def resolve_strategy(tpu=None, verbose=True):
    """Picks the strategy for the hardware this runs on (TensorFlow, JAX).

    On JAX, Keras's own `keras.distribution` is the engine for several
    devices and hosts: this returns what `resolve_distribution` returns, a
    `keras.distribution.DataParallel` over every accelerator. On PyTorch
    (Keras 3 has no multi-device training there) it raises. New code should
    call `resolve_distribution`, whose name says what it returns.

    On TensorFlow, in this order:

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
        A `tf.distribute.Strategy` on TensorFlow; a
        `keras.distribution.DataParallel` on JAX.

    Raises:
        ValueError, RuntimeError or `tf.errors.OpError`: if `tpu` is given
            and cannot be connected to; ValueError on PyTorch, naming it and
            what to use there.
    """
    return backend_distribute.resolve_strategy(tpu=tpu, verbose=verbose)


def patch_for_multi_worker(model):
    """Lets Keras 3 `fit` a model under a `MultiWorkerMirroredStrategy`.

    TensorFlow backend only. Keras 3 (3.15 included; keras-team/keras#20585)
    fails there in two places: before training it averages the first
    distributed batch across replicas only to read its shapes, and after
    each step it averages the per-replica scalar logs with
    `strategy.reduce("MEAN", v, axis=0)`, which needs a leading axis. This
    gives the model (this one object) the shapes from this worker's replica,
    and its train and test steps logs of shape `[1]`, which that reduction
    averages across all replicas of all workers. Epoch logs, read from the
    metrics, are unchanged: global.

    Example:

    ```python
    with multi_worker_strategy.scope():
        model = build_model()
    patch_for_multi_worker(model)
    model.fit(x, y, batch_size=64)
    ```

    Args:
        model: A compiled `keras.Model` built under a multi-worker strategy.

    Raises:
        ValueError: on another backend than TensorFlow.
    """
    return backend_distribute.patch_for_multi_worker(model)


def num_replicas(strategy):
    """The replicas a global batch is split across; 1 for None.

    Example:

    ```python
    num_replicas(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))  # 2
    num_replicas(keras.distribution.DataParallel())  # all devices (JAX)
    ```

    Args:
        strategy: A `tf.distribute.Strategy` (TensorFlow), a
            `keras.distribution.Distribution` (JAX: the size of its mesh's
            batch axis, over all hosts), or None.

    Returns:
        A positive integer.
    """
    return backend_distribute.num_replicas(strategy)


def per_process_batch_size(batch_size):
    """This host's share of a global batch: the `batch_size` for its `fit`.

    Every batch size of `keras_batchtune` is global (split over all devices
    of all hosts). Keras's JAX trainer after
    `keras.distribution.initialize()` takes what each host's `fit` batches
    from its own data as that host's part of the global batch, so each of
    `P` hosts feeds `batch_size / P` rows; with one host (and on other
    backends, where `tf.distribute` splits the global batch itself), all of
    it.

    Example:

    ```python
    per_process_batch_size(64)  # 32 on each of two JAX hosts; else 64
    ```

    Args:
        batch_size: Positive integer, the global batch size.

    Returns:
        A positive integer.

    Raises:
        ValueError: if the hosts cannot share `batch_size` evenly.
    """
    processes = data_processes()
    if batch_size % processes:
        raise ValueError(
            f"A global batch of {batch_size} cannot be shared evenly by "
            f"the {processes} hosts that feed it: use a multiple of "
            f"{processes}. Received: batch_size={batch_size}"
        )
    return batch_size // processes


def per_replica_multiple(strategy):
    """The multiple each replica's batch keeps: 8 on TPU, else 1.

    See `space.per_device_multiple` for the reason.

    Args:
        strategy: A `tf.distribute.Strategy`, a
            `keras.distribution.Distribution`, or None.

    Returns:
        `space.TPU_PER_CORE_MULTIPLE` for a TPU strategy, else 1.
    """
    return space.TPU_PER_CORE_MULTIPLE if is_tpu_strategy(strategy) else 1


def aligned_batch_range(min_batch_size, max_batch_size, strategy, per_replica):
    """The batch-size range of a search, aligned to a strategy's replicas.

    Bounds that are not multiples of the unit (`num_replicas` for a global
    batch, times 8 on TPU) are rounded, the minimum up and the maximum down,
    with one warning that says why; a global minimum below the replica count
    is aligned up to the unit the same way.

    Example:

    ```python
    aligned_batch_range(16, 1024, tpu_strategy, per_replica=False)
    # (64, 1024) on 8 TPU cores, with a warning
    ```

    Args:
        min_batch_size: Positive integer, the smallest batch asked for.
        max_batch_size: Positive integer, the largest batch asked for.
        strategy: The `tf.distribute.Strategy` (TensorFlow) or
            `keras.distribution.Distribution` (JAX) of the search, or None.
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
            "(a TPU core's matrix units take the batch in blocks of 8 rows; "
            "a smaller share is padded)"
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
