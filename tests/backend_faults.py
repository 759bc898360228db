"""Real out-of-memory errors on the CPU, per backend (error injection).

`allocate_above(inputs, max_batch_size)` returns `inputs` unchanged while
the batch holds at most `max_batch_size` examples; above it, it asks the
backend's allocator for a tensor of 2**41 elements or more, and the
allocator raises its own out-of-memory error:

- TensorFlow: `tf.errors.ResourceExhaustedError` ("OOM when allocating
  tensor ... by allocator cpu"); the size depends on the dynamic batch, so
  graph optimisation cannot fold it into a constant.
- JAX: `JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating ...`;
  the batch is static while JAX traces a step, and the allocation is made
  at trace time (`jax.ensure_compile_time_eval`), as JAX does on the CPU.
- PyTorch: `RuntimeError: ... DefaultCPUAllocator: can't allocate memory`.
"""

import keras

BACKEND = keras.config.backend()
IMPOSSIBLE_ELEMENTS = 1 << 41


def allocate_above(inputs, max_batch_size):
    """`inputs`, after an impossible allocation if the batch is too large."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        batch_size = tf.shape(inputs)[0]
        rows = tf.maximum(batch_size - max_batch_size, 0) * (1 << 20)
        impossible = tf.fill(tf.stack([rows, 1 << 20]), inputs[0, 0])
        return inputs + 0.0 * tf.reduce_sum(impossible)
    batch_size = inputs.shape[0]
    if batch_size is None or batch_size <= max_batch_size:
        return inputs
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        with jax.ensure_compile_time_eval():
            jnp.zeros((IMPOSSIBLE_ELEMENTS * batch_size,), "float32")
        return inputs
    import torch

    torch.empty(IMPOSSIBLE_ELEMENTS * batch_size, dtype=torch.float32)
    return inputs
