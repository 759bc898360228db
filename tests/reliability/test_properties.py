"""Property-based tests (hypothesis) of the pure maths.

The learning-rate coupling (`keras_batchtune.scaling`), the batch grids
(`keras_batchtune.space`) and the resize policies
(`keras_batchtune.policies`) hold for every input hypothesis generates, not
only for the examples of their unit tests. `max_examples` is modest and
`deadline=None` (a shared CI machine has slow moments), so the module runs
in a few seconds.
"""

import math

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_batchtune
from keras_batchtune import policies
from keras_batchtune import space

SETTINGS = settings(max_examples=150, deadline=None)

batch_sizes = st.integers(min_value=1, max_value=1 << 16)
learning_rates = st.floats(min_value=1e-8, max_value=1e3)
rules = st.sampled_from(["linear", "sqrt", "none"])


@SETTINGS
@given(learning_rates, batch_sizes, rules)
def test_scaling_is_the_identity_at_the_base_batch(lr, base, rule):
    scaled = keras_batchtune.scale_learning_rate(lr, base, base, rule)
    assert scaled == pytest.approx(lr, rel=1e-12)


@SETTINGS
@given(learning_rates, batch_sizes, batch_sizes, batch_sizes, rules)
def test_scaling_is_monotone_in_the_batch(lr, base, small, large, rule):
    small, large = sorted((small, large))
    at_small = keras_batchtune.scale_learning_rate(lr, small, base, rule)
    at_large = keras_batchtune.scale_learning_rate(lr, large, base, rule)
    if rule == "none":
        assert at_small == at_large == pytest.approx(lr)
    else:
        # Non-decreasing, and strictly increasing where the batch grows.
        assert at_small <= at_large
        if small < large:
            assert at_small < at_large


@SETTINGS
@given(learning_rates, batch_sizes, batch_sizes, batch_sizes, rules)
def test_scaling_composes(lr, batch_a, batch_b, batch_c, rule):
    via_b = keras_batchtune.scale_learning_rate(
        keras_batchtune.scale_learning_rate(lr, batch_b, batch_a, rule),
        batch_c,
        batch_b,
        rule,
    )
    direct = keras_batchtune.scale_learning_rate(lr, batch_c, batch_a, rule)
    assert via_b == pytest.approx(direct, rel=1e-9)


@SETTINGS
@given(
    batch_sizes,
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=2, max_value=8),
)
def test_log_grid_holds_powers_of_the_step_within_bounds(low, span, step):
    high = low * step**span + step - 1  # a bound that is not on the grid
    grid = space.batch_size_grid(low, high, step=step, sampling="log")
    assert grid[0] == low
    assert grid == sorted(set(grid))
    for index, value in enumerate(grid):
        assert value == low * step**index
        assert low <= value <= high
    # Nothing left out: the next grid point is above the bound.
    assert grid[-1] * step > high


@SETTINGS
@given(
    batch_sizes,
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=1, max_value=64),
)
def test_linear_grid_holds_every_step_within_bounds(low, width, step):
    high = low + width
    grid = space.batch_size_grid(low, high, step=step, sampling="linear")
    assert grid == list(range(low, high + 1, step))
    assert all(low <= value <= high for value in grid)


@SETTINGS
@given(
    st.integers(min_value=1, max_value=4096),
    st.integers(min_value=0, max_value=1 << 14),
    st.integers(min_value=1, max_value=64),
    st.booleans(),
    st.sampled_from([1, 8]),
)
def test_aligned_range_holds_only_multiples_of_the_unit(
    low, width, replicas, per_replica, per_replica_multiple
):
    high = low + width
    unit = space.batch_size_unit(replicas, per_replica, per_replica_multiple)
    try:
        aligned_low, aligned_high = space.aligned_batch_range(
            low, high, replicas, per_replica, per_replica_multiple
        )
    except ValueError as error:
        # Refused only when no valid batch exists, and it says why.
        too_small = not per_replica and low < replicas
        no_multiple = -(-low // unit) * unit > high // unit * unit
        assert too_small or no_multiple
        assert "min_batch_size" in str(error) or "max_batch_size" in str(error)
        return
    assert low <= aligned_low <= aligned_high <= high
    # The rounding goes to the nearest multiple inside the range.
    assert aligned_low - low < unit and high - aligned_high < unit
    for value in space.batch_size_grid(aligned_low, aligned_high):
        assert value % unit == 0
        assert aligned_low <= value <= aligned_high
        if not per_replica:
            space.check_global_batch_size(value, replicas)


@SETTINGS
@given(
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=1, max_value=256),
    st.integers(min_value=1, max_value=4096),
)
def test_split_batch_gives_equal_micro_batches_that_fit(
    multiple, units, max_micro
):
    batch = multiple * units
    micro, steps = space.split_batch(batch, max_micro, multiple)
    assert micro * steps == batch
    assert micro % multiple == 0 and micro >= multiple
    if max_micro >= multiple:
        assert micro <= max_micro
    # The fewest steps that fit: one step fewer would not divide or fit.
    for fewer in range(1, steps):
        assert units % fewer or batch // fewer > max_micro


