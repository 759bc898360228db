"""Distribution on JAX: `keras.distribution`, not `tf.distribute`.

Keras's own engine for several devices and hosts on JAX is
`keras.distribution` (`DataParallel`, `ModelParallel` over a `DeviceMesh`):
a batch given to `fit` is global and its first axis is sharded over the
mesh's data-parallel (batch) axis. Here a "strategy" is that
`keras.distribution.Distribution`: the one `fit` uses is the global one
(`keras.distribution.distribution()`), its replicas are the devices of the
batch axis (over all hosts), and on TPU each core's share keeps a multiple
of 8. What needs `tf.distribute` itself (the multi-worker patch, collective
ops across `tf.distribute` workers) refuses with an error that says what to
use instead. The rest is `common/distribute.py`'s.
"""

import inspect
import logging
import math
import warnings

import keras
import numpy as np

from keras_batchtune import space
from keras_batchtune.backend.common.distribute import *  # noqa: F401,F403
from keras_batchtune.backend.common.distribute import is_keras_distribution
from keras_batchtune.backend.common.distribute import refusals
from keras_batchtune.backend.jax import hosts
from keras_batchtune.backend.jax.hosts import agree_across_hosts  # noqa: F401
from keras_batchtune.backend.jax.hosts import agree_on_largest_fitting  # noqa: F401
from keras_batchtune.backend.jax.hosts import data_processes

logger = logging.getLogger("keras_batchtune")

INSTEAD = (
    "On JAX, Keras distributes with `keras.distribution`: "
    "`keras.distribution.set_distribution(keras.distribution.DataParallel())` "
    "trains on every device of this host (the GPUs, or the cores of a TPU, "
    "as on a Colab TPU runtime), after `keras.distribution.initialize()` on "
    "every host of a cluster. KerasTuner's distributed search "
    "(KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT) "
    "spreads trials over processes on any backend. Or set "
    "KERAS_BACKEND=tensorflow for `tf.distribute`."
)

_, patch_for_multi_worker = refusals(INSTEAD)

_FIT_SIGNATURE = inspect.signature(keras.Model.fit)


def resolve_distribution(tpu=None, verbose=True):
    """A `keras.distribution.DataParallel` over every accelerator.

    The devices are those of JAX's default platform over all hosts
    (`keras.distribution.list_devices()`): the cores of a TPU, the GPUs, or
    the CPU devices when there is no accelerator. See the public
    `keras_batchtune.resolve_distribution`.

    Raises:
        ValueError: for a `tpu` other than None and `"local"`, or `"local"`
            when JAX finds no TPU.
    """
    if tpu is not None and tpu != "local":
        raise ValueError(
            "`tpu`: on JAX the TPU cores of this VM (or of every host after "
            "`keras.distribution.initialize()`) are found by JAX itself; "
            "only tpu=None or tpu='local' is accepted. A remote TPU node "
            "(a name or gRPC address) needs KERAS_BACKEND=tensorflow. "
            f"Received: tpu={tpu!r}"
        )
    devices = keras.distribution.list_devices()
    platform = _platform(devices[0])
    if tpu == "local" and platform != "tpu":
        raise ValueError(
            "`tpu='local'`: JAX finds no TPU here (its devices are "
            f"{platform} devices). Received: tpu={tpu!r}"
        )
    distribution = keras.distribution.DataParallel(devices=devices)
    count = len(devices)
    plural = "s" if count != 1 else ""
    if platform == "tpu":
        reason = (
            f"{count} TPU core{plural} found; each core's share of a batch "
            f"is kept a multiple of {space.TPU_PER_CORE_MULTIPLE}"
        )
    elif platform == "cpu":
        reason = "no GPU or TPU found: JAX's CPU device" + plural
    else:
        reason = f"{count} {platform.upper()}{plural} found"
    processes = hosts.process_count()
    if processes > 1:
        reason += f", over {processes} hosts"
    message = (
        "keras_batchtune: using keras.distribution.DataParallel over "
        f"{count} {platform} device{plural} ({reason}); each global batch "
        f"is split evenly across the {count} device{plural}."
    )
    logger.info(message)
    if verbose:
        print(message)
    return distribution


resolve_strategy = resolve_distribution


