"""Tests of changing gradient accumulation mid-training."""

import keras
import numpy as np
import pytest

from keras_batchtune import accumulation
from tests.conftest import make_mlp


def _train_micro_steps(model, x, y, steps, batch_size=16):
    for step in range(steps):
        start = (step * batch_size) % (len(x) - batch_size)
        model.train_on_batch(
            x[start : start + batch_size], y[start : start + batch_size]
        )


def _accumulated(model):
    return [
        keras.ops.convert_to_numpy(v)
        for v in model.optimizer._accumulated_gradients
    ]


def test_prepare_adds_accumulators_once(digits):
    model = make_mlp()
    model.fit(digits[0][:32], digits[1][:32], verbose=0)
    count = len(model.optimizer.variables)
    accumulation.prepare(model)
    accumulation.prepare(model)
    added = len(model.optimizer.variables) - count
    assert added == len(model.trainable_variables)
    assert accumulation.accumulation_steps(model.optimizer) == 1


def test_growing_keeps_update_count_and_completes_group(digits):
    x, y = digits[0], digits[1]
    model = make_mlp()
    accumulation.prepare(model)
    accumulation.set_accumulation_steps(model.optimizer, 4)
    model.make_train_function(force=True)
    _train_micro_steps(model, x, y, 6)  # one update, two pending
    assert int(model.optimizer.iterations) == 1
    pending = accumulation.set_accumulation_steps(model.optimizer, 8)
    model.make_train_function(force=True)
    assert pending == 2
    assert int(model.optimizer.iterations) == 1
    _train_micro_steps(model, x, y, 5)
    assert int(model.optimizer.iterations) == 1
    _train_micro_steps(model, x, y, 1)  # 2 + 6 = 8 micro-batches
    assert int(model.optimizer.iterations) == 2
    assert all(not a.any() for a in _accumulated(model))


def test_shrinking_reweights_the_partial_group(digits):
    x, y = digits[0], digits[1]
    model = make_mlp()
    accumulation.prepare(model)
    accumulation.set_accumulation_steps(model.optimizer, 8)
    model.make_train_function(force=True)
    _train_micro_steps(model, x, y, 5)
    before = _accumulated(model)
    pending = accumulation.set_accumulation_steps(model.optimizer, 4)
    assert pending == 3
    for old, new in zip(before, _accumulated(model)):
        np.testing.assert_allclose(new, old * 3 / 5, rtol=1e-6)
    assert int(model.optimizer.iterations) == 0
    assert accumulation.set_accumulation_steps(model.optimizer, 1) == 0
    assert model.optimizer.gradient_accumulation_steps is None
    assert all(not a.any() for a in _accumulated(model))


def test_errors():
    model = make_mlp()
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="prepare"):
        accumulation.set_accumulation_steps(model.optimizer, 2)
    accumulation.prepare(model)
    with pytest.raises(ValueError, match="steps"):
        accumulation.set_accumulation_steps(model.optimizer, 0)
    uncompiled = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled"):
        accumulation.prepare(uncompiled)
