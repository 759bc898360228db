"""`BatchHyperband`: Hyperband over the batch size, budgets in examples.

Real tiny searches on the current Keras backend (600 digits; `max_epochs=2`,
`factor=2`: a bracket of two 1-epoch trials and one 2-epoch continuation,
then a bracket of two 2-epoch trials): the searched batch size, the coupled
learning rate, the same examples per round at every batch (fewer steps at a
larger one), the warm start of a continued trial, the out-of-memory ceiling
(real allocator errors, `conftest.MemoryLimit`), resume, tolerance.
KerasTuner's own Hyperband tests: `test_dropin_family.py`.
"""

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import LearningRateLog
from conftest import make_mlp
from search_helpers import build_mlp
from search_helpers import memory_limited
from search_helpers import search
from search_helpers import trials

from keras_batchtune import BatchHyperband
from keras_batchtune.hyperband import BatchHyperbandOracle


def make_tuner(tmp_path, hypermodel=build_mlp, **kwargs):
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("min_batch_size", 16)
    kwargs.setdefault("max_batch_size", 256)
    return BatchHyperband(
        hypermodel,
        objective="val_accuracy",
        max_epochs=2,
        factor=2,
        directory=tmp_path,
        project_name="hyperband",
        **kwargs,
    )


def build_plain_sgd_mlp(hp):
    # SGD without momentum has no slots: the unbuilt optimizer of a new
    # model has as many variables as the saved one (iterations, learning
    # rate), so a checkpoint loaded at build time would load its learning
    # rate too. KerasTuner's Hyperband does load there; ours must not.
    learning_rate = hp.Float("learning_rate", 0.01, 0.1, sampling="log")
    return make_mlp(optimizer=keras.optimizers.SGD(learning_rate))


@pytest.mark.parametrize(
    "hypermodel", [build_mlp, build_plain_sgd_mlp], ids=["momentum", "plain"]
)
def test_batch_size_searched_coupled_and_budgets_count_examples(
    tmp_path, digits, lr_log, hypermodel
):
    tuner = make_tuner(tmp_path, hypermodel)
    assert isinstance(tuner.oracle, BatchHyperbandOracle)
    batch_hp = tuner.oracle.hyperparameters._hps["batch_size"][0]
    assert (batch_hp.min_value, batch_hp.max_value) == (16, 256)

    # `epochs` is Hyperband's, as in KerasTuner.
    search(tuner, digits, epochs=50, callbacks=[lr_log])
    done = trials(tuner)
    assert len(done) == 5 and all(t.status == "COMPLETED" for t in done)
    assert len(LearningRateLog.log) == 5
    for trial, logged in zip(done, LearningRateLog.log):
        values = trial.hyperparameters.values
        batch_size = values["batch_size"]
        expected = values["learning_rate"] * batch_size / 32
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)
        # Every trial of a round trains `tuner/epochs` passes over the 600
        # examples, whatever its batch: fewer steps at a larger batch.
        assert logged["epochs"] == values["tuner/epochs"]
        assert logged["steps"] == int(np.ceil(600 / batch_size))
        assert trial.metrics.get_last_value(
            "effective_learning_rate"
        ) == pytest.approx(expected, rel=1e-6)
    continued = [t for t in done if "tuner/trial_id" in t.hyperparameters]
    assert len(continued) == 1
    (trial,) = continued
    source = tuner.oracle.trials[trial.hyperparameters["tuner/trial_id"]]
    assert (
        source.hyperparameters["batch_size"]
        == (trial.hyperparameters["batch_size"])
    )
    assert trial.hyperparameters["tuner/initial_epoch"] == 1
    assert len(trial.metrics.get_history("val_accuracy")) == 1  # epoch 2 only


def test_out_of_memory_ceiling_and_resume_with_nothing_rerun(tmp_path, digits):
    def make(**kwargs):
        return make_tuner(
            tmp_path,
            memory_limited,  # batches above 100 run out of memory
            seed=5,
            min_batch_size=64,
            max_batch_size=512,
            **kwargs,
        )

    tuner = make()
    search(tuner, digits)
    done = trials(tuner)
    failed = [t for t in done if t.status == "FAILED"]
    assert failed, "no trial ran out of memory: pick another seed"
    ceiling = None
    for trial in done:
        batch_size = trial.hyperparameters["batch_size"]
        if ceiling is not None and trial.hyperparameters["tuner/round"] == 0:
            assert batch_size < ceiling, (trial.trial_id, batch_size)
        if trial.status == "FAILED":
            assert trial.message == f"out of memory at batch {batch_size}"
            ceiling = min(ceiling or batch_size, batch_size)
    assert tuner.oracle.batch_size_ceiling == ceiling

    before = {
        t.trial_id: (t.status, t.hyperparameters.values, t.score) for t in done
    }
    resumed = make()
    assert resumed.oracle.batch_size_ceiling == ceiling
    search(resumed, digits)
    after = {
        t.trial_id: (t.status, t.hyperparameters.values, t.score)
        for t in trials(resumed)
    }
    assert after == before


def test_tolerance_compares_trials_at_the_full_budget(tmp_path, digits):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [8, 200])
    tuner = make_tuner(tmp_path, hyperparameters=hp, tolerance=1.0)
    search(tuner, digits)
    completed = [t for t in trials(tuner) if t.status == "COMPLETED"]

    def full_budget_seconds(trial):
        values = trial.hyperparameters.values
        trained = values["tuner/epochs"] - values["tuner/initial_epoch"]
        seconds = trial.metrics.get_last_value("fit_seconds")
        return seconds * 2 / trained

    preferred = min(completed, key=full_budget_seconds)
    best = tuner.get_best_hyperparameters()[0]
    assert best.values == preferred.hyperparameters.values


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr_band": "both"}, "lr_band"),
        ({"successive_halving": {"factor": 2}}, "successive_halving"),
        ({"factor": 1}, "factor"),
        ({"lr_scaling": "cubic"}, "lr_scaling"),
    ],
)
def test_arguments_it_does_not_take_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchHyperband(build_mlp, directory=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())