def _platform(device):
    """`"tpu"`, `"gpu"` or `"cpu"` for a Keras device name or JAX device."""
    platform = getattr(device, "platform", None)
    if platform is None:
        platform = str(device).split(":")[0]
    return str(platform).lower()


def model_strategy(model):
    """The `keras.distribution.Distribution` a `fit` of `model` runs under.

    Keras's JAX trainer reads the global distribution when `fit` starts:
    that one (`keras.distribution.distribution()`), or None.

    Args:
        model: A `keras.Model` (its variables' layouts were set when it was
            built).

    Returns:
        A `keras.distribution.Distribution`, or None.
    """
    return keras.distribution.distribution()


def batch_axis_size(distribution):
    """The devices a batch is split across: the mesh's batch axis size.

    Args:
        distribution: A `keras.distribution.Distribution`.

    Returns:
        A positive integer: all devices of a 1-D `DataParallel`, the
        `batch_dim_name` axis of a `ModelParallel`'s mesh, over all hosts.

    Raises:
        ValueError: if the mesh has no axis named `batch_dim_name`.
    """
    mesh = distribution.device_mesh
    axes = list(mesh.axis_names)
    if distribution.batch_dim_name not in axes:
        raise ValueError(
            "`distribution`: its batch axis "
            f"{distribution.batch_dim_name!r} is not an axis of its device "
            f"mesh {axes}. Received: distribution={distribution!r}"
        )
    return int(mesh.shape[axes.index(distribution.batch_dim_name)])


def num_replicas(strategy):
    """The devices a global batch is split across; 1 for None.

    Args:
        strategy: A `keras.distribution.Distribution`, or None.

    Returns:
        A positive integer.
    """
    if strategy is None:
        return 1
    if is_keras_distribution(strategy):
        return batch_axis_size(strategy)
    return int(strategy.num_replicas_in_sync)


def is_tpu_strategy(strategy):
    """Tells whether a distribution's devices are TPU cores.

    Args:
        strategy: A `keras.distribution.Distribution`, or None.

    Returns:
        True when its mesh's devices are TPU cores.
    """
    if not is_keras_distribution(strategy):
        return False
    first = np.ravel(strategy.device_mesh.devices)[0]
    multiple = space.per_device_multiple(_platform(first))
    return multiple == space.TPU_PER_CORE_MULTIPLE


def check_distribution(distribution, argument):
    """Checks that a distribution's device mesh covers real devices.

    Args:
        distribution: A `keras.distribution.Distribution`.
        argument: The argument it came from, for the messages.

    Returns:
        `distribution`.

    Raises:
        ValueError: naming `argument`, if the batch axis is not in the mesh,
            the mesh names a device twice, or names a device JAX does not
            have (on any host).
    """
    try:
        batch_axis_size(distribution)
    except ValueError as error:
        raise ValueError(str(error).replace("`distribution`", argument, 1))
    names = [
        str(device) for device in np.ravel(distribution.device_mesh.devices)
    ]
    try:
        available = keras.distribution.list_devices(_platform(names[0]))
    except RuntimeError:  # no device of that platform at all
        available = keras.distribution.list_devices()
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"{argument}: its device mesh names {repeated} more than once; "
            "each device can hold one share of a batch. Devices: "
            f"{available}. Received: {distribution!r} over {names}"
        )
    try:
        distribution.device_mesh.backend_mesh
    except (ValueError, RuntimeError) as error:
        missing = [name for name in names if name not in available]
        raise ValueError(
            f"{argument}: its device mesh does not cover devices this "
            f"program has: {missing or names} not found ({error}). The "
            f"devices are {available} (`keras.distribution.list_devices()`"
            ", over all hosts after `keras.distribution.initialize()`)."
        ) from error
    return distribution


