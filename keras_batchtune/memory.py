"""Recognising the backend's out-of-memory error."""

import keras


def is_out_of_memory_error(error):
    """Tells whether an exception is the backend's out-of-memory error.

    TensorFlow raises `tf.errors.ResourceExhaustedError`; JAX raises an
    `XlaRuntimeError` whose message starts with `RESOURCE_EXHAUSTED`; PyTorch
    raises `torch.OutOfMemoryError`.

    Example:

    ```python
    try:
        model.fit(x, y, batch_size=4096)
    except Exception as error:
        if not is_out_of_memory_error(error):
            raise
    ```

    Args:
        error: An exception.

    Returns:
        True if `error` reports that an allocation failed for lack of memory.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return isinstance(error, tf.errors.ResourceExhaustedError)
    if backend == "jax":
        return type(error).__name__ == "XlaRuntimeError" and (
            "RESOURCE_EXHAUSTED" in str(error)
        )
    if backend == "torch":
        import torch

        return isinstance(error, torch.OutOfMemoryError)
    return False
