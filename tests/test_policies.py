"""Resize policies: pure decision logic, no TensorFlow needed."""

import ast
import json
import math
import pathlib

import numpy as np
import pytest

from keras_batchtune import noise
from keras_batchtune import policies
from keras_batchtune.policies import Decision
from keras_batchtune.policies import GoodputPolicy
from keras_batchtune.policies import NoiseScalePolicy
from keras_batchtune.policies import PlateauPolicy
from keras_batchtune.policies import ResizePolicy
from keras_batchtune.policies import SchedulePolicy

PACKAGE = pathlib.Path(policies.__file__).parent


@pytest.mark.parametrize("module", ["policies.py", "noise.py"])
def test_pure_python_modules_import_no_framework(module):
    tree = ast.parse((PACKAGE / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(f"{node.module}.{node.names[0].name}")
    allowed = {
        "math",
        "numbers",
        "warnings",
        "typing.NamedTuple",
        "keras_batchtune.scaling",
        "keras_batchtune.space",
    }
    assert imported <= allowed, imported - allowed


def _noise(value):
    return {"gradient_noise_scale": value}


# SchedulePolicy


def test_dict_schedule_is_piecewise_constant():
    policy = SchedulePolicy({0: 64, 3: 128})
    assert policy.begin(0, 32).batch_size == 64
    assert policy.next_batch_size(0, 64) == Decision(64, 1.0, "")
    assert policy.next_batch_size(1, 64).batch_size == 64
    decision = policy.next_batch_size(2, 64)  # decides epoch 3
    assert decision.batch_size == 128 and decision.lr_factor == 1.0
    assert "schedule" in decision.reason
    assert policy.next_batch_size(50, 128).batch_size == 128


def test_schedule_leaves_the_batch_before_its_first_epoch():
    policy = SchedulePolicy({5: 128})
    assert policy.begin(0, 32).batch_size == 32
    assert policy.next_batch_size(3, 32).batch_size == 32
    assert policy.next_batch_size(4, 32).batch_size == 128
    # A resumed fit starts at its epoch's scheduled size.
    assert SchedulePolicy({5: 128}).begin(7, 32).batch_size == 128


def test_callable_schedule_and_none_for_no_change():
    policy = SchedulePolicy(lambda epoch: None if epoch < 2 else 32 * epoch)
    assert policy.next_batch_size(0, 16).batch_size == 16
    assert policy.next_batch_size(1, 16).batch_size == 64
    assert policy.next_batch_size(3, 64).batch_size == 128


def test_hybrid_schedule_decays_the_lr_past_the_cap():
    # Smith et al.: batch 256 -> 512 -> (1024 -> 2048 as LR decay).
    schedule = {0: 256, 1: 512, 2: 1024, 3: 2048, 4: 512}
    policy = SchedulePolicy(schedule, max_batch_size=512)
    assert policy.begin(0, 256) == Decision(256, 1.0, "")
    decisions = [policy.next_batch_size(epoch, 512) for epoch in range(4)]
    assert [d.batch_size for d in decisions] == [512, 512, 512, 512]
    assert [d.lr_factor for d in decisions] == [1.0, 0.5, 0.5, 4.0]
    assert "LR x0.5" in decisions[1].reason
    # The cumulative LR factor is applied / requested at every epoch.
    assert math.prod(d.lr_factor for d in decisions[:3]) == 512 / 2048


def test_schedule_without_hybrid_only_clips():
    policy = SchedulePolicy(
        {0: 8, 1: 2048}, hybrid=False, min_batch_size=16, max_batch_size=512
    )
    assert policy.begin(0, 32) == Decision(16, 1.0, "schedule at epoch 0")
    assert policy.next_batch_size(0, 16)[:2] == (512, 1.0)


def test_schedule_clips_below_min_without_lr_change():
    policy = SchedulePolicy({0: 4}, min_batch_size=16)
    assert policy.begin(0, 32)[:2] == (16, 1.0)


def test_schedule_state_survives_a_restart():
    schedule = {0: 512, 1: 1024, 2: 2048}
    policy = SchedulePolicy(schedule, max_batch_size=512)
    assert policy.next_batch_size(0, 512).lr_factor == 0.5
    resumed = SchedulePolicy(schedule, max_batch_size=512)
    resumed.set_state(json.loads(json.dumps(policy.get_state())))
    assert resumed.begin(1, 512).lr_factor == 1.0  # nothing to redo
    assert resumed.next_batch_size(1, 512).lr_factor == 0.5


@pytest.mark.parametrize(
    "schedule, match",
    [
        ({}, "`schedule` must not be empty"),
        ({0: 0}, r"`schedule` must give .* schedule\[0\] = 0"),
        ({0: -32}, "`schedule` must give"),
        ({0: 32.5}, "`schedule` must give"),
        ({0: True}, "`schedule` must give"),
        ({-1: 32}, "`schedule` keys"),
        ({"0": 32}, "`schedule` keys"),
        ([32, 64], "`schedule` must be a dict"),
        ("linear", "`schedule` must be a dict"),
    ],
)
def test_bad_schedules(schedule, match):
    with pytest.raises(ValueError, match=match):
        SchedulePolicy(schedule)


@pytest.mark.parametrize("value", [0, -8, 12.0, "64"])
def test_bad_callable_schedule_fails_when_called(value):
    policy = SchedulePolicy(lambda epoch: value)
    with pytest.raises(ValueError, match=r"`schedule`.*schedule\(1\)"):
        policy.next_batch_size(0, 32)


# PlateauPolicy


def _run_plateau(policy, values, batch_size=32, monitor="val_loss"):
    sizes, factors = [], []
    for epoch, value in enumerate(values):
        decision = policy.next_batch_size(epoch, batch_size, {monitor: value})
        batch_size = decision.batch_size
        sizes.append(batch_size)
        factors.append(decision.lr_factor)
    return sizes, factors


def test_plateau_grows_after_patience_epochs_without_improvement():
    policy = PlateauPolicy(patience=2)
    sizes, factors = _run_plateau(policy, [1.0, 0.9, 0.95, 0.95, 0.8, 0.9])
    assert sizes == [32, 32, 32, 64, 64, 64]
    assert factors == [1.0] * 6


def test_plateau_patience_zero_grows_at_every_stall():
    sizes, _ = _run_plateau(PlateauPolicy(patience=0), [1.0, 1.1, 1.2])
    assert sizes == [32, 64, 128]


def test_plateau_auto_mode_maximises_accuracy():
    policy = PlateauPolicy(monitor="val_accuracy", patience=1)
    sizes, _ = _run_plateau(policy, [0.5, 0.6, 0.55], monitor="val_accuracy")
    assert sizes == [32, 32, 64]
    policy = PlateauPolicy(monitor="val_score", mode="max", patience=1)
    sizes, _ = _run_plateau(policy, [0.5, 0.6, 0.7], monitor="val_score")
    assert sizes == [32, 32, 32]


def test_plateau_min_delta():
    policy = PlateauPolicy(patience=1, min_delta=0.05)
    sizes, _ = _run_plateau(policy, [1.0, 0.97, 0.9])
    assert sizes == [32, 64, 64]


def test_plateau_cooldown():
    # The counting of Keras's ReduceLROnPlateau: the epoch that ends a
    # cooldown counts again.
    policy = PlateauPolicy(patience=1, cooldown=2)
    sizes, _ = _run_plateau(policy, [1.0] * 7)
    assert sizes == [32, 64, 64, 128, 128, 256, 256]
    policy = PlateauPolicy(patience=1, cooldown=0)
    sizes, _ = _run_plateau(policy, [1.0] * 4)
    assert sizes == [32, 64, 128, 256]


def test_plateau_hybrid_decays_the_lr_at_the_cap():
    policy = PlateauPolicy(patience=1, max_batch_size=64)
    sizes, factors = _run_plateau(policy, [1.0, 1.0, 1.0], batch_size=48)
    assert sizes == [48, 64, 64]
    assert factors == [1.0, pytest.approx(64 / 96), 0.5]
    policy = PlateauPolicy(patience=1, max_batch_size=64, hybrid=False)
    sizes, factors = _run_plateau(policy, [1.0, 1.0, 1.0], batch_size=64)
    assert sizes == [64, 64, 64] and factors == [1.0, 1.0, 1.0]


def test_plateau_non_integer_factor_rounds():
    policy = PlateauPolicy(factor=1.5, patience=0)
    sizes, _ = _run_plateau(policy, [1.0, 1.0, 1.0], batch_size=32)
    assert sizes == [32, 48, 72]


def test_plateau_missing_monitor_warns_and_keeps_the_batch():
    policy = PlateauPolicy(monitor="val_loss", patience=0)
    with pytest.warns(UserWarning, match="`val_loss`"):
        decision = policy.next_batch_size(0, 32, {"loss": 1.0})
    assert decision == Decision(32)
    # A measurement dict counts as well as the logs.
    assert policy.next_batch_size(1, 32, None, {"val_loss": 1.0}).batch_size


def test_plateau_state_round_trip():
    policy = PlateauPolicy(patience=2)
    _run_plateau(policy, [1.0, 1.1])
    resumed = PlateauPolicy(patience=2)
    resumed.set_state(json.loads(json.dumps(policy.get_state())))
    assert resumed.next_batch_size(2, 32, {"val_loss": 1.2}).batch_size == 64


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(factor=1), "factor"),
        (dict(factor=0.5), "factor"),
        (dict(factor=math.inf), "factor"),
        (dict(patience=-1), "patience"),
        (dict(patience=1.5), "patience"),
        (dict(min_delta=-0.1), "min_delta"),
        (dict(mode="up"), "mode"),
        (dict(cooldown=-1), "cooldown"),
        (dict(monitor=3), "monitor"),
        (dict(min_batch_size=64, max_batch_size=16), "min_batch_size"),
        (dict(max_batch_size=0), "max_batch_size"),
    ],
)
def test_plateau_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        PlateauPolicy(**kwargs)


