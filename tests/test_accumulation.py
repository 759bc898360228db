"""Tests of gradient accumulation and of changing it mid-training.

Run on every backend: Keras's `gradient_accumulation_steps` (JAX has its
own accumulation step, `JaxOptimizer._backend_apply_gradients`; PyTorch
and TensorFlow the base optimizer's) and `set_accumulation_steps`.
"""

import keras
import numpy as np
import pytest

from keras_batchtune import accumulation
from keras_batchtune.backend import keras_internals
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
        for v in keras_internals.accumulated_gradients(model.optimizer)
    ]


def _iterations(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _optimizer(name, **kwargs):
    if name == "sgd_momentum":
        return keras.optimizers.SGD(0.05, momentum=0.9, **kwargs)
    return keras.optimizers.Adam(1e-3, **kwargs)


def _model(optimizer, weights=None):
    model = make_mlp(optimizer=optimizer)
    if weights is not None:
        model.set_weights(weights)
    return model


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
@pytest.mark.parametrize("how", ["keras", "set_accumulation_steps"])
def test_four_micro_batches_of_16_equal_one_update_at_64(
    digits, optimizer, how
):
    # Two updates, so the momentum (SGD) and moment estimates (Adam) of
    # the first one are used by the second.
    x, y = digits[0][:128], digits[1][:128]
    keras.utils.set_random_seed(0)
    reference = _model(_optimizer(optimizer))
    weights = reference.get_weights()
    for start in (0, 64):
        reference.train_on_batch(x[start : start + 64], y[start : start + 64])
    if how == "keras":
        accumulated = _model(
            _optimizer(optimizer, gradient_accumulation_steps=4), weights
        )
    else:
        accumulated = _model(_optimizer(optimizer), weights)
        accumulation.prepare(accumulated)
        accumulation.set_accumulation_steps(accumulated.optimizer, 4)
        accumulated.make_train_function(force=True)
    for start in range(0, 128, 16):
        accumulated.train_on_batch(x[start : start + 16], y[start : start + 16])
    assert _iterations(reference) == _iterations(accumulated) == 2
    for got, expected in zip(
        accumulated.get_weights(), reference.get_weights()
    ):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # The weights moved: the comparison is not between two untouched models.
    assert not np.allclose(reference.get_weights()[0], weights[0], atol=1e-4)


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
    assert _iterations(model) == 1
    pending = accumulation.set_accumulation_steps(model.optimizer, 8)
    model.make_train_function(force=True)
    assert pending == 2
    assert _iterations(model) == 1
    _train_micro_steps(model, x, y, 5)
    assert _iterations(model) == 1
    _train_micro_steps(model, x, y, 1)  # 2 + 6 = 8 micro-batches
    assert _iterations(model) == 2
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
    assert _iterations(model) == 0
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