def check_tuner_distribution(distribution, distribution_strategy):
    """`BatchTuner`'s distribution arguments on JAX.

    `distribution` or `distribution_strategy` may be a
    `keras.distribution.Distribution` (not both); without either, the global
    one (`keras.distribution.set_distribution`) is taken, if any.

    Example:

    ```python
    check_tuner_distribution(keras.distribution.DataParallel(), None)
    # (<DataParallel ...>, None)
    ```

    Args:
        distribution: `BatchTuner`'s `distribution` argument, or None.
        distribution_strategy: KerasTuner's `distribution_strategy`, or None.

    Returns:
        The pair `(distribution, None)`: the distribution of the search (or
        None) and the `distribution_strategy` for `keras_tuner.Tuner`.

    Raises:
        ValueError: naming the argument, if both are given, one is not a
            `keras.distribution.Distribution` (a `tf.distribute` strategy
            needs the TensorFlow backend), or its mesh does not cover the
            devices there are.
    """
    if distribution is not None and distribution_strategy is not None:
        raise ValueError(
            "Pass either `distribution` or `distribution_strategy`, not "
            "both: each sets the devices of the search. Received: "
            f"distribution={distribution!r}, "
            f"distribution_strategy={distribution_strategy!r}"
        )
    for name, value in (
        ("distribution", distribution),
        ("distribution_strategy", distribution_strategy),
    ):
        if value is not None and not is_keras_distribution(value):
            raise ValueError(
                f"`{name}` must be a `keras.distribution.Distribution` "
                "(`DataParallel` or `ModelParallel`) on the JAX backend; "
                "a `tf.distribute` strategy needs the TensorFlow backend "
                "(KERAS_BACKEND=tensorflow). On JAX use "
                "`keras_batchtune.resolve_distribution()` or "
                "`keras.distribution.DataParallel()`. Received: "
                f"{name}={value!r} of type {type(value).__name__}"
            )
    if distribution is not None:
        return check_distribution(distribution, "`distribution`"), None
    if distribution_strategy is not None:
        checked = check_distribution(
            distribution_strategy, "`distribution_strategy`"
        )
        return checked, None
    current = keras.distribution.distribution()
    if current is not None:
        check_distribution(
            current,
            "The global distribution (`keras.distribution.set_distribution`)",
        )
    return current, None


def _bind_fit(args, kwargs):
    bound = _FIT_SIGNATURE.bind_partial(None, *args, **kwargs)
    fit_kwargs = dict(bound.arguments)
    fit_kwargs.pop("self", None)
    fit_kwargs.update(fit_kwargs.pop("kwargs", {}))
    return fit_kwargs


def _num_rows(structure):
    """Examples in a structure of arrays, or None if it is something else."""
    if structure is None:
        return None
    leaves = keras.tree.flatten(structure)
    rows = set()
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) < 1 or not hasattr(leaf, "__getitem__"):
            return None
        rows.add(int(shape[0]))
    return rows.pop() if len(rows) == 1 else None


def _rows(structure, start, stop):
    if structure is None:
        return None
    return keras.tree.map_structure(lambda leaf: leaf[start:stop], structure)


