import math

import numpy as np
import pytest

from keras_batchtune import band


def test_check_lr_band_accepts_the_modes_and_names_the_argument():
    assert band.check_lr_band(None) == "off"
    for mode in band.LR_BAND_MODES:
        assert band.check_lr_band(mode) == mode
    with pytest.raises(ValueError, match="`lr_band` must be None, 'off'"):
        band.check_lr_band("auto")
    with pytest.raises(ValueError, match="lr_band=True"):
        band.check_lr_band(True)


def test_interval_is_half_a_decade_each_side():
    low, high = band.interval_around(0.1)
    assert low == pytest.approx(0.1 / math.sqrt(10))
    assert high == pytest.approx(0.1 * math.sqrt(10))


def test_interval_is_shifted_inside_the_range_keeping_its_width():
    assert band.interval_around(1.0, 0.5, 1e-3, 0.1) == pytest.approx(
        (0.01, 0.1)
    )
    assert band.interval_around(1e-5, 0.5, 1e-3, 0.1) == pytest.approx(
        (1e-3, 1e-2)
    )
    # A range narrower than the band is returned whole.
    assert band.interval_around(0.05, 0.5, 0.03, 0.06) == (0.03, 0.06)


def test_fit_recovers_the_ridge_from_the_best_trials():
    # Good trials on lr = 0.001 * B**0.8; poor ones far off the line.
    rng = np.random.default_rng(0)
    batches = [16, 32, 64, 128, 256, 512] * 2
    good = [0.001 * b**0.8 for b in batches[:6]]
    poor = [lr * 10 ** rng.choice([-1.5, 1.5]) for lr in good]
    scores = [0.97] * 6 + [0.5] * 6
    fitted = band.fit_band(
        batches, good + poor, scores, "max", top_fraction=0.5
    )
    assert fitted.slope == pytest.approx(0.8)
    assert fitted.centre(100) == pytest.approx(0.001 * 100**0.8)
    assert fitted.num_trials == 6


def test_fit_minimises_or_maximises_by_direction():
    batches, rates = [16, 64, 256, 16, 64, 256], [0.01, 0.04, 0.16] * 2
    rates = rates[:3] + [1.0, 1.0, 1.0]
    losses = [0.1, 0.1, 0.1, 2.0, 2.0, 2.0]
    by_loss = band.fit_band(batches, rates, losses, "min", top_fraction=0.5)
    assert by_loss.slope == pytest.approx(1.0)
    by_max = band.fit_band(batches, rates, losses, "max", top_fraction=0.5)
    assert by_max.slope == pytest.approx(0.0)


def test_no_band_before_enough_finished_trials():
    assert band.fit_band([16, 32, 64], [0.1, 0.1, 0.1], [1, 2, 3]) is None
    # Non-finite scores do not count.
    scores = [1.0, 2.0, 3.0, math.nan]
    assert band.fit_band([16] * 4, [0.1] * 4, scores) is None


def test_slope_is_clipped_to_its_allowed_range():
    batches = [16, 64, 256, 1024]
    steep = band.fit_band(batches, [1e-4, 1e-2, 1.0, 100.0], [1] * 4)
    assert steep.slope == band.MAX_SLOPE
    falling = band.fit_band(
        batches, [1.0, 0.1, 0.01, 0.001], [1] * 4, top_fraction=1.0
    )
    assert falling.slope == 0.0
    # The intercept is refitted for the clipped slope.
    assert falling.centre(16) == pytest.approx(10 ** np.mean([0, -1, -2, -3]))


def test_one_batch_size_gives_a_band_centred_on_the_best_trial():
    fitted = band.fit_band(
        [64] * 5,
        [0.03, 0.1, 0.3, 1.0, 0.01],
        [0.9, 0.95, 0.99, 0.2, 0.8],
        "max",
        default_slope=1.0,
    )
    assert fitted.centre(64) == pytest.approx(0.3)
    assert fitted.centre(128) == pytest.approx(0.6)


def test_fit_checks_its_arguments():
    with pytest.raises(ValueError, match="`direction` must be"):
        band.fit_band([16], [0.1], [1.0], "up")
    with pytest.raises(ValueError, match="same length"):
        band.fit_band([16, 32], [0.1], [1.0])


def test_power_law_slope_of_the_coupling_rules():
    assert band.power_law_slope(lambda b: b / 32, 16, 1024) == pytest.approx(1)
    assert band.power_law_slope(
        lambda b: math.sqrt(b / 32), 16, 1024
    ) == pytest.approx(0.5)
    assert band.power_law_slope(lambda b: 1.0, 16, 16) == 0.0


def test_smoothing_is_an_unbiased_moving_average():
    assert band.smooth_losses([2.0, 2.0, 2.0], 0.98) == pytest.approx([2.0] * 3)
    assert band.smooth_losses([1.0, 3.0], 0.0) == [1.0, 3.0]
    smoothed = band.smooth_losses([1.0, 3.0], 0.5)
    assert smoothed == pytest.approx([1.0, (0.25 + 1.5) / 0.75])


def test_range_test_stops_past_four_times_the_minimum_or_on_nan():
    assert not band.range_test_has_diverged([])
    assert not band.range_test_has_diverged([2.0, 1.0, 3.9])
    assert band.range_test_has_diverged([2.0, 1.0, 4.1])
    assert band.range_test_has_diverged([2.0, math.nan])


def test_suggestion_is_a_decade_below_the_smallest_loss():
    rates = np.geomspace(1e-4, 10.0, 51)
    losses = (np.log10(rates) - 0.0) ** 2  # smallest at lr = 1
    losses[-1] = math.inf
    assert band.suggest_learning_rate(rates, losses) == pytest.approx(0.1)
    low, high = band.range_test_band(rates, losses, 0.1)
    assert low == pytest.approx(0.1 / math.sqrt(10))
    assert high == pytest.approx(0.1 * math.sqrt(10))


def test_range_test_band_stays_below_the_smallest_loss():
    rates = np.geomspace(1e-3, 1.0, 31)
    losses = np.abs(np.log10(rates) + 1.5)  # smallest at lr = 10**-1.5
    low, high = band.range_test_band(rates, losses, 0.02)
    assert high == pytest.approx(10**-1.5)
    assert low == pytest.approx(0.02 / math.sqrt(10))


def test_suggestion_checks_its_curve():
    with pytest.raises(ValueError, match="same length"):
        band.suggest_learning_rate([0.1, 1.0], [1.0])
    with pytest.raises(ValueError, match="no finite loss"):
        band.suggest_learning_rate([0.1, 1.0], [math.nan, math.inf])
