"""A damaged project file stops a resumed search with an error naming it.

One real search (three trials of a tiny model) runs once per module; each
test damages a copy of its project directory and builds the tuner again
with `overwrite=False`, as a restarted search does.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from conftest import HAS_TENSORFLOW

import keras_batchtune

MAX_TRIALS = 3


def build(hp):
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(hp.Choice("units", [4, 8, 16]), "relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.05),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def make_tuner(directory, overwrite=False):
    return keras_batchtune.BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=MAX_TRIALS,
        seed=1,
        min_batch_size=16,
        max_batch_size=64,
        directory=str(directory),
        project_name="search",
        overwrite=overwrite,
    )


@pytest.fixture(scope="module")
def finished_project(tmp_path_factory):
    """The directory of a finished search, and its trials' scores."""
    directory = tmp_path_factory.mktemp("finished")
    rng = np.random.default_rng(0)
    x = rng.random((160, 8)).astype("float32")
    y = (x[:, 0] > 0.5).astype("int32")
    tuner = make_tuner(directory, overwrite=True)
    tuner.search(x[:128], y[:128], epochs=1, validation_data=(x[128:], y[128:]))
    scores = {t.trial_id: t.score for t in tuner.oracle.trials.values()}
    assert len(scores) == MAX_TRIALS
    return directory, scores


@pytest.fixture
def project(finished_project, tmp_path):
    """A fresh copy of the finished project: (directory, project dir)."""
    source, _ = finished_project
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    return tmp_path, tmp_path / "search"


def first_trial_file(project_dir):
    return sorted(project_dir.glob("trial_*/trial.json"))[0]


def test_an_intact_project_reloads_every_trial(finished_project, project):
    _, scores = finished_project
    directory, _ = project
    tuner = make_tuner(directory)
    reloaded = {t.trial_id: t.score for t in tuner.oracle.trials.values()}
    assert reloaded == scores


DAMAGES = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "garbled bytes": lambda text: "\x00\xff" + text[5:],
    "a JSON list": lambda text: "[1, 2, 3]",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_trial_file_is_named(project, damage):
    directory, project_dir = project
    path = first_trial_file(project_dir)
    text = path.read_text()
    path.write_bytes(DAMAGES[damage](text).encode("utf-8", "surrogateescape"))
    with pytest.raises(keras_batchtune.ProjectFileError) as caught:
        make_tuner(directory)
    assert caught.value.path == str(path)
    assert str(path) in str(caught.value)
    assert "damaged" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_trial_file_missing_a_field_is_named(project):
    directory, project_dir = project
    path = first_trial_file(project_dir)
    state = json.loads(path.read_text())
    del state["metrics"]
    path.write_text(json.dumps(state))
    with pytest.raises(keras_batchtune.ProjectFileError) as caught:
        make_tuner(directory)
    assert caught.value.path == str(path)
    assert "'metrics'" in str(caught.value)


def test_a_trial_file_holding_another_trial_is_named(project):
    # Copying one trial's file over another's would otherwise make the
    # second trial disappear from the search without a word.
    directory, project_dir = project
    first, second = sorted(project_dir.glob("trial_*/trial.json"))[:2]
    shutil.copyfile(first, second)
    with pytest.raises(keras_batchtune.ProjectFileError) as caught:
        make_tuner(directory)
    assert caught.value.path == str(second)


def test_a_deleted_trial_directory_is_named(project):
    directory, project_dir = project
    trial_dir = first_trial_file(project_dir).parent
    shutil.rmtree(trial_dir)
    with pytest.raises(keras_batchtune.ProjectFileError) as caught:
        make_tuner(directory)
    assert caught.value.path == str(trial_dir)
    assert "oracle.json lists trial" in str(caught.value)


def test_a_damaged_oracle_file_is_named(project):
    directory, project_dir = project
    path = project_dir / "oracle.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(keras_batchtune.ProjectFileError) as caught:
        make_tuner(directory)
    assert caught.value.path == str(path)


def test_a_damaged_tuner_file_is_named(project):
    directory, project_dir = project
    (path,) = [p for p in project_dir.glob("*.json") if p.name != "oracle.json"]
    path.write_text("{")
    with pytest.raises(keras_batchtune.ProjectFileError) as caught:
        make_tuner(directory)
    assert caught.value.path == str(path)


def test_project_files_are_replaced_whole(project):
    # Every save renames a complete temporary file over the old one: no
    # temporary file is left behind, and the content is the new state.
    directory, project_dir = project
    tuner = make_tuner(directory)
    tuner.oracle.lower_ceiling(32)
    tuner.save()
    state = json.loads((project_dir / "oracle.json").read_text())
    assert state["batch_size_ceiling"] == 32
    leftovers = [
        name
        for _, _, names in os.walk(project_dir)
        for name in names
        if name.endswith(".tmp")
    ]
    assert leftovers == []
    # Written like any new file, not with a temporary file's mode 0600.
    control = project_dir / "control"
    control.write_text("")
    assert (project_dir / "oracle.json").stat().st_mode == (
        control.stat().st_mode
    )


@pytest.mark.skipif(
    HAS_TENSORFLOW, reason="remote files work where TensorFlow is installed"
)
def test_a_remote_project_without_tensorflow_says_so():
    from keras_batchtune import project_files

    with pytest.raises(ValueError, match="tf.io.gfile.*not installed"):
        project_files.write_json("gs://bucket/project/oracle.json", {})
    with pytest.raises(ValueError, match="`directory`.*remote"):
        project_files.trial_files("gs://bucket/project")
