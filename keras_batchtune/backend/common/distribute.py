"""Distribution on a backend without `tf.distribute`: one device.

JAX and PyTorch models have no `tf.distribute` strategy: a model trains on
one replica, and what needs a strategy (`resolve_strategy`, the
multi-worker patch, TPU batches through `tf.data`) raises an error that
names the backend and what to use there instead. The JAX backend replaces
some of these with `keras.distribution` (`backend/jax/distribute.py`).
"""

import keras


def tensorflow_only(feature, instead):
    """The error for a `tf.distribute` feature asked for on this backend.

    Example:

    ```python
    raise tensorflow_only("`resolve_strategy`", "Use keras.distribution.")
    ```

    Args:
        feature: What was asked for, for the message.
        instead: What to use on this backend instead, for the message.

    Returns:
        A ValueError naming the feature, the configured backend and what to
        use instead.
    """
    return ValueError(
        f"{feature} needs `tf.distribute`, which the TensorFlow backend "
        f"has; the configured Keras backend is {keras.config.backend()!r}. "
        f"{instead}"
    )


def refusals(instead):
    """`resolve_strategy` and `patch_for_multi_worker` that refuse here.

    Each backend without `tf.distribute` makes its pair with its own advice.

    Example:

    ```python
    resolve_strategy, patch_for_multi_worker = refusals(
        "Use keras.distribution.")
    ```

    Args:
        instead: What to use on this backend instead, for the messages.

    Returns:
        The pair `(resolve_strategy, patch_for_multi_worker)`, each raising
        `tensorflow_only(..., instead)` whatever its arguments.
    """

    def resolve_strategy(tpu=None, verbose=True):
        """Refuses: `tf.distribute` strategies need the TensorFlow backend.

        Raises:
            ValueError: always, naming the backend and what to use instead.
        """
        raise tensorflow_only(
            "`resolve_strategy` (a `tf.distribute.Strategy`)", instead
        )

    def patch_for_multi_worker(model):
        """Refuses: `MultiWorkerMirroredStrategy` needs TensorFlow.

        Raises:
            ValueError: always, naming the backend and what to use instead.
        """
        raise tensorflow_only(
            "`patch_for_multi_worker` (for `MultiWorkerMirroredStrategy`)",
            instead,
        )

    return resolve_strategy, patch_for_multi_worker


resolve_strategy, patch_for_multi_worker = refusals(
    "Set KERAS_BACKEND=tensorflow to use it."
)


def model_strategy(model):
    """None: a model of this backend has no `tf.distribute` strategy."""
    return None


def num_replicas(strategy):
    """The replicas in sync of a strategy; 1 for None."""
    if strategy is None:
        return 1
    return int(strategy.num_replicas_in_sync)


def even_split(args, kwargs, strategy):
    """`fit` arguments as they are: batches need no even split here."""
    return args, kwargs


def data_processes(distribution=None):
    """1: this process feeds the whole of every batch."""
    return 1


def agree_on_largest_fitting(batch_size):
    """`batch_size` itself: no other host to agree with."""
    return batch_size


def agree_across_hosts(values):
    """`values` themselves: no other host to agree with."""
    return tuple(values)


def is_keras_distribution(value):
    """Tells whether `value` is a `keras.distribution` distribution.

    Keras exports `DataParallel` and `ModelParallel` but not their base
    class: another subclass of it is recognised by what Keras's trainer
    reads of one (its device mesh, batch axis, data layout and scope).

    Example:

    ```python
    is_keras_distribution(keras.distribution.DataParallel())  # True
    ```

    Args:
        value: Anything.

    Returns:
        A bool.
    """
    public = (keras.distribution.DataParallel, keras.distribution.ModelParallel)
    if isinstance(value, public):
        return True
    needed = ("device_mesh", "batch_dim_name", "get_data_layout", "scope")
    return not isinstance(value, type) and all(
        hasattr(type(value), name) for name in needed
    )


def check_tuner_distribution(distribution, distribution_strategy, instead):
    """`BatchTuner`'s distribution arguments where `keras.distribution` is not
    the engine (TensorFlow, PyTorch).

    Example:

    ```python
    check_tuner_distribution(None, strategy, "Use distribution_strategy=.")
    # (None, strategy)
    ```

    Args:
        distribution: `BatchTuner`'s `distribution` argument; must be None.
        distribution_strategy: KerasTuner's `distribution_strategy`; a
            `keras.distribution.Distribution` is refused.
        instead: What to use on this backend, for the messages.

    Returns:
        The pair `(None, distribution_strategy)`.

    Raises:
        ValueError: naming the argument, the backend and what to use
            instead.
    """
    backend = keras.config.backend()
    if distribution is not None:
        raise ValueError(
            "`distribution` (a `keras.distribution.Distribution`) is "
            "supported on the JAX backend; the configured Keras backend is "
            f"{backend!r}. {instead} Received: distribution={distribution!r}"
        )
    if is_keras_distribution(distribution_strategy):
        raise ValueError(
            "`distribution_strategy`: a `keras.distribution.Distribution` "
            "is supported on the JAX backend; the configured Keras backend "
            f"is {backend!r}. {instead} Received: "
            f"distribution_strategy={distribution_strategy!r}"
        )
    return None, distribution_strategy


def is_tpu_strategy(strategy):
    """False: no `tf.distribute` strategy on this backend."""
    return False


def is_multi_worker(strategy):
    """False: no `tf.distribute` strategy on this backend."""
    return False


def check_workers_agree(strategy, batch_size):
    """Nothing to check: one worker."""


def first_worker_values(strategy, values):
    """This worker's `values`, as floats: there is no other."""
    return tuple(float(value) for value in values)


def gather_from_replicas(strategy, values, dtype=None):
    """Refuses: no replicas to gather from on this backend."""
    raise tensorflow_only(
        "Gathering values from replicas", "Set KERAS_BACKEND=tensorflow."
    )


def static_batches(args, kwargs, batch_size):
    """Refuses: static TPU batches are made for a `TPUStrategy`."""
    raise tensorflow_only(
        "Static batches for a `TPUStrategy`",
        "On JAX, Keras compiles one program per batch shape by itself.",
    )


def make_replica_safe(model):
    """Nothing to do: Keras's accumulation step runs on one replica."""


def local_model_copy(model):
    """The model itself: it already trains on this process only."""
    return model


__all__ = [
    "agree_across_hosts",
    "agree_on_largest_fitting",
    "check_tuner_distribution",
    "check_workers_agree",
    "data_processes",
    "even_split",
    "first_worker_values",
    "gather_from_replicas",
    "is_multi_worker",
    "is_keras_distribution",
    "is_tpu_strategy",
    "local_model_copy",
    "make_replica_safe",
    "model_strategy",
    "num_replicas",
    "patch_for_multi_worker",
    "refusals",
    "resolve_strategy",
    "static_batches",
    "tensorflow_only",
]
