"""TensorFlow's out-of-memory error, and memory release between probes."""

import gc

import tensorflow as tf


def is_out_of_memory_error(error):
    """Tells whether `error` is TensorFlow's `ResourceExhaustedError`.

    Example:

    ```python
    is_out_of_memory_error(tf.errors.ResourceExhaustedError(None, None, ""))
    # True
    ```

    Args:
        error: An exception.

    Returns:
        True for `tf.errors.ResourceExhaustedError` (any allocator: "OOM
        when allocating tensor ... by allocator cpu/GPU_0_bfc").
    """
    return isinstance(error, tf.errors.ResourceExhaustedError)


def release_memory():
    """Frees what the last training steps left behind, before the next probe.

    A failed step's traceback holds its frames, and with them the tensors
    they referenced, in reference cycles: a garbage collection lets
    TensorFlow's allocator take those buffers back. (Its BFC allocator keeps
    freed device memory for itself, so nothing is handed to the driver.)

    Example:

    ```python
    release_memory()
    ```
    """
    gc.collect()
