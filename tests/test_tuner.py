"""`BatchTuner`: the searched batch size, the coupling, the records.

Every test runs on each Keras backend (tiny MLPs on 600 digits, one epoch
unless a test needs more). Out of memory: `test_tuner_memory.py`; tolerance,
`lr_band` and successive halving: `test_tuner_search.py`; `tf.data` inputs:
`backend/test_tf_data.py`.
"""

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import BACKEND
from conftest import LearningRateLog
from conftest import make_mlp
from search_helpers import build_mlp
from search_helpers import search
from search_helpers import trials

import keras_batchtune
from keras_batchtune import BatchTuner


def test_batch_size_is_searched_and_learning_rate_coupled(
    tmp_path, digits, lr_log
):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=4,
        seed=7,
        min_batch_size=16,
        max_batch_size=256,
        directory=tmp_path,
    )
    batch_hp = tuner.oracle.hyperparameters._hps["batch_size"][0]
    assert isinstance(batch_hp, keras_tuner.engine.hyperparameters.Int)
    assert (batch_hp.min_value, batch_hp.max_value) == (16, 256)
    assert (batch_hp.step, batch_hp.sampling) == (2, "log")

    search(tuner, digits, callbacks=[lr_log])
    done = trials(tuner)
    assert len(done) == 4 and all(t.status == "COMPLETED" for t in done)
    assert len({t.hyperparameters["batch_size"] for t in done}) > 1
    for trial, logged in zip(done, LearningRateLog.log):
        batch_size = trial.hyperparameters["batch_size"]
        assert batch_size in (16, 32, 64, 128, 256)
        expected = trial.hyperparameters["learning_rate"] * batch_size / 32
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)
        assert logged["steps"] == int(np.ceil(600 / batch_size))
        metrics = trial.metrics
        assert metrics.get_last_value("effective_learning_rate") == (
            pytest.approx(expected, rel=1e-6)
        )
        assert metrics.get_last_value("examples_per_second") > 0
        assert metrics.get_last_value("fit_seconds") > 0


@pytest.mark.parametrize(
    "rule, multiplier",
    [
        ("sqrt", lambda r: r**0.5),
        ("none", lambda r: 1.0),
        (lambda r: r**0.75, lambda r: r**0.75),
    ],
)
def test_scaling_rules(tmp_path, digits, lr_log, rule, multiplier):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=3,
        lr_scaling=rule,
        base_batch_size=64,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        ratio = trial.hyperparameters["batch_size"] / 64
        expected = trial.hyperparameters["learning_rate"] * multiplier(ratio)
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)


def test_search_batch_size_becomes_the_reference(
    tmp_path, digits, lr_log, capsys
):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=5,
        directory=tmp_path,
    )
    search(tuner, digits, batch_size=64, verbose=1, callbacks=[lr_log])
    notice = [
        line
        for line in capsys.readouterr().out.splitlines()
        if "search(batch_size=64)" in line
    ]
    assert len(notice) == 1
    assert "still searched" in notice[0]
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        ratio = trial.hyperparameters["batch_size"] / 64
        expected = trial.hyperparameters["learning_rate"] * ratio
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)


def test_base_batch_size_wins_over_search_batch_size(tmp_path, digits, lr_log):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=1,
        seed=5,
        base_batch_size=128,
        directory=tmp_path,
    )
    search(tuner, digits, batch_size=64, callbacks=[lr_log])
    trial = trials(tuner)[0]
    expected = (
        trial.hyperparameters["learning_rate"]
        * trial.hyperparameters["batch_size"]
        / 128
    )
    assert LearningRateLog.log[0]["begin"] == pytest.approx(expected, rel=1e-6)


