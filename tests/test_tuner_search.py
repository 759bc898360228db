"""`BatchTuner`'s search options: tolerance, `lr_band`, successive halving.

Every test runs on each Keras backend.
"""

import math
import os

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import LearningRateLog
from conftest import make_mlp
from search_helpers import build_mlp
from search_helpers import search
from search_helpers import trials

from keras_batchtune import BatchTuner
from keras_batchtune import halving


def test_tolerance_prefers_the_fastest_configuration(tmp_path, digits, capsys):
    hp = keras_tuner.HyperParameters()
    # 1,200 updates of batch 1 (slow, accurate) vs 6 of batch 200 (fast,
    # poor) in 2 epochs; seed 1 runs batch 1 first, so it also bears the
    # first fit's one-time costs. 200 divides the 600 training and 200
    # validation examples: no last, smaller batch, which JAX would compile
    # once more.
    hp.Choice("batch_size", [1, 200])
    hp.Fixed("learning_rate", 0.01)

    def make_tuner(**kwargs):
        return BatchTuner(
            lambda hp: make_mlp(hp["learning_rate"]),
            objective="val_accuracy",
            max_trials=2,
            seed=1,
            hyperparameters=hp,
            lr_scaling="none",
            directory=tmp_path,
            project_name="cost",
            **kwargs,
        )

    def seconds(trial):
        return trial.metrics.get_last_value("fit_seconds")

    tuner = make_tuner(tolerance=1.0)  # every accuracy is within 1.0
    search(tuner, digits, epochs=2)
    done = trials(tuner)
    fastest = min(done, key=seconds)
    most_accurate = max(done, key=lambda t: t.score)
    assert fastest is not most_accurate, [
        (t.hyperparameters["batch_size"], t.score, seconds(t)) for t in done
    ]
    preferred = tuner.get_best_hyperparameters(2)
    assert preferred[0].values == fastest.hyperparameters.values
    assert preferred[1].values == most_accurate.hyperparameters.values
    x, y, x_val, y_val = digits
    model = tuner.get_best_models()[0]
    score = model.evaluate(x_val, y_val, verbose=0)[1]
    assert score == pytest.approx(fastest.score)
    capsys.readouterr()
    tuner.results_summary()
    out = capsys.readouterr().out
    assert f"Preferred (tolerance 1): trial {fastest.trial_id}" in out
    assert out.index(f"Trial {fastest.trial_id} summary") < out.index(
        f"Trial {most_accurate.trial_id} summary"
    )
    # Reloaded without a tolerance: KerasTuner's ranking, by score alone.
    for tolerance in (None, 0.0):
        again = make_tuner(tolerance=tolerance, overwrite=False)
        best = again.get_best_hyperparameters()[0]
        assert best.values == most_accurate.hyperparameters.values


@pytest.mark.parametrize("tolerance", [-0.01, "0.005", True, float("inf")])
def test_bad_tolerance_is_refused_before_writing(tmp_path, tolerance):
    directory = tmp_path / "never"
    with pytest.raises(ValueError, match="`tolerance` must be None"):
        BatchTuner(
            build_mlp,
            objective="val_accuracy",
            directory=directory,
            tolerance=tolerance,
        )
    assert not directory.exists()


def build_wide_lr_mlp(hp):
    return make_mlp(hp.Float("learning_rate", 1e-4, 1.0, sampling="log"))


def test_lr_band_both_runs_a_range_test_then_fits_the_trials(
    tmp_path, digits, capsys, lr_log
):
    tuner = BatchTuner(
        build_wide_lr_mlp,
        objective="val_accuracy",
        max_trials=7,
        seed=5,
        min_batch_size=16,
        max_batch_size=128,
        lr_band="both",
        directory=tmp_path,
    )
    search(tuner, digits, verbose=1, callbacks=[lr_log])
    out = capsys.readouterr().out
    assert "BatchTuner: range test at batch 32 suggests learning_rate=" in out
    oracle = tuner.oracle
    suggestion = oracle.range_test_learning_rate
    assert 0.01 < suggestion < 1.0  # the good band of this MLP on digits
    done = trials(tuner)
    assert len(done) == 7 and all(t.status == "COMPLETED" for t in done)
    fitted = oracle.fitted_band()
    assert fitted is not None and 0.0 <= fitted.slope <= 1.2
    # Coupling still applies to the sampled (base) learning rate.
    for trial, logged in zip(done, LearningRateLog.log):
        values = trial.hyperparameters.values
        expected = values["learning_rate"] * values["batch_size"] / 32
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)
    # The range-test result is saved: a resumed search does not rerun it.
    again = BatchTuner(
        build_wide_lr_mlp,
        objective="val_accuracy",
        max_trials=7,
        seed=5,
        min_batch_size=16,
        max_batch_size=128,
        lr_band="both",
        directory=tmp_path,
        overwrite=False,
    )
    assert again.oracle.range_test_learning_rate == suggestion
    search(again, digits, verbose=1)
    assert "range test" not in capsys.readouterr().out


