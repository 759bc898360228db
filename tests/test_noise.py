"""The two-batch noise-scale estimator and its moving-average tracker."""

import json
import math

import numpy as np
import pytest

from keras_batchtune import noise


def _expected_sq_norm(grad_sq_norm, trace_cov, batch_size):
    """E|G_B|^2 = |G|^2 + tr(Sigma) / B."""
    return grad_sq_norm + trace_cov / batch_size


def test_estimator_inverts_the_expected_norms():
    small = _expected_sq_norm(4.0, 84.0, 16)
    large = _expected_sq_norm(4.0, 84.0, 256)
    estimate = noise.estimate_noise_scale(small, large, 16, 256)
    assert estimate == pytest.approx((21.0, 4.0, 84.0))
    assert estimate.b_simple == pytest.approx(21.0)
    assert noise.estimate_parts(small, large, 16, 256) == pytest.approx(
        (4.0, 84.0)
    )


def test_estimator_is_unbiased_on_sampled_gradients():
    # Per-example gradients g ~ N(G, diag(s^2)): |G|^2 and tr(Sigma) known.
    rng = np.random.default_rng(0)
    dim, small, large, num_batches = 20, 8, 128, 200
    mean = np.full(dim, 0.5)  # |G|^2 = 5
    scales = np.linspace(0.5, 2.0, dim)
    true_grad_sq_norm = float(mean @ mean)
    true_trace_cov = float(np.sum(scales**2))
    samples = mean + scales * rng.standard_normal((num_batches, large, dim))
    small_means = samples.reshape(num_batches, large // small, small, dim)
    small_means = small_means.mean(axis=2)
    small_sq = np.mean(np.sum(small_means**2, axis=-1))
    large_sq = np.mean(np.sum(samples.mean(axis=1) ** 2, axis=-1))
    estimate = noise.estimate_noise_scale(small_sq, large_sq, small, large)
    assert estimate.grad_sq_norm == pytest.approx(true_grad_sq_norm, rel=0.1)
    assert estimate.trace_cov == pytest.approx(true_trace_cov, rel=0.1)
    assert estimate.b_simple == pytest.approx(
        true_trace_cov / true_grad_sq_norm, rel=0.15
    )


def test_parts_to_noise_scale_edge_cases():
    assert noise.noise_scale_from_parts(2.0, 10.0).b_simple == 5.0
    assert noise.noise_scale_from_parts(-1.0, 10.0).b_simple == math.inf
    assert noise.noise_scale_from_parts(0.0, 10.0).b_simple == math.inf
    assert math.isnan(noise.noise_scale_from_parts(-1.0, -1.0).b_simple)
    assert noise.noise_scale_from_parts(2.0, -4.0).b_simple == -2.0


@pytest.mark.parametrize(
    "args, name",
    [
        ((1.0, 0.5, 64, 64), "small_batch_size"),
        ((1.0, 0.5, 128, 64), "small_batch_size"),
        ((1.0, 0.5, 0, 64), "small_batch_size"),
        ((1.0, 0.5, 16, 64.0), "large_batch_size"),
        ((1.0, 0.5, True, 64), "small_batch_size"),
        ((math.nan, 0.5, 16, 64), "small_sq_norm"),
        ((1.0, math.inf, 16, 64), "large_sq_norm"),
        ((1.0, "0.5", 16, 64), "large_sq_norm"),
    ],
)
def test_bad_input_names_the_argument(args, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        noise.estimate_noise_scale(*args)


def test_tracker_bias_correction_gives_the_first_value():
    tracker = noise.NoiseScaleTracker(decay=0.99)
    assert tracker.result() is None
    first = tracker.update(
        _expected_sq_norm(4.0, 84.0, 16),
        _expected_sq_norm(4.0, 84.0, 256),
        small_batch_size=16,
        large_batch_size=256,
    )
    assert first == pytest.approx((21.0, 4.0, 84.0))
    for _ in range(5):
        result = tracker.update_parts(4.0, 84.0)
    assert result == pytest.approx((21.0, 4.0, 84.0))
    assert tracker.count == 6


def test_tracker_divides_averages_not_averages_ratios():
    tracker = noise.NoiseScaleTracker(decay=0.5)
    tracker.update_parts(1.0, 10.0)
    result = tracker.update_parts(3.0, 10.0)
    # Bias-corrected weights after two updates: 1/3 and 2/3.
    assert result.grad_sq_norm == pytest.approx(7.0 / 3.0)
    assert result.trace_cov == pytest.approx(10.0)
    assert result.b_simple == pytest.approx(30.0 / 7.0)
    average_of_ratios = (10.0 / 1.0) / 3.0 + (10.0 / 3.0) * 2.0 / 3.0
    assert result.b_simple != pytest.approx(average_of_ratios)


def test_tracker_survives_a_negative_single_estimate():
    tracker = noise.NoiseScaleTracker(decay=0.9)
    tracker.update_parts(4.0, 80.0)
    result = tracker.update_parts(-2.0, 90.0)
    assert result.grad_sq_norm > 0
    assert 0 < result.b_simple < math.inf


def test_tracker_decay_zero_keeps_the_last_update():
    tracker = noise.NoiseScaleTracker(decay=0)
    tracker.update_parts(1.0, 10.0)
    assert tracker.update_parts(2.0, 10.0) == pytest.approx((5.0, 2.0, 10.0))


def test_tracker_state_round_trip_and_reset():
    tracker = noise.NoiseScaleTracker(decay=0.8)
    for grad_sq_norm in (1.0, 2.0, 3.0):
        tracker.update_parts(grad_sq_norm, 30.0)
    state = json.loads(json.dumps(tracker.get_state()))
    restored = noise.NoiseScaleTracker()
    restored.set_state(state)
    assert restored.result() == tracker.result()
    assert restored.update_parts(4.0, 30.0) == tracker.update_parts(4.0, 30.0)
    tracker.reset()
    assert tracker.result() is None


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5, True, "0.9", math.nan])
def test_tracker_bad_decay(decay):
    with pytest.raises(ValueError, match="`decay`"):
        noise.NoiseScaleTracker(decay=decay)
