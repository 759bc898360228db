"""Working `keras_tuner.RandomSearch` programs keep working with `BatchTuner`.

Each program runs once with `RandomSearch` and once with `BatchTuner`; the
checks that hold for RandomSearch must hold for BatchTuner too, on every
Keras backend. KerasTuner's own tests of `Tuner` and `RandomSearch` (not in
its wheel) are run by hand from a KerasTuner checkout with `RandomSearch`
aliased to `BatchTuner` (docs/guides/differences-from-randomsearch.md);
their code is not copied here.
"""

import os

import keras
import keras_tuner
import pytest
from conftest import make_mlp

from keras_batchtune import BatchTuner

TUNERS = [keras_tuner.RandomSearch, BatchTuner]


def build_model(hp):
    return make_mlp(
        hp.Choice("learning_rate", [0.01, 0.05]),
        units=hp.Int("units", 16, 32, step=16),
    )


def fit_data(digits):
    x, y, x_val, y_val = digits
    return (x, y), {
        "validation_data": (x_val, y_val),
        "epochs": 1,
        "verbose": 0,
    }


@pytest.mark.parametrize("tuner_class", TUNERS)
def test_full_program(tmp_path, digits, tuner_class, capsys):
    tuner = tuner_class(
        build_model,
        objective="val_accuracy",
        max_trials=2,
        executions_per_trial=2,
        directory=tmp_path,
        project_name="program",
        seed=1,
    )
    tuner.search_space_summary()
    args, kwargs = fit_data(digits)
    tuner.search(*args, **kwargs)
    tuner.results_summary()
    out = capsys.readouterr().out
    assert "Search space summary" in out and "Results summary" in out
    assert len(tuner.oracle.trials) == 2
    best_hp = tuner.get_best_hyperparameters()[0]
    assert best_hp["learning_rate"] in (0.01, 0.05)
    best_model = tuner.get_best_models()[0]
    assert isinstance(best_model, keras.Model)
    assert os.path.exists(tmp_path / "program" / "oracle.json")
    assert os.path.exists(tmp_path / "program" / "trial_0" / "trial.json")
    assert os.path.exists(
        tmp_path / "program" / "trial_0" / "checkpoint.weights.h5"
    )

    # Resume: reloading the project keeps its trials; overwrite drops them.
    reloaded = tuner_class(
        build_model,
        objective="val_accuracy",
        max_trials=3,
        executions_per_trial=2,
        directory=tmp_path,
        project_name="program",
    )
    assert len(reloaded.oracle.trials) == 2
    reloaded.search(*args, **kwargs)
    assert len(reloaded.oracle.trials) == 3
    fresh = tuner_class(
        build_model,
        objective="val_accuracy",
        max_trials=1,
        directory=tmp_path,
        project_name="program",
        overwrite=True,
    )
    assert len(fresh.oracle.trials) == 0


@pytest.mark.parametrize(
    "tuner_class",
    [
        # KerasTuner lays out per-trial logs only on the TensorFlow backend
        # (its `_configure_tensorboard_dir` returns early elsewhere), and
        # Keras's callback writes through TensorFlow; BatchTuner writes the
        # same layout on every backend.
        pytest.param(
            keras_tuner.RandomSearch, marks=pytest.mark.tensorflow_backend
        ),
        BatchTuner,
    ],
)
def test_tensorboard_and_other_callbacks(tmp_path, digits, tuner_class):
    tuner = tuner_class(
        build_model,
        objective="val_accuracy",
        max_trials=2,
        directory=tmp_path / "project",
    )
    args, kwargs = fit_data(digits)
    logdir = tmp_path / "logs"
    tuner.search(
        *args,
        **kwargs,
        callbacks=[
            keras.callbacks.TensorBoard(str(logdir)),
            keras.callbacks.EarlyStopping(patience=1),
        ],
    )
    for trial_id in tuner.oracle.trials:
        run = logdir / trial_id / "execution0"
        assert list(run.rglob("events.out.tfevents*")), run


@pytest.mark.tensorflow_backend
@pytest.mark.parametrize("tuner_class", TUNERS)
def test_distribution_strategy(
    tmp_path, digits, tuner_class, mirrored_strategy
):
    strategy = mirrored_strategy
    assert strategy.num_replicas_in_sync == 2
    tuner = tuner_class(
        build_model,
        objective="val_accuracy",
        max_trials=2,
        distribution_strategy=strategy,
        directory=tmp_path,
    )
    args, kwargs = fit_data(digits)
    tuner.search(*args, **kwargs)
    assert all(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    model = tuner.get_best_models()[0]
    assert model.distribute_strategy is strategy


class OwnFitHyperModel(keras_tuner.HyperModel):
    def build(self, hp):
        return build_model(hp)

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, shuffle=hp.Boolean("shuffle"), **kwargs)


@pytest.mark.parametrize("tuner_class", TUNERS)
def test_hypermodel_subclass_with_own_fit(tmp_path, digits, tuner_class):
    tuner = tuner_class(
        OwnFitHyperModel(),
        objective="val_accuracy",
        max_trials=2,
        directory=tmp_path,
    )
    args, kwargs = fit_data(digits)
    tuner.search(*args, **kwargs)
    assert len(tuner.oracle.trials) == 2
    assert "shuffle" in tuner.oracle.get_space()


@pytest.mark.parametrize("tuner_class", TUNERS)
def test_hyperparameters_without_new_entries(tmp_path, digits, tuner_class):
    hp = keras_tuner.HyperParameters()
    hp.Choice("learning_rate", [0.01, 0.05])
    tuner = tuner_class(
        build_model,
        objective="val_accuracy",
        max_trials=2,
        hyperparameters=hp,
        tune_new_entries=False,
        directory=tmp_path,
    )
    args, kwargs = fit_data(digits)
    tuner.search(*args, **kwargs)
    assert len(tuner.oracle.trials) == 2
    assert [p.name for p in tuner.oracle.get_space().space] == ["learning_rate"]


@pytest.mark.parametrize("tuner_class", TUNERS)
def test_positional_arguments_of_random_search(tmp_path, digits, tuner_class):
    tuner = tuner_class(build_model, "val_accuracy", 1, 42, directory=tmp_path)
    assert tuner.oracle.seed == 42
    args, kwargs = fit_data(digits)
    tuner.search(*args, **kwargs)
    assert len(tuner.oracle.trials) == 1


@pytest.mark.parametrize("tuner_class", TUNERS)
def test_search_with_verbose_zero_prints_nothing(
    tmp_path, digits, tuner_class, capsys
):
    tuner = tuner_class(
        build_model, objective="val_accuracy", max_trials=1, directory=tmp_path
    )
    args, kwargs = fit_data(digits)
    capsys.readouterr()
    tuner.search(*args, batch_size=64, **kwargs)
    assert capsys.readouterr().out.strip() == ""