# NoiseScalePolicy


def test_noise_scale_moves_to_the_nearest_grid_point():
    policy = NoiseScalePolicy(
        patience=1, min_batch_size=16, max_batch_size=1024
    )
    decision = policy.next_batch_size(0, 32, measurements=_noise(150.0))
    assert decision.batch_size == 128 and decision.lr_factor == 1.0
    assert "150" in decision.reason
    assert policy.next_batch_size(1, 128, measurements=_noise(40.0))[0] == 32
    assert policy.next_batch_size(2, 32, measurements=_noise(1e9))[0] == 1024
    assert policy.next_batch_size(3, 1024, measurements=_noise(0))[0] == 16


def test_noise_scale_reads_noise_scale_tuples_and_logs():
    policy = NoiseScalePolicy(
        patience=1, min_batch_size=16, max_batch_size=1024
    )
    estimate = noise.NoiseScale(300.0, 1.0, 300.0)
    assert policy.next_batch_size(0, 32, None, _noise(estimate))[0] == 256
    assert policy.next_batch_size(1, 256, _noise(60.0))[0] == 64


def test_noise_scale_hysteresis_dead_band():
    policy = NoiseScalePolicy(
        patience=1, min_batch_size=16, max_batch_size=1024
    )
    for epoch, value in enumerate([100, 200, 90, 250, 70, 130]):
        decision = policy.next_batch_size(epoch, 128, _noise(value))
        assert decision == Decision(128), value


