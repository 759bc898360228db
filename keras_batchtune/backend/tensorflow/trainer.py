"""How TensorFlow's `fit` loop treats the tuner's callbacks."""

ASYNC_BATCH_CALLBACKS_SAFE = True
"""Batch callbacks may be dispatched on Keras's thread pool during `fit`.

The batch logs are tensors the next step does not reuse; KerasTuner's
`TunerCallback` (whose batch hooks do nothing) is then marked `async_safe`.
"""
