"""Every private KerasTuner name in `backend/keras_tuner_internals.py` works.

One test per function, run against a real `keras_tuner.RandomSearch` (one
trial of a tiny model), and one per overridden method: when a KerasTuner
release moves or renames a name, the failure names the function and
KerasTuner's version instead of a library error deep in a search.
"""

import inspect
import os

import keras
import keras_tuner
import numpy as np
import pytest

from keras_batchtune import BatchTuner
from keras_batchtune.backend import keras_tuner_internals as internals
from keras_batchtune.oracle import BatchSearchOracle

MOVED = (
    "keras_tuner_internals.{function} no longer works with keras-tuner "
    "{version}: {error!r}. Update "
    "keras_batchtune/backend/keras_tuner_internals.py."
)


def _check(function, check):
    try:
        check()
    except (AttributeError, ImportError, KeyError, TypeError) as error:
        pytest.fail(
            MOVED.format(
                function=function,
                version=keras_tuner.__version__,
                error=error,
            )
        )


def build(hp):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(hp.Choice("units", [2, 4]), activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


class RecordingRandomSearch(keras_tuner.RandomSearch):
    """KerasTuner's RandomSearch, keeping the callbacks of its trials."""

    callbacks = []

    def _build_and_fit_model(self, trial, *args, **kwargs):
        RecordingRandomSearch.callbacks.extend(kwargs["callbacks"])
        return super()._build_and_fit_model(trial, *args, **kwargs)


class ProgressView:
    """Stands in for the oracle in KerasTuner's progress lines."""

    def __init__(self, oracle):
        self.oracle = oracle
        self.calls = 0

    def __getattr__(self, name):
        if name == "oracle":  # not set yet
            raise AttributeError(name)
        return getattr(self.oracle, name)

    def get_best_trials(self, num_trials=1):
        self.calls += 1
        return self.oracle.get_best_trials(num_trials)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A RandomSearch that ran one trial, with its callbacks and progress."""
    RecordingRandomSearch.callbacks = []
    tuner = RecordingRandomSearch(
        build,
        objective="val_loss",
        max_trials=1,
        seed=0,
        directory=str(tmp_path_factory.mktemp("internals")),
        project_name="project",
    )
    view = ProgressView(tuner.oracle)
    _check(
        "set_progress_oracle",
        lambda: internals.set_progress_oracle(tuner.oracle, view),
    )
    rng = np.random.default_rng(0)
    x = rng.random((16, 3)).astype("float32")
    y = rng.random((16, 1)).astype("float32")
    tuner.search(x, y, epochs=1, validation_data=(x, y), verbose=1)
    return tuner, view, list(RecordingRandomSearch.callbacks)


def _parameter_names(function):
    return tuple(inspect.signature(function).parameters)


@pytest.mark.parametrize(
    "name, parameters", sorted(internals.OVERRIDDEN_TUNER_METHODS.items())
)
def test_overridden_tuner_methods_exist(name, parameters):
    def check():
        method = getattr(keras_tuner.Tuner, name)
        assert _parameter_names(method) == parameters, (
            f"keras_tuner.Tuner.{name} now takes "
            f"{_parameter_names(method)}, not {parameters}"
        )

    _check(f"OVERRIDDEN_TUNER_METHODS[{name!r}]", check)


@pytest.mark.parametrize(
    "name, parameters", sorted(internals.OVERRIDDEN_ORACLE_METHODS.items())
)
def test_overridden_oracle_methods_exist(name, parameters):
    def check():
        method = getattr(keras_tuner.Oracle, name)
        assert _parameter_names(method) == parameters, (
            f"keras_tuner.Oracle.{name} now takes "
            f"{_parameter_names(method)}, not {parameters}"
        )

    _check(f"OVERRIDDEN_ORACLE_METHODS[{name!r}]", check)


def _private_overrides(cls, base):
    """Private methods of `base` that the package's classes in `cls`'s MRO
    define again."""
    names = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("keras_batchtune"):
            continue
        for name, value in vars(klass).items():
            private = name.startswith("_") and not name.startswith("__")
            if private and callable(value) and hasattr(base, name):
                names.add(name)
    return names


def test_every_overridden_private_method_is_listed():
    tuner_overrides = _private_overrides(BatchTuner, keras_tuner.Tuner)
    oracle_overrides = _private_overrides(BatchSearchOracle, keras_tuner.Oracle)
    assert tuner_overrides == set(internals.OVERRIDDEN_TUNER_METHODS)
    assert oracle_overrides == set(internals.OVERRIDDEN_ORACLE_METHODS)


def test_is_worker(searched, monkeypatch):
    tuner, _, _ = searched

    def check():
        assert internals.is_worker(tuner) is False
        monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
        monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
        assert internals.is_worker(tuner) is True

    _check("is_worker", check)


def test_try_build(searched):
    tuner, _, _ = searched

    def check():
        hp = tuner.oracle.get_space()
        model = internals.try_build(tuner, hp)
        assert isinstance(model, keras.Model) and model.optimizer is not None

    _check("try_build", check)


def test_build_hypermodel(searched):
    tuner, _, _ = searched

    def check():
        hp = tuner.oracle.get_space()
        model = internals.build_hypermodel(tuner, hp)
        assert isinstance(model, keras.Model) and model.optimizer is not None

    _check("build_hypermodel", check)


def test_project_paths(searched):
    tuner, _, _ = searched
    trial_id = tuner.oracle.start_order[0]
    trial_dir = os.path.join(tuner.project_dir, f"trial_{trial_id}")

    def check():
        checkpoint = internals.checkpoint_path(tuner, trial_id)
        assert checkpoint == os.path.join(trial_dir, "checkpoint.weights.h5")
        assert os.path.isfile(checkpoint)
        config = internals.build_config_path(tuner, trial_id)
        assert config == os.path.join(trial_dir, "build_config.json")
        assert os.path.isfile(config)
        state = internals.tuner_state_path(tuner)
        assert state == os.path.join(
            tuner.project_dir, f"{tuner.tuner_id}.json"
        )
        assert os.path.isfile(state)
        logs = internals.tensorboard_dir(tuner, "logs", trial_id, 1)
        assert logs == os.path.join("logs", trial_id, "execution1")

    _check(
        "checkpoint_path, build_config_path, tuner_state_path, tensorboard_dir",
        check,
    )


def test_trial_callbacks_are_recognised(searched, tmp_path):
    _, _, callbacks = searched

    def check():
        best_epoch = [c for c in callbacks if internals.is_save_best_epoch(c)]
        tuner_callbacks = [
            c for c in callbacks if internals.is_tuner_callback(c)
        ]
        assert len(best_epoch) == 1 and len(tuner_callbacks) == 1
        (save_best_epoch,) = best_epoch
        assert save_best_epoch.objective.name == "val_loss"
        save_best_epoch.filepath = str(tmp_path / "written.weights.h5")
        save_best_epoch.set_model(internals.try_build(searched[0], _hp()))
        internals.write_best_epoch_checkpoint(save_best_epoch)
        assert os.path.isfile(save_best_epoch.filepath)
        assert not internals.is_save_best_epoch(keras.callbacks.History())
        assert not internals.is_tuner_callback(keras.callbacks.History())

    _check("is_save_best_epoch, is_tuner_callback", check)


def _hp():
    hp = keras_tuner.HyperParameters()
    hp.Choice("units", [2, 4])
    return hp


def test_retry_queue(searched):
    oracle = searched[0].oracle

    def check():
        queue = internals.retry_queue(oracle)
        assert isinstance(queue, list)
        queue.append("x")
        assert oracle.get_state()["retry_queue"][-1] == "x"
        queue.remove("x")

    _check("retry_queue", check)


def test_trial_files(searched, tmp_path):
    oracle = searched[0].oracle
    trial = oracle.trials[oracle.start_order[0]]

    def check():
        directory = internals.trial_dir(oracle, trial.trial_id)
        assert directory == os.path.join(
            internals.project_dir(oracle), f"trial_{trial.trial_id}"
        )
        path = os.path.join(directory, "trial.json")
        os.remove(path)
        internals.save_trial(oracle, trial)
        assert os.path.isfile(path)
        assert internals.oracle_state_path(oracle) == os.path.join(
            internals.project_dir(oracle), "oracle.json"
        )
        other = keras_tuner.oracles.RandomSearchOracle(
            objective="val_loss", max_trials=1
        )
        internals.set_project_dir(other, str(tmp_path), "elsewhere")
        assert internals.project_dir(other) == str(tmp_path / "elsewhere")

    _check("trial_dir, project_dir, save_trial, oracle_state_path", check)


def test_values_and_seeds(searched):
    oracle = searched[0].oracle
    tried = oracle.trials[oracle.start_order[0]].hyperparameters.values

    def check():
        assert internals.values_hash(oracle, tried) == internals.values_hash(
            oracle, dict(tried)
        )
        assert internals.values_hash(oracle, tried) != internals.values_hash(
            oracle, {**tried, "units": -1}
        )
        assert internals.is_duplicate(oracle, tried) is True
        assert internals.is_duplicate(oracle, {"units": -1}) is False
        assert internals.max_collisions(oracle) > 0
        first = internals.take_seed(oracle)
        assert internals.take_seed(oracle) == first + 1
        assert oracle.get_state()["seed_state"] == first + 2

    _check("values_hash, is_duplicate, max_collisions, take_seed", check)


def test_set_progress_oracle(searched):
    _, view, _ = searched
    # KerasTuner's "Best val_loss So Far" line read the view's ranking.
    assert view.calls > 0, MOVED.format(
        function="set_progress_oracle",
        version=keras_tuner.__version__,
        error="the progress lines did not read the view",
    )
