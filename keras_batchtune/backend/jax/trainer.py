"""How JAX's `fit` loop treats the tuner's callbacks."""

ASYNC_BATCH_CALLBACKS_SAFE = False
"""Batch callbacks must run in the training thread during `fit`.

Keras's JAX `fit` donates the training state to each step; with batch
callbacks dispatched on a thread pool a step can be handed a buffer already
donated ("INVALID_ARGUMENT: ... Buffer has been deleted or donated", seen
with Keras 3.15.1 and JAX 0.10.2), so KerasTuner's `TunerCallback` keeps
its synchronous dispatch.
"""