def test_lr_band_without_a_learning_rate_hyperparameter_says_so(
    tmp_path, digits, capsys
):
    def build(hp):
        return make_mlp(hp.Float("step", 0.01, 0.1, sampling="log"))

    tuner = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=1,
        lr_band="trials",
        directory=tmp_path,
    )
    search(tuner, digits, verbose=1)
    assert "lr_band='trials' has no effect" in capsys.readouterr().out
    named = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=1,
        lr_band="trials",
        lr_hyperparameter="step",
        directory=tmp_path,
        project_name="named",
    )
    assert named.oracle.learning_rate_hyperparameter().name == "step"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr_band": "auto"}, "lr_band"),
        ({"lr_band": True}, "lr_band"),
        ({"lr_hyperparameter": ""}, "lr_hyperparameter"),
        ({"lr_hyperparameter": 3}, "lr_hyperparameter"),
    ],
)
def test_bad_lr_band_is_refused_before_writing(tmp_path, kwargs, name):
    directory = tmp_path / "never"
    with pytest.raises(ValueError, match=f"`{name}` must be None"):
        BatchTuner(
            build_mlp, objective="val_accuracy", directory=directory, **kwargs
        )
    assert not directory.exists()


def _configuration(values):
    """A trial's values without the successive-halving ones, as a key."""
    return tuple(
        sorted(
            (name, value)
            for name, value in values.items()
            if not name.startswith("tuner/")
        )
    )


def _replay_successive_halving(tuner_trials, budgets, factor):
    """Checks each trial's rung against the rule applied to those before."""
    ended = []
    for trial in tuner_trials:
        values = trial.hyperparameters.values
        rungs = [{} for _ in budgets]
        for earlier in ended:
            earlier_values = earlier.hyperparameters.values
            score = earlier.score if earlier.status == "COMPLETED" else None
            rungs[earlier_values["tuner/rung"]][
                _configuration(earlier_values)
            ] = score
        expected = halving.promotion(rungs, factor, "max")
        rung = values["tuner/rung"]
        assert values["tuner/epochs"] == budgets[rung]
        if expected is None:
            assert rung == 0
        else:
            key, expected_rung = expected
            assert rung == expected_rung
            assert key == _configuration(values)
        ended.append(trial)


def test_successive_halving_promotes_the_best_with_more_epochs(
    tmp_path, digits, lr_log
):
    def make_tuner(max_trials):
        return BatchTuner(
            build_mlp,
            objective="val_accuracy",
            max_trials=max_trials,
            seed=3,
            min_batch_size=32,
            max_batch_size=256,
            successive_halving={"factor": 2, "min_epochs": 1},
            directory=tmp_path,
            project_name="asha",
        )

    search(make_tuner(6), digits, epochs=4, callbacks=[lr_log])
    # Resumed with more trials: the rungs are read back from the trials.
    tuner = make_tuner(10)
    search(tuner, digits, epochs=4, callbacks=[lr_log])
    started = trials(tuner)
    assert len(started) == 10
    # Budgets 1, 2, 4 epochs; every trial trained for its own budget.
    assert [entry["epochs"] for entry in lr_log.log] == [
        trial.hyperparameters.values["tuner/epochs"] for trial in started
    ]
    rungs = [t.hyperparameters.values["tuner/rung"] for t in started]
    assert max(rungs) == 2 and rungs.count(0) >= 4
    _replay_successive_halving(started, (1, 2, 4), factor=2)
    best = tuner.get_best_hyperparameters()[0]
    assert best.values["tuner/epochs"] >= 2


class TrainingStartLog(keras.callbacks.Callback):
    """Logs, per fit, the weights and optimizer step it starts from and the
    epochs it runs (a class attribute: KerasTuner deep-copies callbacks)."""

    log = []

    def on_train_begin(self, logs=None):
        TrainingStartLog.log.append(
            {
                "weights": self.model.get_weights(),
                "iterations": int(self.model.optimizer.iterations),
                "epochs": [],
            }
        )

    def on_epoch_begin(self, epoch, logs=None):
        TrainingStartLog.log[-1]["epochs"].append(epoch)


@pytest.mark.parametrize("warm_start", [True, False])
def test_successive_halving_promotion_continues_the_lower_trial(
    tmp_path, digits, warm_start
):
    TrainingStartLog.log = []
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=3,
        seed=5,
        min_batch_size=64,
        max_batch_size=64,
        successive_halving={
            "factor": 2,
            "min_epochs": 1,
            "warm_start": warm_start,
        },
        directory=tmp_path,
    )
    search(tuner, digits, epochs=2, callbacks=[TrainingStartLog()])
    first, second, promoted = trials(tuner)
    values = promoted.hyperparameters.values
    assert (values["tuner/rung"], values["tuner/epochs"]) == (1, 2)
    lower = max((first, second), key=lambda trial: trial.score)
    steps_per_epoch = math.ceil(len(digits[0]) / 64)
    log = TrainingStartLog.log
    # New configurations start from scratch.
    assert log[0]["iterations"] == log[1]["iterations"] == 0
    assert log[0]["epochs"] == log[1]["epochs"] == [0]
    if not warm_start:
        assert "tuner/trial_id" not in values
        assert log[2]["iterations"] == 0 and log[2]["epochs"] == [0, 1]
        return
    assert values["tuner/trial_id"] == lower.trial_id
    assert values["tuner/initial_epoch"] == 1
    # It starts where the lower trial's checkpoint left off (weights and
    # optimizer state) and trains only its second epoch.
    checkpointed = tuner.load_model(lower).get_weights()
    for started, saved in zip(log[2]["weights"], checkpointed):
        np.testing.assert_array_equal(started, saved)
    assert log[2]["iterations"] == steps_per_epoch
    assert log[2]["epochs"] == [1]


def test_successive_halving_is_checked(tmp_path):
    with pytest.raises(ValueError, match="successive_halving"):
        BatchTuner(
            build_mlp,
            objective="val_accuracy",
            successive_halving={"factor": 1},
            directory=tmp_path,
        )
    assert not os.listdir(tmp_path)
