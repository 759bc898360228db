import math

import pytest

from keras_batchtune import ranking


@pytest.mark.parametrize("tolerance", [0, 0.005, 1, 2.5])
def test_tolerance_accepts_numbers_at_least_zero(tolerance):
    assert ranking.check_tolerance(tolerance) == tolerance
    assert ranking.check_tolerance(None) is None


@pytest.mark.parametrize(
    "tolerance", [-0.001, math.nan, math.inf, "0.01", True, [0.01]]
)
def test_bad_tolerance_names_the_argument(tolerance):
    with pytest.raises(ValueError, match="`tolerance` must be None") as info:
        ranking.check_tolerance(tolerance)
    assert "finite number >= 0" in str(info.value)
    assert f"tolerance={tolerance!r}" in str(info.value)


def test_within_tolerance_is_inclusive_despite_rounding():
    # 0.98 - 0.975 == 0.0050000000000000044 in floating point.
    assert ranking.within_tolerance(0.975, 0.98, 0.005, "max")
    assert not ranking.within_tolerance(0.974, 0.98, 0.005, "max")
    assert ranking.within_tolerance(0.305, 0.30, 0.005, "min")
    assert not ranking.within_tolerance(0.306, 0.30, 0.005, "min")
    # Better than the best is always within.
    assert ranking.within_tolerance(0.99, 0.98, 0.0, "max")


def test_no_tolerance_keeps_the_objective_order():
    entries = [(0.981, 4.7), (0.978, 1.3), (0.95, 0.9)]
    assert ranking.preferred_order(entries, None, "max") == [0, 1, 2]
    assert ranking.preferred_order([], 0.01, "max") == []


def test_fastest_within_tolerance_comes_first_then_objective_order():
    # Best score first, as the oracle sorts them.
    entries = [(0.981, 4.7), (0.979, 2.0), (0.978, 1.3), (0.95, 0.9)]
    assert ranking.preferred_order(entries, 0.005, "max") == [2, 1, 0, 3]
    # A zero tolerance only reorders exact ties of the best score.
    tied = [(0.98, 3.0), (0.98, 1.0), (0.97, 0.5)]
    assert ranking.preferred_order(tied, 0, "max") == [1, 0, 2]
    # A huge tolerance ranks by time alone.
    assert ranking.preferred_order(entries, 1.0, "max") == [3, 2, 1, 0]


def test_minimised_objective():
    entries = [(0.20, 5.0), (0.203, 1.0), (0.25, 0.5)]
    assert ranking.preferred_order(entries, 0.005, "min") == [1, 0, 2]
    assert ranking.preferred_order(entries, 0.001, "min") == [0, 1, 2]


def test_equal_times_prefer_the_better_score():
    entries = [(0.981, 2.0), (0.979, 1.0), (0.980, 1.0)]
    assert ranking.preferred_order(entries, 0.005, "max") == [2, 1, 0]


def test_missing_seconds_within_tolerance_keeps_the_objective_order():
    entries = [(0.981, None), (0.979, 1.0), (0.95, 0.5)]
    assert ranking.preferred_order(entries, 0.005, "max") == [0, 1, 2]
    # A trial outside the tolerance may lack seconds: it is not compared.
    entries = [(0.981, 3.0), (0.979, 1.0), (0.95, None)]
    assert ranking.preferred_order(entries, 0.005, "max") == [1, 0, 2]


def test_bad_direction():
    with pytest.raises(ValueError, match="`direction`"):
        ranking.preferred_order([(1.0, 1.0)], 0.1, "up")


def test_pareto_front_maximised():
    entries = [(0.981, 4.7), (0.978, 1.3), (0.95, 2.0), (0.90, 0.8)]
    assert ranking.pareto_front(entries, "max") == [3, 1, 0]


def test_pareto_front_minimised_skips_untimed_and_duplicates():
    entries = [
        (0.30, 1.0),
        (0.20, 3.0),
        (0.20, 3.0),  # equal to the one before: only the first is kept
        (0.25, None),  # no time: not on the front
        (0.35, 1.0),  # as fast as trial 0, worse
        (0.10, 9.0),
    ]
    assert ranking.pareto_front(entries, "min") == [0, 1, 5]
    assert ranking.pareto_front([], "min") == []


def test_front_members_are_not_dominated_and_others_are():
    entries = [
        ((i * 7919) % 101 / 100.0, float((i * 104729) % 37 + 1))
        for i in range(60)
    ]
    front = set(ranking.pareto_front(entries, "max"))

    def dominated(i):
        score, seconds = entries[i]
        return any(
            other_score >= score
            and other_seconds <= seconds
            and (other_score > score or other_seconds < seconds)
            for other_score, other_seconds in entries
        )

    for index in range(len(entries)):
        duplicate_of_member = any(
            entries[index] == entries[member] and member < index
            for member in front
        )
        if index in front:
            assert not dominated(index)
        elif not duplicate_of_member:
            assert dominated(index)
