"""Finding the objects of the running Keras `fit` loop that count its steps.

Keras 3 reads the number of steps per epoch once, when `fit` starts: its
epoch iterator keeps it, the callbacks get it in `params["steps"]`, and the
progress bar in its target. None of them is reachable from a data adapter
or a callback through public API, so an input whose physical batch changes
between epochs finds them on the call stack: `fit` calls the data adapter
from its epoch iterator's methods and the callbacks from its
`CallbackList`'s. Every backend's `fit` (TensorFlow, JAX, PyTorch) runs on
Keras's `EpochIterator`; where it cannot be found (another Keras version,
a custom training loop), the caller falls back to a fixed physical batch.
The private names involved are reached through
`keras_batchtune.backend.keras_internals`.
"""

import sys

import keras

from keras_batchtune.backend import keras_internals

MAX_DEPTH = 12
"""How many frames up the call stack to look."""


def find_caller(cls, max_depth=MAX_DEPTH):
    """Returns the nearest caller on the stack whose `self` is a `cls`.

    Example:

    ```python
    # Inside `DataAdapter.get_jax_iterator()`, called by `fit`:
    iterator = find_caller(epoch_iterator_class())
    ```

    Args:
        cls: A class (or tuple of classes).
        max_depth: Positive integer, the frames to look through.

    Returns:
        The instance, or None if no frame within `max_depth` has one.
    """
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, cls):
            return candidate
        frame = frame.f_back
    return None


def epoch_iterator_class():
    """Keras's `EpochIterator` class, or None where it cannot be imported.

    Example:

    ```python
    epoch_iterator_class().__name__  # "EpochIterator"
    ```

    Returns:
        The base class of every backend's `fit` loop iterator, or None.
    """
    try:
        return keras_internals.epoch_iterator_class()
    except ImportError:  # pragma: no cover - another Keras layout.
        return None


def find_epoch_iterator():
    """The epoch iterator of the `fit` (or `evaluate`) calling this code.

    Example:

    ```python
    # Inside a data adapter's `on_epoch_begin()`, called by `fit`:
    epoch_iterator = find_epoch_iterator()
    ```

    Returns:
        The `EpochIterator` of the nearest caller on the stack, or None.
    """
    iterator_class = epoch_iterator_class()
    if iterator_class is None:  # pragma: no cover - another Keras layout.
        return None
    # One frame more: this function's own.
    return find_caller(iterator_class, MAX_DEPTH + 1)


def set_steps_per_epoch(epoch_iterator, steps):
    """Tells a `fit` loop's epoch iterator how many steps its next epoch has.

    Example:

    ```python
    # In the data adapter's `on_epoch_begin()`, before the epoch's steps
    # are counted:
    set_steps_per_epoch(find_epoch_iterator(), 19)
    ```

    Args:
        epoch_iterator: The `EpochIterator` of a running `fit`, created
            without `steps_per_epoch`.
        steps: Positive integer.

    Returns:
        True if the iterator took it, False if it has no such setting (a
        fixed `steps_per_epoch`, or not an `EpochIterator`).
    """
    iterator_class = epoch_iterator_class()
    if iterator_class is None or not isinstance(epoch_iterator, iterator_class):
        return False
    if getattr(epoch_iterator, "steps_per_epoch", None):
        return False
    keras_internals.set_epoch_iterator_num_batches(epoch_iterator, steps)
    return True


def distribute_strategy_of(epoch_iterator):
    """The `tf.distribute` strategy a running `fit` feeds, or None.

    Example:

    ```python
    strategy = distribute_strategy_of(find_epoch_iterator())
    ```

    Args:
        epoch_iterator: An `EpochIterator`.

    Returns:
        The strategy of TensorFlow's loop; None on JAX and PyTorch.
    """
    return keras_internals.epoch_iterator_distribute_strategy(epoch_iterator)


def progress_bar_of(callback_list):
    """The `ProgbarLogger` of a `CallbackList`, or None.

    Example:

    ```python
    callback_list = find_caller(keras.callbacks.CallbackList)
    progress_bar_of(callback_list)
    ```

    Args:
        callback_list: A `keras.callbacks.CallbackList`, or None.

    Returns:
        Its `keras.callbacks.ProgbarLogger`, or None.
    """
    for callback in getattr(callback_list, "callbacks", []):
        if isinstance(callback, keras.callbacks.ProgbarLogger):
            return callback
    return None
