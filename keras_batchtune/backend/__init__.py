"""What differs between the Keras backends, selected once.

The way Keras keeps `keras/src/backend/{jax,tensorflow,torch}`: each backend
folder has the same module names, and the rest of the package imports them
from here, never deciding on the backend itself.

- `memory`: recognising the backend's out-of-memory error.
- `distribute`: `tf.distribute` strategies (TensorFlow); one device elsewhere.
- `gradients`: per-micro-batch gradients for the noise-scale probe.
- `trainer`: how the backend's `fit` loop treats the tuner's callbacks.
- `summary`: TensorBoard logs (`tf.summary` on TensorFlow; the `tensorboard`
  package's own event writer elsewhere).

`tf_data` (the `tf.data` helpers, for any backend where TensorFlow is
installed), `keras_internals` and `keras_tuner_internals` (every private
Keras and KerasTuner name the package relies on) sit beside them.

Example:

```python
from keras_batchtune import backend

backend.memory.is_out_of_memory_error(error)
backend.BACKEND  # "jax"
```
"""

import keras

BACKEND = keras.config.backend()
"""The Keras backend this package was imported under."""

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")

if BACKEND == "tensorflow":
    from keras_batchtune.backend.tensorflow import distribute
    from keras_batchtune.backend.tensorflow import gradients
    from keras_batchtune.backend.tensorflow import memory
    from keras_batchtune.backend.tensorflow import summary
    from keras_batchtune.backend.tensorflow import trainer
elif BACKEND == "jax":
    from keras_batchtune.backend.jax import distribute
    from keras_batchtune.backend.jax import gradients
    from keras_batchtune.backend.jax import memory
    from keras_batchtune.backend.jax import summary
    from keras_batchtune.backend.jax import trainer
elif BACKEND == "torch":
    from keras_batchtune.backend.torch import distribute
    from keras_batchtune.backend.torch import gradients
    from keras_batchtune.backend.torch import memory
    from keras_batchtune.backend.torch import summary
    from keras_batchtune.backend.torch import trainer
else:
    raise ImportError(
        f"keras_batchtune runs on the Keras backends "
        f"{', '.join(SUPPORTED_BACKENDS)}; the configured backend is "
        f"{BACKEND!r}. Set KERAS_BACKEND to one of them before importing "
        "keras."
    )

__all__ = [
    "BACKEND",
    "SUPPORTED_BACKENDS",
    "distribute",
    "gradients",
    "memory",
    "summary",
    "trainer",
]
