"""Every private Keras name keras_batchtune relies on, behind one function each.

Keras 3 keeps no public API for a few things this package needs: a custom
data adapter (`model.fit` takes a `DataAdapter` subclass as `x`), the step
count of a running `fit`, and an optimizer's raw learning rate, step counter
and gradient accumulators. Each is reached here, and only here, by a
function that says what it returns; `tests/backend/test_keras_internals.py`
checks every one against the installed Keras and fails naming the function
and the Keras version when a release moves a name.

Example:

```python
from keras_batchtune.backend import keras_internals

keras_internals.optimizer_iterations(optimizer)  # the raw step counter
```
"""

import keras


def data_adapter_class():
    """Keras's `DataAdapter` base class, which `fit` takes as its `x`.

    Returns:
        The class `keras.src.trainers.data_adapters.data_adapter.DataAdapter`.
    """
    from keras.src.trainers.data_adapters import data_adapter

    return data_adapter.DataAdapter


def tf_dataset_adapter(dataset):
    """Keras's adapter of a batched `tf.data.Dataset`, for every backend.

    Args:
        dataset: A batched `tf.data.Dataset`.

    Returns:
        A `TFDatasetAdapter`, whose `get_numpy_iterator`, `get_jax_iterator`
        and `get_torch_dataloader` read the dataset for each backend.
    """
    from keras.src.trainers.data_adapters import tf_dataset_adapter as module

    return module.TFDatasetAdapter(dataset)


def epoch_iterator_class():
    """Keras's `EpochIterator` class, base of every backend's `fit` loop.

    Returns:
        The class `keras.src.trainers.epoch_iterator.EpochIterator`.
    """
    from keras.src.trainers import epoch_iterator

    return epoch_iterator.EpochIterator


def epoch_iterator_num_batches(epoch_iterator):
    """The step count a running `fit`'s epoch iterator reads per epoch.

    Args:
        epoch_iterator: An `EpochIterator`.

    Returns:
        Its `_num_batches` (an integer, or None when unknown).
    """
    return epoch_iterator._num_batches


def set_epoch_iterator_num_batches(epoch_iterator, steps):
    """Sets the step count of the epochs an epoch iterator starts next.

    Keras reads the data adapter's `num_batches` once when `fit` starts and
    keeps it in `_num_batches`; `EpochIterator._enumerate_iterator` reads
    it again after calling the adapter's `on_epoch_begin`.

    Args:
        epoch_iterator: An `EpochIterator`.
        steps: Positive integer.
    """
    epoch_iterator._num_batches = int(steps)


def optimizer_learning_rate(optimizer):
    """The object an optimizer reads its learning rate from.

    `optimizer.learning_rate` evaluates a schedule at the current step;
    this returns the `keras.Variable` or the schedule object itself.

    Args:
        optimizer: A `keras.optimizers.Optimizer`.

    Returns:
        Its `_learning_rate`: a `keras.Variable` or a
        `keras.optimizers.schedules.LearningRateSchedule`.
    """
    return optimizer._learning_rate


def set_optimizer_learning_rate(optimizer, learning_rate):
    """Makes an optimizer read its learning rate from a variable or schedule.

    Unlike the public setter, which assigns a value to the existing variable
    (and refuses when the optimizer holds a schedule), this replaces the
    object, so a variable may become a schedule and back.

    Args:
        optimizer: A `keras.optimizers.Optimizer`.
        learning_rate: A `keras.Variable` or a `LearningRateSchedule`.
    """
    optimizer._learning_rate = learning_rate


def optimizer_iterations(optimizer):
    """An optimizer's raw step counter, micro-steps included.

    With `gradient_accumulation_steps=k`, Keras counts micro-batches in
    `_iterations` and exposes `iterations = _iterations // k`.

    Args:
        optimizer: A `keras.optimizers.Optimizer`.

    Returns:
        The `keras.Variable` `_iterations`.
    """
    return optimizer._iterations


def accumulated_gradients(optimizer):
    """An optimizer's gradient accumulators (one per trainable variable).

    Args:
        optimizer: A built `keras.optimizers.Optimizer`.

    Returns:
        The list `_accumulated_gradients`, empty or None without
        `gradient_accumulation_steps`.
    """
    return getattr(optimizer, "_accumulated_gradients", None)


def set_accumulated_gradients(optimizer, accumulators):
    """Gives an optimizer gradient accumulators (Keras's attribute).

    Args:
        optimizer: A built `keras.optimizers.Optimizer`.
        accumulators: A list of `keras.Variable`s, one per trainable
            variable, in the order of `optimizer_trainable_variables`.
    """
    optimizer._accumulated_gradients = accumulators


def optimizer_trainable_variables(optimizer):
    """The variables a built optimizer updates, in its slot order.

    Args:
        optimizer: A built `keras.optimizers.Optimizer`.

    Returns:
        The list `_trainable_variables`.
    """
    return optimizer._trainable_variables


KERAS_VERSION = keras.version()


def epoch_iterator_distribute_strategy(epoch_iterator):
    """The `tf.distribute` strategy a running `fit`'s epoch iterator feeds.

    Only TensorFlow's epoch iterator (`TFEpochIterator`) has one; the JAX
    and PyTorch loops feed one device (or `keras.distribution`'s layout).

    Args:
        epoch_iterator: An `EpochIterator`.

    Returns:
        Its `_distribute_strategy`, or None where it has none.
    """
    return getattr(epoch_iterator, "_distribute_strategy", None)
