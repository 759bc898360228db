"""The gradient noise scale measured on real Keras models (TensorFlow)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_batchtune import gradients
from keras_batchtune import noise

# Closed-form case (science.md): y = x.w* + eps, x ~ N(0, I_d),
# eps ~ N(0, sigma^2), loss (x.w - y)^2 at w = w* + e:
#   |G|^2 = 4|e|^2, tr(Sigma) = 4((d + 1)|e|^2 + d sigma^2).
DIM = 10
SIGMA = 1.0
ERROR_NORM = 1.0
NUM_EXAMPLES = 16384
TRUE_GRAD_SQ_NORM = 4 * ERROR_NORM**2
TRUE_TRACE_COV = 4 * ((DIM + 1) * ERROR_NORM**2 + DIM * SIGMA**2)
TRUE_B_SIMPLE = TRUE_TRACE_COV / TRUE_GRAD_SQ_NORM  # 21


def _regression(seed=0, num_examples=NUM_EXAMPLES):
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal((DIM, 1))
    x = rng.standard_normal((num_examples, DIM))
    y = x @ w_star + SIGMA * rng.standard_normal((num_examples, 1))
    e = rng.standard_normal((DIM, 1))
    e *= ERROR_NORM / np.linalg.norm(e)
    weights = (w_star + e).astype("float32")
    return x.astype("float32"), y.astype("float32"), weights


def _linear_model(weights, regularizer=None):
    """A bias-free linear model with MSE loss, at the given weights."""
    model = keras.Sequential(
        [
            keras.Input((DIM,)),
            keras.layers.Dense(
                1, use_bias=False, kernel_regularizer=regularizer
            ),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.layers[0].kernel.assign(weights)
    return model


def _relative_errors(estimate):
    return {
        "b_simple": estimate.b_simple / TRUE_B_SIMPLE - 1,
        "grad_sq_norm": estimate.grad_sq_norm / TRUE_GRAD_SQ_NORM - 1,
        "trace_cov": estimate.trace_cov / TRUE_TRACE_COV - 1,
    }


def test_closed_form_linear_regression_within_15_percent():
    x, y, weights = _regression()
    model = _linear_model(weights)
    estimate = gradients.gradient_noise_scale(
        model,
        (x, y),
        small_batch_size=16,
        large_batch_size=512,
        num_batches=32,
        seed=0,
    )
    assert isinstance(estimate, noise.NoiseScale)
    errors = _relative_errors(estimate)
    for name, error in errors.items():
        assert abs(error) < 0.15, (name, errors, estimate)
    # With this seed the errors are about 1.5%, 1.5% and 3%.
    assert max(abs(error) for error in errors.values()) < 0.05, errors


def _numpy_mean_gradient(x, y, w, sample_weight=None, l2=0.0):
    """Gradient of mean(sw * (x.w - y)^2) + l2 * |w|^2, by hand."""
    residual = x @ w - y
    if sample_weight is not None:
        residual = residual * sample_weight[:, None]
    return 2.0 * x.T @ residual / len(x) + 2.0 * l2 * w


@pytest.mark.parametrize("use_regularizer", [False, True])
@pytest.mark.parametrize("use_sample_weight", [False, True])
def test_probe_norms_match_hand_gradients(use_regularizer, use_sample_weight):
    x, y, weights = _regression(num_examples=64)
    l2 = 0.05 if use_regularizer else 0.0
    regularizer = keras.regularizers.L2(l2) if use_regularizer else None
    model = _linear_model(weights, regularizer)
    sample_weight = None
    if use_sample_weight:
        rng = np.random.default_rng(1)
        sample_weight = rng.uniform(0.5, 1.5, 64).astype("float32")
    probe = gradients.GradientNoiseProbe(
        model, small_batch_size=16, large_batch_size=64
    )
    small_sq, large_sq = probe(x, y, sample_weight)

    w = weights.astype("float64")
    parts = []
    for start in range(0, 64, 16):
        sw = None if sample_weight is None else sample_weight[start:][:16]
        parts.append(
            _numpy_mean_gradient(
                x[start : start + 16], y[start : start + 16], w, sw, l2
            )
        )
    expected_small = np.mean([np.sum(g**2) for g in parts])
    expected_large = np.sum(np.mean(parts, axis=0) ** 2)
    np.testing.assert_allclose(small_sq, expected_small, rtol=1e-4)
    np.testing.assert_allclose(large_sq, expected_large, rtol=1e-4)


def test_dataset_and_arrays_give_the_same_estimate():
    x, y, weights = _regression(num_examples=2048)
    model = _linear_model(weights)
    kwargs = dict(small_batch_size=32, large_batch_size=256, num_batches=8)
    from_arrays = gradients.gradient_noise_scale(
        model, (x, y), shuffle=False, **kwargs
    )
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    from_dataset = gradients.gradient_noise_scale(model, dataset, **kwargs)
    from_batched = gradients.gradient_noise_scale(
        model, dataset.batch(100), **kwargs
    )
    np.testing.assert_allclose(from_dataset, from_arrays, rtol=1e-4)
    np.testing.assert_allclose(from_batched, from_arrays, rtol=1e-4)


def test_nothing_is_updated(digits):
    x_train, y_train, _, _ = digits
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0)
    before = [v.numpy().copy() for v in model.variables]
    optimizer_before = [v.numpy().copy() for v in model.optimizer.variables]
    metrics_before = [v.numpy().copy() for v in model.metrics_variables]

    estimate = gradients.gradient_noise_scale(
        model,
        (x_train, y_train),
        small_batch_size=8,
        large_batch_size=64,
        num_batches=4,
        seed=0,
    )
    assert np.isfinite(estimate.grad_sq_norm)
    assert np.isfinite(estimate.trace_cov) and estimate.trace_cov > 0
    for old, variable in zip(before, model.variables):
        np.testing.assert_array_equal(old, variable.numpy(), variable.path)
    for old, variable in zip(optimizer_before, model.optimizer.variables):
        np.testing.assert_array_equal(old, variable.numpy(), variable.path)
    for old, variable in zip(metrics_before, model.metrics_variables):
        np.testing.assert_array_equal(old, variable.numpy(), variable.path)


def test_mirrored_strategy_matches_one_device(mirrored_strategy):
    x, y, weights = _regression(num_examples=1024)
    single = _linear_model(weights)
    with mirrored_strategy.scope():
        mirrored = _linear_model(weights)
    # 64 = 2 replicas x 32: the replica gradients are the small batches;
    # 64 = 2 replicas x 2 micro-batches of 16.
    for small in (32, 16):
        kwargs = dict(
            small_batch_size=small,
            large_batch_size=64,
            num_batches=16,
            shuffle=False,
        )
        expected = gradients.gradient_noise_scale(single, (x, y), **kwargs)
        measured = gradients.gradient_noise_scale(mirrored, (x, y), **kwargs)
        np.testing.assert_allclose(measured, expected, rtol=1e-4)


def test_mirrored_strategy_needs_a_multiple_of_the_replicas(
    mirrored_strategy,
):
    x, y, weights = _regression(num_examples=256)
    with mirrored_strategy.scope():
        model = _linear_model(weights)
    with pytest.raises(ValueError, match="`large_batch_size`.*2 replicas"):
        gradients.GradientNoiseProbe(
            model, small_batch_size=16, large_batch_size=48
        )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(small_batch_size=16, large_batch_size=40), "large_batch_size"),
        (dict(small_batch_size=64, large_batch_size=64), "small_batch_size"),
        (dict(small_batch_size=0, large_batch_size=64), "small_batch_size"),
        (dict(small_batch_size=16, large_batch_size=6.4), "large_batch_size"),
        (
            dict(small_batch_size=16, large_batch_size=64, num_batches=0),
            "num_batches",
        ),
    ],
)
def test_bad_batch_sizes_name_the_argument(kwargs, name):
    x, y, weights = _regression(num_examples=128)
    model = _linear_model(weights)
    with pytest.raises(ValueError, match=f"`{name}`"):
        gradients.gradient_noise_scale(model, (x, y), **kwargs)


def test_bad_data_and_model():
    x, y, weights = _regression(num_examples=32)
    model = _linear_model(weights)
    with pytest.raises(ValueError, match="`data` holds 32 examples"):
        gradients.gradient_noise_scale(
            model, (x, y), small_batch_size=16, large_batch_size=64
        )
    with pytest.raises(ValueError, match="`data` yields 32 examples"):
        gradients.gradient_noise_scale(
            model,
            tf.data.Dataset.from_tensor_slices((x, y)),
            small_batch_size=16,
            large_batch_size=64,
        )
    with pytest.raises(ValueError, match="`data` must be"):
        gradients.gradient_noise_scale(
            model, x, small_batch_size=8, large_batch_size=16
        )
    uncompiled = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`model` must be compiled"):
        gradients.gradient_noise_scale(
            uncompiled, (x, y), small_batch_size=8, large_batch_size=16
        )