def test_warmup_ramps_to_the_scaled_rate(tmp_path, digits, lr_log):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("batch_size", 128)
    tuner = BatchTuner(
        lambda hp: make_mlp(0.05),
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=hp,
        warmup_epochs=1,
        directory=tmp_path,
    )
    search(tuner, digits, epochs=2, callbacks=[lr_log])
    per_step = LearningRateLog.log[0]["per_step"]
    steps_per_epoch = 5  # ceil(600 / 128)
    assert len(per_step) == 2 * steps_per_epoch
    assert per_step[0] == pytest.approx(0.05)
    assert per_step[1] == pytest.approx(0.05 * (1 + 3 * 1 / 5))
    assert np.all(np.diff(per_step[: steps_per_epoch + 1]) > 0)
    assert per_step[steps_per_epoch:] == pytest.approx([0.2] * 5)
    effective = trials(tuner)[0].metrics.get_last_value(
        "effective_learning_rate"
    )
    assert effective == pytest.approx(0.2)


def test_learning_rate_schedule_is_scaled(tmp_path, digits, lr_log):
    def build(hp):
        schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 5, 0.5)
        return make_mlp(optimizer=keras.optimizers.SGD(schedule))

    hp = keras_tuner.HyperParameters()
    hp.Fixed("batch_size", 64)
    tuner = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=hp,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    per_step = LearningRateLog.log[0]["per_step"]
    assert per_step[0] == pytest.approx(0.2)
    assert per_step[5] == pytest.approx(0.1)  # decayed by half at step 5