@SETTINGS
@given(
    st.lists(batch_sizes, max_size=20),
    st.one_of(st.none(), batch_sizes),
)
def test_ceiling_only_goes_down_and_filters_strictly(failures, start):
    ceiling = start
    for batch_size in failures:
        lowered = space.lowered_ceiling(ceiling, batch_size)
        assert lowered <= batch_size
        assert ceiling is None or lowered <= ceiling
        ceiling = lowered
    grid = space.batch_size_grid(1, 1 << 17)
    allowed = space.below_ceiling(grid, ceiling)
    assert all(ceiling is None or value < ceiling for value in allowed)
    assert [v for v in grid if v not in allowed] == [
        v for v in grid if ceiling is not None and v >= ceiling
    ]


# Observations a policy may see at an epoch end: any mix of losses,
# accuracies, noise-scale estimates and throughputs, including the awkward
# values (0, inf, nan, negative, missing).
awkward_floats = st.one_of(
    st.floats(min_value=-1e6, max_value=1e9, allow_nan=False),
    st.sampled_from([0.0, math.inf, -math.inf, math.nan, 1e-300]),
)
observations = st.fixed_dictionaries(
    {},
    optional={
        "val_loss": awkward_floats,
        "val_accuracy": awkward_floats,
        "gradient_noise_scale": awkward_floats,
        "examples_per_second": awkward_floats,
    },
)


def make_policy(name, low, high, draw):
    if name == "schedule":
        schedule = draw(
            st.dictionaries(
                st.integers(min_value=0, max_value=30),
                st.integers(min_value=1, max_value=1 << 14),
                min_size=1,
                max_size=6,
            )
        )
        return policies.SchedulePolicy(
            schedule, min_batch_size=low, max_batch_size=high
        )
    if name == "plateau":
        return policies.PlateauPolicy(
            monitor=draw(st.sampled_from(["val_loss", "val_accuracy"])),
            factor=draw(st.floats(min_value=1.01, max_value=10)),
            patience=draw(st.integers(min_value=0, max_value=3)),
            cooldown=draw(st.integers(min_value=0, max_value=2)),
            min_batch_size=low,
            max_batch_size=high,
        )
    if name == "noise_scale":
        return policies.NoiseScalePolicy(
            scale=draw(st.floats(min_value=0.01, max_value=100)),
            threshold=draw(st.floats(min_value=1.01, max_value=8)),
            patience=draw(st.integers(min_value=1, max_value=3)),
            min_batch_size=low,
            max_batch_size=high,
        )
    return policies.GoodputPolicy(
        min_gain=draw(st.floats(min_value=0, max_value=0.5)),
        max_extrapolation=draw(st.floats(min_value=1, max_value=8)),
        min_batch_size=low,
        max_batch_size=high,
    )


@pytest.mark.filterwarnings("ignore:PlateauPolicy is conditioned on")
@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(policies.POLICIES),
    st.integers(min_value=1, max_value=512),
    st.integers(min_value=0, max_value=4096),
    st.integers(min_value=1, max_value=1 << 14),
    st.lists(observations, max_size=25),
    st.data(),
)
def test_resize_policies_never_leave_the_bounds(
    name, low, width, start, epochs, data
):
    high = low + width
    policy = make_policy(name, low, high, data.draw)
    decision = policy.begin(0, start)
    assert low <= decision.batch_size <= high
    current = decision.batch_size
    for epoch, logs in enumerate(epochs):
        # The policy's own throughput table may hold other sizes too.
        measurements = {"throughput": {current * 2: 1.0}} if epoch % 3 else {}
        decision = policy.next_batch_size(epoch, current, logs, measurements)
        assert isinstance(decision.batch_size, int)
        assert low <= decision.batch_size <= high, (epoch, logs, decision)
        assert decision.lr_factor > 0 and math.isfinite(decision.lr_factor)
        # A resumed fit restores the state: it stays within bounds too.
        policy.set_state(policy.get_state())
        current = decision.batch_size