def test_noise_scale_does_not_oscillate_on_noisy_estimates():
    rng = np.random.default_rng(0)
    # Estimates scattered around 90, near the boundary of 64 and 128.
    values = 90.0 * np.exp(rng.normal(0.0, 0.3, size=200))

    def changes(policy, batch_size):
        count = 0
        for epoch, value in enumerate(values):
            new = policy.next_batch_size(epoch, batch_size, _noise(value))[0]
            count += new != batch_size
            batch_size = new
        return count

    steady = NoiseScalePolicy(min_batch_size=16, max_batch_size=1024)
    assert changes(steady, 64) <= 2
    assert changes(steady, 128) <= 2
    # What the hysteresis prevents: without it the batch flips each epoch.
    jumpy = NoiseScalePolicy(
        threshold=1.01, patience=1, min_batch_size=16, max_batch_size=1024
    )
    assert changes(jumpy, 64) == 200
    # The dead band alone (patience=1) already moves far less.
    band = NoiseScalePolicy(patience=1, min_batch_size=16, max_batch_size=1024)
    assert changes(band, 64) < 40


def test_noise_scale_patience_needs_consecutive_measurements():
    policy = NoiseScalePolicy(min_batch_size=16)  # patience=2 by default
    assert policy.next_batch_size(0, 32, _noise(256.0))[0] == 32
    assert policy.next_batch_size(1, 32, _noise(40.0))[0] == 32  # resets
    assert policy.next_batch_size(2, 32, _noise(256.0))[0] == 32
    assert policy.next_batch_size(3, 32, {})[0] == 32  # no measurement
    assert policy.next_batch_size(4, 32, _noise(256.0))[0] == 256
    assert policy.get_state() == {"direction": 0, "count": 0}