class PeakScore(keras.callbacks.Callback):
    """Logs `val_score`, a score that peaks at the second epoch, so that the
    best epoch is not the last one."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_score"] = -abs(epoch - 1)


class EpochStateLog(keras.callbacks.Callback):
    """Logs, per fit, the accuracy, weights and optimizer variables at each
    epoch end (a class attribute: KerasTuner deep-copies callbacks)."""

    log = []

    def on_train_begin(self, logs=None):
        EpochStateLog.log.append([])

    def on_epoch_end(self, epoch, logs=None):
        optimizer_values = [
            keras.ops.convert_to_numpy(v.value)
            for v in self.model.optimizer.variables
        ]
        EpochStateLog.log[-1].append(
            (logs["val_accuracy"], self.model.get_weights(), optimizer_values)
        )


def test_best_models_carry_the_effective_learning_rate_and_state(
    tmp_path, digits, recwarn
):
    EpochStateLog.log = []
    tuner = BatchTuner(
        build_mlp,
        objective=keras_tuner.Objective("val_score", "max"),
        max_trials=1,
        seed=11,
        min_batch_size=64,
        max_batch_size=256,
        directory=tmp_path,
    )
    search(tuner, digits, epochs=3, callbacks=[PeakScore(), EpochStateLog()])
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_model = tuner.get_best_models(1)[0]
    effective = best_trial.metrics.get_last_value("effective_learning_rate")
    assert float(best_model.optimizer.learning_rate) == pytest.approx(
        effective, rel=1e-6
    )
    hp = best_trial.hyperparameters
    assert effective == pytest.approx(
        hp["learning_rate"] * hp["batch_size"] / 32, rel=1e-6
    )
    # The weights and the optimizer's state (step count, momentum) are the
    # best epoch's (the second), as KerasTuner's checkpoint holds them, and
    # the optimizer's are loaded, not skipped.
    assert not [w for w in recwarn if "Skipping variable" in str(w.message)]
    ((_, _, _), (accuracy, weights, optimizer_values), _) = EpochStateLog.log[0]
    x, y, x_val, y_val = digits
    score = best_model.evaluate(x_val, y_val, verbose=0)[1]
    assert score == pytest.approx(accuracy)
    steps_per_epoch = int(np.ceil(600 / hp["batch_size"]))
    assert int(best_model.optimizer.iterations) == 2 * steps_per_epoch
    loaded = [
        keras.ops.convert_to_numpy(v.value)
        for v in best_model.optimizer.variables
    ]
    assert len(loaded) == len(optimizer_values) > 2
    for got, expected in zip(loaded, optimizer_values):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    for got, expected in zip(best_model.get_weights(), weights):
        np.testing.assert_array_equal(got, expected)


def test_best_models_load_the_optimizer_shaped_as_in_the_trial(
    tmp_path, digits, recwarn
):
    # Warmup installs a schedule (no learning-rate variable) and
    # accumulation adds gradient accumulators: the loaded optimizer has them.
    hp = keras_tuner.HyperParameters()
    hp.Fixed("batch_size", 128)
    tuner = BatchTuner(
        lambda hp: make_mlp(0.05),
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=hp,
        warmup_epochs=1,
        directory=tmp_path,
    )
    search(tuner, digits)
    model = tuner.get_best_models()[0]
    assert not [w for w in recwarn if "Skipping variable" in str(w.message)]
    assert float(model.optimizer.learning_rate) == pytest.approx(0.2)
    assert int(model.optimizer.iterations) == 5  # ceil(600 / 128)


def test_results_summary_shows_the_records(tmp_path, digits, capsys):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=2,
        directory=tmp_path,
    )
    search(tuner, digits)
    capsys.readouterr()
    tuner.results_summary()
    out = capsys.readouterr().out
    for name in (
        "batch_size:",
        "learning_rate:",
        "effective_learning_rate:",
        "examples_per_second:",
        "fit_seconds:",
        "Score:",
    ):
        assert out.count(name) >= 2, name


def test_user_batch_size_in_hyperparameters_is_used(tmp_path, digits, lr_log):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [20, 40])
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=3,
        seed=1,
        hyperparameters=hp,
        directory=tmp_path,
    )
    batch_hps = tuner.oracle.hyperparameters._hps["batch_size"]
    assert len(batch_hps) == 1
    assert isinstance(batch_hps[0], keras_tuner.engine.hyperparameters.Choice)
    search(tuner, digits, callbacks=[lr_log])
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert trial.hyperparameters["batch_size"] in (20, 40)
        assert logged["steps"] == int(
            np.ceil(600 / trial.hyperparameters["batch_size"])
        )


def test_user_batch_size_in_build_is_used(tmp_path, digits, lr_log):
    def build(hp):
        hp.Choice("batch_size", [24, 48])
        return build_mlp(hp)

    tuner = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=3,
        seed=1,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert trial.hyperparameters["batch_size"] in (24, 48)
        assert logged["steps"] == int(
            np.ceil(600 / trial.hyperparameters["batch_size"])
        )


class FitRegistersBatchSize(keras_tuner.HyperModel):
    def build(self, hp):
        return build_mlp(hp)

    def fit(self, hp, model, *args, **kwargs):
        batch_size = hp.Choice("batch_size", [20, 40, 80])
        return model.fit(*args, batch_size=batch_size, **kwargs)


def test_user_batch_size_in_hypermodel_fit_is_used(tmp_path, digits, lr_log):
    tuner = BatchTuner(
        FitRegistersBatchSize(),
        objective="val_accuracy",
        max_trials=4,
        seed=4,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    batch_hps = tuner.oracle.hyperparameters._hps["batch_size"]
    assert len(batch_hps) == 1
    assert batch_hps[0].values == [20, 40, 80]
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        batch_size = trial.hyperparameters["batch_size"]
        assert batch_size in (20, 40, 80)
        # Coupled to the batch the user's fit chose.
        expected = trial.hyperparameters["learning_rate"] * batch_size / 32
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)


class FitPassesKwargs(keras_tuner.HyperModel):
    def build(self, hp):
        return build_mlp(hp)

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, shuffle=hp.Boolean("shuffle"), **kwargs)


def test_hypermodel_with_own_fit_gets_the_batch_size(tmp_path, digits, lr_log):
    tuner = BatchTuner(
        FitPassesKwargs(),
        objective="val_accuracy",
        max_trials=4,
        seed=9,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    done = trials(tuner)
    # The first trial shows the user's fit leaves the batch to the tuner; it
    # runs at the reference batch, and the batch size is searched after it.
    assert done[0].hyperparameters["batch_size"] == 32
    assert LearningRateLog.log[0]["steps"] == int(np.ceil(600 / 32))
    assert "batch_size" in tuner.oracle.get_space()
    assert "shuffle" in tuner.oracle.get_space()
    for trial, logged in zip(done, LearningRateLog.log):
        batch_size = trial.hyperparameters["batch_size"]
        assert logged["steps"] == int(np.ceil(600 / batch_size))


def test_tune_new_entries_false_trains_at_the_reference(
    tmp_path, digits, lr_log
):
    hp = keras_tuner.HyperParameters()
    hp.Float("learning_rate", 0.01, 0.1, sampling="log")
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=1,
        hyperparameters=hp,
        tune_new_entries=False,
        directory=tmp_path,
    )
    assert [p.name for p in tuner.oracle.hyperparameters.space] == [
        "learning_rate"
    ]
    search(tuner, digits, callbacks=[lr_log])
    assert [p.name for p in tuner.oracle.hyperparameters.space] == [
        "learning_rate"
    ]
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert logged["steps"] == int(np.ceil(600 / 32))
        assert logged["begin"] == pytest.approx(
            trial.hyperparameters["learning_rate"]
        )


def test_inputs_with_fixed_batches_are_refused(tmp_path, digits):
    x, y, _, _ = digits

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return x[:10], y[:10]

    tuner = BatchTuner(
        build_mlp, objective="accuracy", max_trials=1, directory=tmp_path
    )
    with pytest.raises(ValueError, match="unbatched `tf.data.Dataset`"):
        tuner.search(Batches(), epochs=1, verbose=0)
    assert tuner.oracle.trials == {}


def test_resume_keeps_finished_trials_and_runs_none_twice(tmp_path, digits):
    def make_tuner(max_trials):
        return BatchTuner(
            build_mlp,
            objective="val_accuracy",
            max_trials=max_trials,
            seed=21,
            directory=tmp_path,
            project_name="resume",
        )

    first = make_tuner(2)
    search(first, digits)
    before = {
        t.trial_id: (t.hyperparameters.values, t.score) for t in trials(first)
    }
    resumed = make_tuner(4)
    search(resumed, digits)
    after = {
        t.trial_id: (t.hyperparameters.values, t.score) for t in trials(resumed)
    }
    assert len(after) == 4
    for trial_id, record in before.items():
        assert after[trial_id] == record


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_batch_size": 0}, "min_batch_size"),
        ({"min_batch_size": 8.5}, "min_batch_size"),
        ({"max_batch_size": -4}, "max_batch_size"),
        ({"max_batch_size": "64"}, "max_batch_size"),
        ({"min_batch_size": 128, "max_batch_size": 64}, "min_batch_size"),
        ({"base_batch_size": 0}, "base_batch_size"),
        ({"base_batch_size": 1.5}, "base_batch_size"),
        ({"lr_scaling": "quadratic"}, "lr_scaling"),
        ({"lr_scaling": lambda r: 0.0}, "lr_scaling"),
        ({"lr_scaling": lambda r: 1.0 - r}, "lr_scaling"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": "2"}, "warmup_epochs"),
    ],
)
def test_bad_input_is_refused_before_writing(tmp_path, kwargs, name):
    directory = tmp_path / "never"
    with pytest.raises(ValueError, match=f"`{name}`"):
        BatchTuner(
            build_mlp, objective="val_accuracy", directory=directory, **kwargs
        )
    assert not directory.exists()


def test_bad_search_batch_size_is_refused(tmp_path, digits):
    tuner = BatchTuner(
        build_mlp, objective="val_accuracy", max_trials=1, directory=tmp_path
    )
    with pytest.raises(ValueError, match="`batch_size`"):
        search(tuner, digits, batch_size=0)


def test_optimizer_without_settable_learning_rate_stops_the_search(
    tmp_path, digits
):
    def build(hp):
        hp.Float("units", 1, 2)
        return make_mlp(optimizer=keras.optimizers.SGD(lambda: 0.01))

    tuner = BatchTuner(
        build, objective="val_accuracy", max_trials=3, directory=tmp_path
    )
    with pytest.raises(ValueError, match="plain callable"):
        search(tuner, digits)
    assert len(tuner.oracle.trials) == 1


def test_scale_learning_rate_is_public():
    assert keras_batchtune.scale_learning_rate(0.1, 128, 32) == (
        pytest.approx(0.4)
    )


def test_dynamic_batch_size_in_every_trial(tmp_path, digits):
    dynamic = keras_batchtune.DynamicBatchSize(
        "plateau",
        monitor="loss",
        patience=0,
        min_delta=10.0,
        min_batch_size=16,
        max_batch_size=256,
    )
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        min_batch_size=16,
        max_batch_size=32,
        dynamic=dynamic,
        seed=3,
        directory=tmp_path,
    )
    search(tuner, digits, epochs=3)
    for trial in trials(tuner):
        start = trial.hyperparameters["batch_size"]
        history = trial.metrics.get_history("dynamic_batch_size")
        # The first epoch sets the best loss; then the batch doubles.
        assert [entry.value[0] for entry in history] == [
            start,
            start,
            2 * start,
        ]
    # The template itself never trains.
    assert dynamic.batch_size is None


def test_dynamic_must_be_a_callback_covering_the_range(tmp_path):
    with pytest.raises(ValueError, match="`dynamic`"):
        BatchTuner(
            build_mlp,
            objective="val_accuracy",
            dynamic="plateau",
            directory=tmp_path,
        )
    small = keras_batchtune.DynamicBatchSize(
        "plateau", min_batch_size=16, max_batch_size=64
    )
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchTuner(
            build_mlp,
            objective="val_accuracy",
            max_batch_size=128,
            dynamic=small,
            directory=tmp_path,
        )


def test_tensors_of_the_backend_are_batched(tmp_path, digits, lr_log):
    x, y, x_val, y_val = (keras.ops.convert_to_tensor(a) for a in digits)
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=3,
        min_batch_size=64,
        max_batch_size=256,
        directory=tmp_path,
    )
    tuner.search(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=1,
        verbose=0,
        callbacks=[lr_log],
    )
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert trial.status == "COMPLETED"
        batch_size = trial.hyperparameters["batch_size"]
        assert logged["steps"] == int(np.ceil(600 / batch_size))
        assert trial.metrics.get_last_value("examples_per_second") > 0


@pytest.mark.skipif(BACKEND != "torch", reason="a PyTorch DataLoader")
def test_torch_data_loader_is_refused_before_any_trial(tmp_path, digits):
    import torch

    x, y, _, _ = digits
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(
            torch.from_numpy(x), torch.from_numpy(y)
        ),
        batch_size=32,
    )
    tuner = BatchTuner(
        build_mlp, objective="accuracy", max_trials=1, directory=tmp_path
    )
    with pytest.raises(ValueError, match="`x`.*DataLoader"):
        tuner.search(loader, epochs=1, verbose=0)
    assert tuner.oracle.trials == {}


def test_executions_per_trial_average_the_records(tmp_path, digits, lr_log):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=1,
        seed=2,
        min_batch_size=128,
        max_batch_size=256,
        executions_per_trial=2,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    (trial,) = trials(tuner)
    batch_size = trial.hyperparameters["batch_size"]
    # Two fits at the trial's batch size and coupled learning rate.
    expected = trial.hyperparameters["learning_rate"] * batch_size / 32
    assert [entry["steps"] for entry in LearningRateLog.log] == [
        int(np.ceil(600 / batch_size))
    ] * 2
    for entry in LearningRateLog.log:
        assert entry["begin"] == pytest.approx(expected, rel=1e-6)
    metrics = trial.metrics
    assert metrics.get_last_value("effective_learning_rate") == (
        pytest.approx(expected, rel=1e-6)
    )
    assert metrics.get_last_value("fit_seconds") > 0
    assert metrics.get_last_value("examples_per_second") > 0
    model = tuner.get_best_models()[0]
    assert float(model.optimizer.learning_rate) == pytest.approx(expected)
