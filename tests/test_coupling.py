import keras
import pytest

from keras_batchtune import coupling


def test_float_learning_rate_is_scaled_in_place():
    optimizer = keras.optimizers.SGD(0.1)
    effective = coupling.couple_learning_rate(optimizer, 256, 32)
    assert effective == pytest.approx(0.8)
    assert float(optimizer.learning_rate) == pytest.approx(0.8)
    # The optimizer keeps a plain, settable learning rate.
    optimizer.learning_rate = 0.5


def test_coupling_twice_starts_from_the_base_again():
    optimizer = keras.optimizers.Adam(1e-3)
    base = coupling.get_base_learning_rate(optimizer)
    coupling.set_learning_rate_multiplier(optimizer, base, 4.0)
    coupling.set_learning_rate_multiplier(optimizer, base, 2.0)
    assert float(optimizer.learning_rate) == pytest.approx(2e-3)


def test_schedule_is_wrapped_and_scaled():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    optimizer = keras.optimizers.SGD(schedule)
    effective = coupling.couple_learning_rate(optimizer, 64, 32, "linear")
    assert effective == pytest.approx(0.2)
    scaled = optimizer._learning_rate
    assert isinstance(scaled, coupling.ScaledLearningRate)
    assert float(scaled(10)) == pytest.approx(0.1)  # 0.2 x 0.5 at step 10
    # Coupling again rescales the original schedule, not the scaled one.
    coupling.couple_learning_rate(optimizer, 128, 32)
    assert optimizer._learning_rate.base is schedule


def test_warmup_ramps_from_base_to_scaled():
    schedule = coupling.ScaledLearningRate(0.1, multiplier=8.0, warmup_steps=10)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(5)) == pytest.approx(0.1 * 4.5)
    assert float(schedule(10)) == pytest.approx(0.8)
    assert float(schedule(1000)) == pytest.approx(0.8)


def test_scaled_schedule_round_trips_through_config():
    inner = keras.optimizers.schedules.CosineDecay(0.1, 100)
    schedule = coupling.ScaledLearningRate(inner, 2.0, 5)
    optimizer = keras.optimizers.SGD(schedule)
    restored = keras.optimizers.SGD.from_config(optimizer.get_config())
    for step in (0, 3, 50):
        assert float(restored._learning_rate(step)) == pytest.approx(
            float(schedule(step))
        )


def test_optimizer_without_settable_learning_rate_is_refused():
    with pytest.raises(ValueError, match="settable|learning_rate"):
        coupling.get_base_learning_rate(object())
    optimizer = keras.optimizers.SGD(lambda: 0.1)
    with pytest.raises(ValueError, match="plain callable"):
        coupling.get_base_learning_rate(optimizer)


def test_loss_scale_optimizer_scales_the_inner_rate():
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    coupling.couple_learning_rate(optimizer, 64, 32)
    assert float(optimizer.inner_optimizer.learning_rate) == pytest.approx(0.2)


def test_schedule_counts_updates_under_accumulation():
    inner = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    schedule = coupling.ScaledLearningRate(inner, 2.0, steps_per_update=4)
    # Keras evaluates the schedule at micro-steps: 8 micro-steps = 2 updates.
    assert float(schedule(8)) == pytest.approx(2.0 * float(inner(2)))
    assert float(schedule(11)) == pytest.approx(2.0 * float(inner(2)))


def test_current_learning_rate_reads_floats_and_schedules_at_the_step():
    assert coupling.current_learning_rate(
        keras.optimizers.SGD(0.1)
    ) == pytest.approx(0.1)
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    optimizer = keras.optimizers.SGD(decay)
    optimizer.build([keras.Variable(1.0)])
    optimizer.iterations.assign(10)
    assert coupling.current_learning_rate(optimizer) == pytest.approx(0.05)


def test_the_optimizer_holds_a_schedule_only_when_it_must():
    assert not coupling.uses_schedule(0.1)
    assert coupling.uses_schedule(0.1, warmup_steps=5)
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    assert coupling.uses_schedule(decay)
    optimizer = keras.optimizers.SGD(0.1)
    assert isinstance(coupling.learning_rate_object(optimizer), keras.Variable)
    # As during a trial with warmup: a schedule, at the scaled rate.
    coupling.set_learning_rate_multiplier(optimizer, 0.1, 4.0, as_schedule=True)
    scaled = coupling.learning_rate_object(optimizer)
    assert isinstance(scaled, coupling.ScaledLearningRate)
    assert float(optimizer.learning_rate) == pytest.approx(0.4)
    wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    assert coupling.inner_optimizer(wrapped) is wrapped.inner_optimizer