def test_noise_scale_ignores_missing_and_nan_and_caps_inf():
    policy = NoiseScalePolicy(
        patience=1, min_batch_size=16, max_batch_size=1000
    )
    assert policy.next_batch_size(0, 64, {}, None) == Decision(64)
    assert policy.next_batch_size(1, 64, _noise(math.nan)) == Decision(64)
    assert policy.next_batch_size(2, 64, _noise(math.inf))[0] == 512
    unbounded = NoiseScalePolicy(patience=1, min_batch_size=16)
    assert unbounded.next_batch_size(0, 64, _noise(math.inf))[0] == 128
    assert unbounded.next_batch_size(1, 64, _noise(5000.0))[0] == 4096


def test_noise_scale_scale_and_off_grid_current():
    policy = NoiseScalePolicy(scale=0.5, patience=1, min_batch_size=16)
    assert policy.next_batch_size(0, 32, _noise(512.0))[0] == 256
    assert policy.next_batch_size(1, 48, _noise(200.0))[0] == 128
    assert policy.next_batch_size(2, 48, _noise(40.0))[0] == 16


def test_noise_scale_moves_at_least_one_grid_step():
    # With threshold < sqrt(2) the nearest grid point can be the current one.
    policy = NoiseScalePolicy(threshold=1.2, patience=1, min_batch_size=16)
    assert policy.next_batch_size(0, 64, _noise(80.0))[0] == 128
    assert policy.next_batch_size(1, 64, _noise(53.0))[0] == 32
    assert policy.next_batch_size(2, 16, _noise(1.0)) == Decision(16)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(scale=0), "scale"),
        (dict(threshold=1), "threshold"),
        (dict(patience=0), "patience"),
        (dict(min_batch_size=64, max_batch_size=32), "min_batch_size"),
        (dict(min_batch_size=0), "min_batch_size"),
    ],
)
def test_noise_scale_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        NoiseScalePolicy(**kwargs)


# GoodputPolicy


def _step_time_throughputs(a, b, sizes):
    """Throughputs of a time per step a + b * B (seconds)."""
    return {size: size / (a + b * size) for size in sizes}


def test_goodput_efficiency_is_relative_to_the_starting_batch():
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    policy.begin(0, 32)
    assert policy.efficiency(32, 100.0) == 1.0
    assert policy.efficiency(128, 100.0) == pytest.approx(132 / 228)
    assert policy.efficiency(128, math.inf) == 1.0


def test_goodput_explores_upward_from_one_measurement():
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    policy.begin(0, 32)
    measurements = {
        "gradient_noise_scale": 200.0,
        "examples_per_second": 3200.0,
    }
    decision = policy.next_batch_size(0, 32, measurements=measurements)
    # Linear scaling is assumed up to 2x the largest batch measured.
    assert decision.batch_size == 64
    assert "goodput x1.76" in decision.reason
    # With a tiny noise scale doubling gains < 5%: stay.
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    measurements["gradient_noise_scale"] = 1.0
    assert policy.next_batch_size(0, 32, None, measurements)[0] == 32


def test_goodput_switches_only_above_five_percent():
    # Efficiency 1 (infinite noise scale): goodput is the throughput, and
    # 128 vs 64 gains 2(a + 64b) / (a + 128b).
    for a, switch in ((5.0, False), (8.5, True)):
        gain = 2 * (a + 64) / (a + 128)
        assert (gain > 1.05) == switch, gain
        policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
        measurements = {
            "gradient_noise_scale": math.inf,
            "throughput": _step_time_throughputs(a, 1.0, [32, 64]),
        }
        decision = policy.next_batch_size(0, 64, None, measurements)
        assert decision.batch_size == (128 if switch else 64)
        assert policy.step_time_model() == pytest.approx((a, 1.0))


def test_goodput_picks_the_interior_optimum():
    # goodput(B) ~ B / ((a + bB)(phi + B)), maximal at sqrt(a * phi / b).
    a, b, phi = 0.01, 1e-4, 400.0
    sizes = [16, 32, 64, 128, 256, 512, 1024]
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    policy.begin(0, 16)
    measurements = {
        "gradient_noise_scale": phi,
        "throughput": _step_time_throughputs(a, b, sizes),
    }
    decision = policy.next_batch_size(3, 1024, None, measurements)
    expected = max(sizes, key=lambda s: s / ((a + b * s) * (phi + s)))
    assert decision.batch_size == expected == 256
    # From the optimum it stays.
    assert policy.next_batch_size(4, 256, None, measurements)[0] == 256


def test_goodput_shrinks_when_throughput_is_flat():
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    policy.begin(0, 256)
    for epoch, size in enumerate([64, 128, 256]):
        policy.next_batch_size(
            epoch, size, None, {"examples_per_second": 1000.0}
        )
    assert policy.step_time_model() == pytest.approx((0.0, 1e-3))
    decision = policy.next_batch_size(3, 256, _noise(10.0), None)
    assert decision.batch_size == 16


