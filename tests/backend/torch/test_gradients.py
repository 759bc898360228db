"""The PyTorch gradient-noise probe: autograd left as it was found."""

import keras
import numpy as np
import torch

from keras_batchtune.backend.torch import gradients


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def _batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    return x, y


def test_parameter_grads_stay_untouched_and_no_grad_is_no_obstacle():
    model = _model()
    x, y = _batch()
    probe = gradients.GradientNoiseProbe(
        model, small_batch_size=8, large_batch_size=32
    )
    measured = probe(x, y)
    assert measured[0] > measured[1] > 0
    # `torch.autograd.grad` returns the gradients: no `.grad` is filled in,
    # so the next `loss.backward()` of a training step starts clean.
    assert all(w.value.grad is None for w in model.trainable_weights)
    # Under `torch.no_grad()` (a caller's evaluation code) it measures the
    # same.
    with torch.no_grad():
        assert probe(x, y) == measured


def test_torch_tensors_are_measured_like_arrays():
    model = _model()
    x, y = _batch()
    probe = gradients.GradientNoiseProbe(
        model, small_batch_size=8, large_batch_size=32
    )
    from_arrays = probe(x, y)
    from_tensors = probe(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(from_tensors, from_arrays, rtol=1e-6)
    float64 = probe(x.astype("float64"), torch.from_numpy(y).double())
    np.testing.assert_allclose(float64, from_arrays, rtol=1e-6)