def even_split(args, kwargs, strategy):
    """`fit` arguments whose every batch splits evenly across the devices.

    Keras's JAX trainer shards each batch over the distribution's batch axis
    and cannot shard a batch of `n` rows over `R` devices unless `R`
    divides `n`: the last, smaller batch of an epoch would fail. For arrays
    (numpy or tensors, nested structures included) this applies
    `validation_split` as Keras does (the last examples) and leaves out the
    last `n % R` examples of the training and validation arrays, with a
    warning; the batches are then the batch size and one smaller last batch
    of a multiple of `R`. Other inputs pass unchanged. Over several hosts
    (`keras.distribution.initialize()`), each host's arrays are its own
    examples: `R` is then this host's devices of the batch axis, and every
    host keeps as many examples as the host with the fewest (one collective
    per call), so that all run the same steps.

    Example:

    ```python
    args, kwargs = even_split((x, y), {"batch_size": 64}, data_parallel)
    ```

    Args:
        args: The positional arguments of `model.fit`.
        kwargs: Its keyword arguments.
        strategy: The `keras.distribution.Distribution` of the fit, or None.

    Returns:
        A tuple `(args, kwargs)` for `model.fit`.

    Raises:
        ValueError: naming `x`, if it holds fewer examples than devices.
    """
    replicas = num_replicas(strategy)
    if replicas <= 1:
        return args, kwargs
    # Over several hosts each cuts its own examples: into shares of its own
    # devices, and as many as every other host (else one host would wait
    # for the others' steps forever).
    processes = data_processes(strategy)
    replicas //= processes

    def agreed(kept):
        return kept if processes == 1 else hosts.agree_on_min(kept)

    fit_kwargs = _bind_fit(args, kwargs)
    train = (fit_kwargs.get("x"), fit_kwargs.get("y"))
    train += (fit_kwargs.get("sample_weight"),)
    rows = _num_rows([part for part in train if part is not None])
    if rows is None:
        return args, kwargs
    split = fit_kwargs.pop("validation_split", 0.0) or 0.0
    if split and fit_kwargs.get("validation_data") is None:
        split_at = int(math.ceil(rows * (1.0 - split)))
        validation = tuple(_rows(part, split_at, None) for part in train)
        fit_kwargs["validation_data"] = tuple(
            part for part in validation if part is not None
        )
        train = tuple(_rows(part, 0, split_at) for part in train)
        rows = split_at
    kept = agreed(rows - rows % replicas)
    if kept == 0:
        raise ValueError(
            f"`x` holds {rows} training examples, fewer than the {replicas} "
            "devices a batch is split across."
        )
    left_out = {}
    if kept < rows:
        train = tuple(_rows(part, 0, kept) for part in train)
        left_out["training"] = rows - kept
    validation = fit_kwargs.get("validation_data")
    if isinstance(validation, (tuple, list)):
        val_rows = _num_rows([part for part in validation if part is not None])
        val_kept = None
        if val_rows is not None:
            val_kept = agreed(val_rows - val_rows % replicas)
        if val_kept is not None and val_kept < val_rows:
            fit_kwargs["validation_data"] = tuple(
                _rows(part, 0, val_kept) for part in validation
            )
            left_out["validation"] = val_rows - val_kept
    if left_out:
        which = ", ".join(f"{n} {kind}" for kind, n in left_out.items())
        warnings.warn(
            f"keras_batchtune: the last {which} example(s) are left out: "
            f"each batch is split evenly across {replicas} devices, which "
            "needs a multiple of that many examples (Keras's JAX trainer "
            "cannot shard a smaller last batch unevenly).",
            UserWarning,
            stacklevel=3,
        )
    fit_kwargs["x"], fit_kwargs["y"], fit_kwargs["sample_weight"] = train
    return (), fit_kwargs


def static_batches(args, kwargs, batch_size):
    """`fit` arguments whose every training batch is full: one shape.

    For TPU cores, which compile one program per batch shape: arrays become
    `keras_batchtune.resizable` data cut into full batches
    (`drop_remainder=True`: the examples left out change from epoch to
    epoch, reshuffled unless `shuffle=False`); with `sample_weight` or
    `class_weight` the arrays are cut to a multiple of the batch instead.
    Other inputs pass unchanged.

    Example:

    ```python
    args, kwargs = static_batches((x, y), {"epochs": 3}, 64)
    ```

    Args:
        args: The positional arguments of `model.fit`.
        kwargs: Its keyword arguments.
        batch_size: Positive integer, the global batch size.

    Returns:
        A tuple `(args, kwargs)` for `model.fit`, the data under `"x"`.

    Raises:
        ValueError: if the training data holds fewer examples than one batch.
    """
    from keras_batchtune import resizable_data

    fit_kwargs = _bind_fit(args, kwargs)
    x, y = fit_kwargs.get("x"), fit_kwargs.get("y")
    rows = _num_rows([part for part in (x, y) if part is not None])
    if rows is None:
        fit_kwargs.setdefault("x", None)
        return (), fit_kwargs
    if rows < batch_size:
        raise ValueError(
            f"`x` holds {rows} training examples, fewer than one batch of "
            f"{batch_size}: with full batches only, nothing would train."
        )
    weighted = fit_kwargs.get("sample_weight") is not None
    if weighted or fit_kwargs.get("class_weight") is not None:
        kept = rows - rows % batch_size
        for name in ("x", "y", "sample_weight"):
            fit_kwargs[name] = _rows(fit_kwargs.get(name), 0, kept)
        fit_kwargs["batch_size"] = batch_size
        return (), fit_kwargs
    fit_kwargs.pop("y", None)
    fit_kwargs.pop("batch_size", None)
    shuffle = fit_kwargs.pop("shuffle", True)
    fit_kwargs["x"] = resizable_data.resizable(
        x,
        y,
        batch_size=batch_size,
        shuffle=bool(shuffle),
        drop_remainder=True,
    )
    return (), fit_kwargs
