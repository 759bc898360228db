"""Tests of the asynchronous successive-halving rules (pure Python)."""

import pytest

from keras_batchtune import halving


def test_rung_epochs():
    assert halving.rung_epochs(8) == (1, 3, 8)
    assert halving.rung_epochs(9) == (1, 3, 9)
    assert halving.rung_epochs(8, min_epochs=2, factor=2) == (2, 4, 8)
    assert halving.rung_epochs(1) == (1,)
    assert halving.rung_epochs(2, min_epochs=4) == (2,)


def test_promotes_the_best_of_each_factor_finished():
    rungs = [{"a": 0.5, "b": 0.9}, {}]
    assert halving.promotion(rungs, factor=3) is None  # 2 // 3 = 0
    rungs[0]["c"] = 0.7
    assert halving.promotion(rungs, factor=3) == ("b", 1)
    rungs[1]["b"] = None  # promoted, running
    assert halving.promotion(rungs, factor=3) is None
    rungs[0].update(d=0.8, e=0.1, f=0.2)  # 6 finished: top 2 are b, d
    assert halving.promotion(rungs, factor=3) == ("d", 1)


def test_running_and_failed_trials_do_not_count():
    rungs = [{"a": 0.9, "b": None, "c": None}, {}]
    assert halving.promotion(rungs, factor=3) is None


def test_higher_rungs_first_and_min_direction():
    rungs = [
        {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5, "f": 0.6},
        {"a": 0.3, "b": 0.1, "c": 0.2},
        {},
    ]
    # Loss: rung 1's best (b) goes to rung 2 before rung 0's third-best.
    assert halving.promotion(rungs, factor=3, direction="min") == ("b", 2)
    rungs[2]["b"] = 0.05
    assert halving.promotion(rungs, factor=3, direction="min") is None
    with pytest.raises(ValueError, match="direction"):
        halving.promotion(rungs, factor=3, direction="up")


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (False, None),
        (True, {"factor": 3, "min_epochs": 1, "warm_start": True}),
        ({"factor": 2}, {"factor": 2, "min_epochs": 1, "warm_start": True}),
        (
            {"min_epochs": 2, "factor": 4, "warm_start": False},
            {"factor": 4, "min_epochs": 2, "warm_start": False},
        ),
    ],
)
def test_check_successive_halving(value, expected):
    assert halving.check_successive_halving(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "yes",
        3,
        {"factor": 1},
        {"factor": 2.5},
        {"min_epochs": 0},
        {"eta": 3},
        {"warm_start": "yes"},
        {"warm_start": 1},
    ],
)
def test_bad_successive_halving(value):
    with pytest.raises(ValueError, match="successive_halving"):
        halving.check_successive_halving(value)
