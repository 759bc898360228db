"""`BatchBayesianOptimization`: batch size searched by a Gaussian process.

Real tiny searches on the current Keras backend (600 digits, one epoch):
the searched batch size, the coupled learning rate, the out-of-memory
ceiling (real allocator errors, `conftest.MemoryLimit`) that neither the
random points nor the Gaussian process cross, resume, tolerance.
KerasTuner's own Bayesian tests: `test_dropin_family.py`.
"""

import inspect

import keras_tuner
import numpy as np
import pytest
from conftest import LearningRateLog
from search_helpers import build_mlp
from search_helpers import memory_limited
from search_helpers import search
from search_helpers import trials

from keras_batchtune import BatchBayesianOptimization
from keras_batchtune import oracle as oracle_module
from keras_batchtune.backend import keras_tuner_internals
from keras_batchtune.bayesian import BatchBayesianOptimizationOracle


def test_batch_size_is_searched_and_learning_rate_coupled(
    tmp_path, digits, lr_log
):
    tuner = BatchBayesianOptimization(
        build_mlp,
        objective="val_accuracy",
        max_trials=4,
        num_initial_points=2,
        seed=7,
        min_batch_size=16,
        max_batch_size=256,
        lr_scaling="sqrt",
        directory=tmp_path,
    )
    assert isinstance(tuner.oracle, BatchBayesianOptimizationOracle)
    batch_hp = tuner.oracle.hyperparameters._hps["batch_size"][0]
    assert (batch_hp.min_value, batch_hp.max_value) == (16, 256)
    assert (batch_hp.step, batch_hp.sampling) == (2, "log")

    search(tuner, digits, callbacks=[lr_log])
    done = trials(tuner)
    # Two random points, then two from the Gaussian process.
    assert len(done) == 4 and all(t.status == "COMPLETED" for t in done)
    for trial, logged in zip(done, LearningRateLog.log):
        batch_size = trial.hyperparameters["batch_size"]
        assert batch_size in (16, 32, 64, 128, 256)
        expected = (
            trial.hyperparameters["learning_rate"] * (batch_size / 32) ** 0.5
        )
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)
        assert logged["steps"] == int(np.ceil(600 / batch_size))
        assert trial.metrics.get_last_value(
            "effective_learning_rate"
        ) == pytest.approx(expected, rel=1e-6)
        assert trial.metrics.get_last_value("fit_seconds") > 0


def test_out_of_memory_ceiling_holds_through_the_gp_and_a_resume(
    tmp_path, digits
):
    def make_tuner(max_trials):
        return BatchBayesianOptimization(
            memory_limited,  # batches above 100 run out of memory
            objective="val_accuracy",
            max_trials=max_trials,
            num_initial_points=2,
            seed=3,
            min_batch_size=64,
            max_batch_size=512,
            directory=tmp_path,
            project_name="ceiling",
        )

    first = make_tuner(4)
    search(first, digits)
    before = {
        t.trial_id: (t.status, t.hyperparameters.values, t.score)
        for t in trials(first)
    }
    resumed = make_tuner(7)
    assert resumed.oracle.batch_size_ceiling == first.oracle.batch_size_ceiling
    search(resumed, digits)
    done = trials(resumed)
    assert len(done) == 7
    for trial in done:  # nothing re-run
        if trial.trial_id in before:
            record = (trial.status, trial.hyperparameters.values, trial.score)
            assert record == before[trial.trial_id]
    failed = [t for t in done if t.status == "FAILED"]
    assert failed, "no trial ran out of memory: pick another seed"
    ceiling = None
    for trial in done:
        batch_size = trial.hyperparameters["batch_size"]
        if ceiling is not None:
            assert batch_size < ceiling, (trial.trial_id, batch_size)
        if trial.status == "FAILED":
            assert trial.message == f"out of memory at batch {batch_size}"
            ceiling = min(ceiling or batch_size, batch_size)
    assert resumed.oracle.batch_size_ceiling == 128
    completed = [t for t in done if t.status == "COMPLETED"]
    # The Gaussian process proposed the later trials (2 random points).
    assert len(completed) > 2
    assert all(t.hyperparameters["batch_size"] == 64 for t in completed)


def test_gaussian_process_box_ends_below_the_ceiling(tmp_path):
    hps = keras_tuner.HyperParameters()
    hps.Int("batch_size", 16, 512, step=2, sampling="log")
    hps.Float("x", 0.0, 1.0)
    oracle = BatchBayesianOptimizationOracle(
        objective=keras_tuner.Objective("score", "max"),
        max_trials=30,
        num_initial_points=3,
        hyperparameters=hps,
        seed=0,
    )
    oracle._set_project_dir(str(tmp_path), "box")
    # The larger the batch, the better: the Gaussian process is drawn to
    # the top of the range, which runs out of memory from 128 on.
    for index in range(12):
        trial = oracle.create_trial(f"tuner{index}")
        batch_size = trial.hyperparameters["batch_size"]
        if batch_size >= 128:
            metrics = {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: batch_size}
            oracle.update_trial(trial.trial_id, metrics)
        else:
            oracle.update_trial(trial.trial_id, {"score": batch_size})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    ceiling = None
    for trial_id in oracle.start_order:
        batch_size = oracle.trials[trial_id].hyperparameters["batch_size"]
        if ceiling is not None:
            assert batch_size < ceiling, (trial_id, batch_size)
        if oracle.trials[trial_id].status == "FAILED":
            ceiling = batch_size
    assert oracle.batch_size_ceiling == ceiling == 128
    bounds = oracle._get_hp_bounds()
    assert bounds[0][1] < 0.5 and bounds[1].tolist() == [0.0, 1.0]
    batch_hp = oracle.hyperparameters._hps["batch_size"][0]
    assert batch_hp.prob_to_value(bounds[0][1]) == 64


def test_tolerance_puts_the_fastest_first(tmp_path, digits):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [8, 200])
    tuner = BatchBayesianOptimization(
        build_mlp,
        objective="val_accuracy",
        max_trials=3,
        num_initial_points=2,
        seed=1,
        hyperparameters=hp,
        tolerance=1.0,  # every accuracy is within it
        directory=tmp_path,
    )
    search(tuner, digits)
    completed = [t for t in trials(tuner) if t.status == "COMPLETED"]
    fastest = min(
        completed, key=lambda t: t.metrics.get_last_value("fit_seconds")
    )
    best = tuner.get_best_hyperparameters()[0]
    assert best.values == fastest.hyperparameters.values


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr_band": "trials"}, "lr_band"),
        ({"successive_halving": True}, "successive_halving"),
        ({"min_batch_size": 0}, "min_batch_size"),
    ],
)
def test_arguments_it_does_not_take_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchBayesianOptimization(build_mlp, directory=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_the_private_methods_it_overrides_are_still_keras_tuners():
    for (
        path,
        parameters,
    ) in keras_tuner_internals.OVERRIDDEN_FAMILY_METHODS.items():
        method = keras_tuner
        for name in path.split("."):
            method = getattr(method, name)
        found = tuple(inspect.signature(method).parameters)
        assert found == parameters, (
            f"keras_tuner.{path} now takes {found} "
            f"(KerasTuner {keras_tuner_internals.KERAS_TUNER_VERSION})"
        )
