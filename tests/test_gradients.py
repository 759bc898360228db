"""The gradient noise scale measured on real Keras models, on each backend.

Everything here runs under TensorFlow, JAX and PyTorch, except the
`tf.data` inputs (TensorFlow installed, any backend) and
`MirroredStrategy` (the TensorFlow backend).
"""

import keras
import numpy as np
import pytest

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
    # A second call on the same batch measures the same: nothing drifted.
    assert probe(x, y, sample_weight) == (small_sq, large_sq)

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


def test_backend_tensors_and_arrays_give_the_same_estimate():
    x, y, weights = _regression(num_examples=2048)
    model = _linear_model(weights)
    kwargs = dict(small_batch_size=32, large_batch_size=256, num_batches=8)
    from_arrays = gradients.gradient_noise_scale(
        model, (x, y), shuffle=False, **kwargs
    )
    tensors = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))
    from_tensors = gradients.gradient_noise_scale(
        model, tensors, shuffle=False, **kwargs
    )
    np.testing.assert_allclose(from_tensors, from_arrays, rtol=1e-5)
    shuffled = [
        gradients.gradient_noise_scale(model, data, seed=3, **kwargs)
        for data in ((x, y), tensors)
    ]
    np.testing.assert_allclose(shuffled[1], shuffled[0], rtol=1e-5)


@pytest.mark.requires_tensorflow
def test_dataset_and_arrays_give_the_same_estimate():
    import tensorflow as tf

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


def _values(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def _assert_unchanged(values, variables):
    assert len(values) == len(variables)
    for old, variable in zip(values, variables):
        new = keras.ops.convert_to_numpy(variable)
        np.testing.assert_array_equal(old, new, variable.path)


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
    before = _values(model.variables)
    optimizer_before = _values(model.optimizer.variables)
    metrics_before = _values(model.metrics_variables)

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
    _assert_unchanged(before, model.variables)
    _assert_unchanged(optimizer_before, model.optimizer.variables)
    _assert_unchanged(metrics_before, model.metrics_variables)


class _ProbeDuringFit(keras.callbacks.Callback):
    """Measures with a probe mid-epoch and at each epoch's end."""

    def __init__(self, probe, x, y):
        super().__init__()
        self.probe = probe
        self.x = x
        self.y = y
        self.measured = []

    def on_train_batch_end(self, batch, logs=None):
        if batch in (1, 4):
            self.measured.append(self.probe(self.x, self.y))

    def on_epoch_end(self, epoch, logs=None):
        self.measured.append(self.probe(self.x, self.y))


def _batch_norm_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def test_a_probe_inside_fit_leaves_training_unchanged(digits):
    x_train, y_train, _, _ = digits
    fit_kwargs = dict(batch_size=64, epochs=2, shuffle=False, verbose=0)
    reference = _batch_norm_model()
    expected = reference.fit(x_train, y_train, **fit_kwargs).history

    model = _batch_norm_model()
    probe = gradients.GradientNoiseProbe(
        model, small_batch_size=8, large_batch_size=64
    )
    callback = _ProbeDuringFit(probe, x_train[:64], y_train[:64])
    history = model.fit(x_train, y_train, callbacks=[callback], **fit_kwargs)

    # Two mid-epoch measurements and one at the end of each epoch.
    assert len(callback.measured) == 6
    for small_sq, large_sq in callback.measured:
        assert small_sq > large_sq > 0
    # The measurements see the weights move as training goes on.
    assert len(set(callback.measured)) == 6
    for name in ("loss", "accuracy"):
        np.testing.assert_allclose(
            history.history[name], expected[name], rtol=1e-5
        )
    for variable, reference_variable in zip(
        model.variables, reference.variables
    ):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable),
            keras.ops.convert_to_numpy(reference_variable),
            rtol=1e-5,
            atol=1e-6,
            err_msg=variable.path,
        )


@pytest.mark.tensorflow_backend
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


@pytest.mark.tensorflow_backend
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
    with pytest.raises(ValueError, match="`data` must be"):
        gradients.gradient_noise_scale(
            model, x, small_batch_size=8, large_batch_size=16
        )
    uncompiled = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`model` must be compiled"):
        gradients.gradient_noise_scale(
            uncompiled, (x, y), small_batch_size=8, large_batch_size=16
        )
    frozen = _linear_model(weights)
    frozen.layers[0].trainable = False
    frozen.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="`model` has no trainable weights"):
        gradients.gradient_noise_scale(
            frozen, (x, y), small_batch_size=8, large_batch_size=16
        )
    probe = gradients.GradientNoiseProbe(
        model, small_batch_size=8, large_batch_size=16
    )
    with pytest.raises(ValueError, match="`large_batch_size`=16 examples"):
        probe(x[:24], y[:24])


@pytest.mark.requires_tensorflow
def test_a_dataset_too_small_is_refused():
    import tensorflow as tf

    x, y, weights = _regression(num_examples=32)
    model = _linear_model(weights)
    with pytest.raises(ValueError, match="`data` yields 32 examples"):
        gradients.gradient_noise_scale(
            model,
            tf.data.Dataset.from_tensor_slices((x, y)),
            small_batch_size=16,
            large_batch_size=64,
        )
