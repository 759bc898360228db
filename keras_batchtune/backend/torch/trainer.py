"""How PyTorch's `fit` loop treats the tuner's callbacks."""

ASYNC_BATCH_CALLBACKS_SAFE = False
"""Batch callbacks run in the training thread during `fit`, as KerasTuner's.

Not measured to help on PyTorch, whose eager steps leave no work to
overlap; KerasTuner's `TunerCallback` keeps its synchronous dispatch.
"""
