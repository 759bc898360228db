"""Finding the objects of the running Keras `fit` loop that count its steps.

Keras 3 reads the number of steps per epoch once, when `fit` starts: its
epoch iterator keeps it (`EpochIterator._num_batches`), the callbacks get it
in `params["steps"]`, and the progress bar in its target. None of them is
reachable from a data adapter or a callback through public API, so an input
whose physical batch changes between epochs finds them on the call stack:
`fit` calls the data adapter from its epoch iterator's methods and the
callbacks from its `CallbackList`'s. Where they cannot be found (another
Keras version, another backend's loop), the caller falls back to a fixed
physical batch.
"""

import sys

import keras

MAX_DEPTH = 12
"""How many frames up the call stack to look."""


def find_caller(cls, max_depth=MAX_DEPTH):
    """Returns the nearest caller on the stack whose `self` is a `cls`.

    Example:

    ```python
    from keras.src.trainers import epoch_iterator
    # Inside `DataAdapter.get_tf_dataset()`, called by `fit`:
    iterator = find_caller(epoch_iterator.EpochIterator)
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
    """Keras's `EpochIterator` class, or None where it cannot be imported."""
    try:
        from keras.src.trainers.epoch_iterator import EpochIterator
    except ImportError:  # pragma: no cover - another Keras layout.
        return None
    return EpochIterator


def set_steps_per_epoch(epoch_iterator, steps):
    """Tells a `fit` loop's epoch iterator how many steps its next epoch has.

    Args:
        epoch_iterator: The `EpochIterator` of a running `fit`, created
            without `steps_per_epoch`.
        steps: Positive integer.

    Returns:
        True if the iterator took it, False if it has no such setting.
    """
    if getattr(epoch_iterator, "steps_per_epoch", None):
        return False
    if not hasattr(epoch_iterator, "_num_batches"):
        return False
    epoch_iterator._num_batches = int(steps)
    return True


def progress_bar_of(callback_list):
    """The `ProgbarLogger` of a `CallbackList`, or None."""
    for callback in getattr(callback_list, "callbacks", []):
        if isinstance(callback, keras.callbacks.ProgbarLogger):
            return callback
    return None