def test_goodput_throughput_records_and_model_clamps():
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    assert policy.step_time_model() is None
    assert policy.next_batch_size(0, 32, _noise(100.0)) == Decision(32)
    policy.record_throughput(32, 100.0)
    policy.record_throughput(32, 80.0)  # the best is kept
    policy.record_throughput(32, math.nan)
    policy.record_throughput(64, -1.0)
    assert policy.throughputs == {32: 100.0}
    assert policy.step_time_model() == pytest.approx((0.32, 0.0))
    # Bigger batches measured faster per step: time per step is constant.
    policy.record_throughput(64, 400.0)
    a, b = policy.step_time_model()
    assert b == 0.0 and a == pytest.approx((0.32 + 0.16) / 2)


def test_goodput_without_noise_scale_records_but_stays():
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    logs = {"examples_per_second": 500.0}
    assert policy.next_batch_size(0, 32, logs) == Decision(32)
    assert policy.throughputs == {32: 500.0}
    assert policy.initial_batch_size == 32


def test_goodput_state_round_trip():
    policy = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    policy.begin(0, 32)
    policy.record_throughput(32, 1000.0)
    policy.record_throughput(64, 1800.0)
    resumed = GoodputPolicy(min_batch_size=16, max_batch_size=1024)
    resumed.set_state(json.loads(json.dumps(policy.get_state())))
    resumed.begin(5, 64)
    assert resumed.initial_batch_size == 32
    assert resumed.throughputs == policy.throughputs
    measurements = _noise(500.0)
    assert resumed.next_batch_size(5, 64, None, measurements) == (
        policy.next_batch_size(5, 64, None, measurements)
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(min_gain=-0.1), "min_gain"),
        (dict(max_extrapolation=0.5), "max_extrapolation"),
        (dict(min_batch_size=64, max_batch_size=32), "min_batch_size"),
    ],
)
def test_goodput_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        GoodputPolicy(**kwargs)


# The base class and get_policy


def test_custom_policy_on_the_base_class():
    class Double(ResizePolicy):
        def next_batch_size(
            self, epoch, current_batch_size, logs=None, measurements=None
        ):
            return Decision(self.clip(2 * current_batch_size))

    policy = Double(max_batch_size=100)
    assert policy.begin(0, 500) == Decision(100)
    assert policy.next_batch_size(0, 64) == Decision(100)
    policy.set_bounds(16, 1024)
    assert policy.grid() == [16, 32, 64, 128, 256, 512, 1024]
    assert policy.snap(90) == 64 and policy.snap(91) == 128
    assert policy.get_state() == {}
    with pytest.raises(NotImplementedError):
        ResizePolicy().next_batch_size(0, 32)
    with pytest.raises(ValueError, match="`epoch`"):
        policy.begin(-1, 32)
    with pytest.raises(ValueError, match="`batch_size`"):
        policy.begin(0, 0)
    with pytest.raises(ValueError, match="`min_batch_size`"):
        policy.set_bounds(64, 16)


@pytest.mark.parametrize(
    "name, kwargs, cls",
    [
        ("schedule", {"schedule": {0: 32}}, SchedulePolicy),
        ("plateau", {"monitor": "loss", "patience": 3}, PlateauPolicy),
        ("noise_scale", {"min_batch_size": 8}, NoiseScalePolicy),
        ("goodput", {"max_batch_size": 512}, GoodputPolicy),
    ],
)
def test_get_policy_by_name(name, kwargs, cls):
    policy = policies.get_policy(name, **kwargs)
    assert isinstance(policy, cls) and policy.name == name


def test_get_policy_passes_objects_through():
    policy = PlateauPolicy()
    assert policies.get_policy(policy) is policy
    with pytest.raises(ValueError, match="Keyword arguments"):
        policies.get_policy(policy, patience=3)


@pytest.mark.parametrize("policy", ["adaptive", "", None, 3, PlateauPolicy])
def test_get_policy_unknown(policy):
    with pytest.raises(ValueError, match="`policy` must be one of") as info:
        policies.get_policy(policy)
    for name in policies.POLICIES:
        assert repr(name) in str(info.value)


def test_get_policy_forwards_bad_arguments():
    with pytest.raises(ValueError, match="`factor`"):
        policies.get_policy("plateau", factor=1)
    with pytest.raises(ValueError, match="`schedule`"):
        policies.get_policy("schedule", schedule={0: 0})
