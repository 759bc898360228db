"""`tf.data.Dataset` inputs, on any backend where TensorFlow is installed.

`keras_batchtune.backend.tf_data` batches, re-batches and counts datasets;
a `BatchTuner` search takes unbatched and batched datasets on every backend
(Keras reads a dataset on JAX and PyTorch through its TensorFlow adapter).
TensorFlow is imported inside the tests, so this file collects (and skips)
where it is absent.
"""

import numpy as np
import pytest
from conftest import LearningRateLog
from search_helpers import build_mlp
from search_helpers import trials

from keras_batchtune import BatchTuner
from keras_batchtune import data

pytestmark = pytest.mark.requires_tensorflow

X = np.zeros((100, 4), "float32")
Y = np.zeros((100,), "int32")


@pytest.fixture
def tf():
    import tensorflow

    return tensorflow


@pytest.fixture
def tf_data():
    from keras_batchtune.backend import tf_data

    return tf_data


def test_describe_batching(tf):
    dataset = tf.data.Dataset.from_tensor_slices((X, Y))
    assert data.is_tf_dataset(dataset)
    assert data.describe_batching(dataset) == (False, None)
    assert data.describe_batching(dataset.map(lambda a, b: (a, b))) == (
        False,
        None,
    )
    assert data.describe_batching(dataset.batch(16)) == (True, 16)
    # A map after batch hides the size, but not that it is batched.
    mapped = dataset.batch(16).map(lambda a, b: (a, b))
    assert data.describe_batching(mapped) == (True, None)


def test_unbatched_dataset_is_batched_without_warning(tf, tf_data, recwarn):
    dataset = tf.data.Dataset.from_tensor_slices((X, Y))
    batched = tf_data.batch_dataset(dataset, 32)
    assert [int(b[0].shape[0]) for b in batched] == [32, 32, 32, 4]
    assert not [w for w in recwarn if "keras_batchtune" in str(w.message)]


def test_batched_dataset_is_rebatched_with_one_warning(tf, tf_data):
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(10)
    with pytest.warns(UserWarning, match="already batched") as record:
        rebatched = tf_data.batch_dataset(dataset, 25)
    assert len(record) == 1
    assert len(str(record[0].message).splitlines()) == 1
    assert [int(b[0].shape[0]) for b in rebatched] == [25, 25, 25, 25]


def test_datasets_are_batchable_and_counted(tf):
    dataset = tf.data.Dataset.from_tensor_slices((X, Y))
    data.check_batchable(dataset)
    data.check_batchable(dataset.batch(10))
    data.check_batchable(tf.constant(X))
    assert data.count_examples(dataset) == 100
    assert data.count_examples(dataset.repeat()) is None


def test_rebatched_dataset_keeps_a_known_length(tf, tf_data):
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(10)
    assert data.count_examples(dataset) == 100
    with pytest.warns(UserWarning):
        rebatched = tf_data.batch_dataset(dataset, 30)
    assert int(rebatched.cardinality()) == 4
    assert data.count_examples(dataset.repeat()) is None


def test_tuner_takes_datasets(tf, tmp_path, digits, lr_log):
    x, y, x_val, y_val = digits
    train = tf.data.Dataset.from_tensor_slices((x, y))
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val))
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=3,
        directory=tmp_path / "unbatched",
    )
    tuner.search(
        train,
        validation_data=validation,
        epochs=1,
        verbose=0,
        callbacks=[lr_log],
    )
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert trial.status == "COMPLETED"
        batch_size = trial.hyperparameters["batch_size"]
        assert logged["steps"] == int(np.ceil(600 / batch_size))

    # A batched dataset is re-batched, with one warning line, and its batch
    # size is the reference batch of the coupling.
    LearningRateLog.log = []
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=1,
        seed=3,
        directory=tmp_path / "batched",
    )
    with pytest.warns(UserWarning, match="already batched \\(batch size 50\\)"):
        tuner.search(
            train.batch(50),
            validation_data=validation.batch(50),
            epochs=1,
            verbose=0,
            callbacks=[lr_log],
        )
    trial = trials(tuner)[0]
    batch_size = trial.hyperparameters["batch_size"]
    assert LearningRateLog.log[0]["steps"] == int(np.ceil(600 / batch_size))
    assert LearningRateLog.log[0]["begin"] == pytest.approx(
        trial.hyperparameters["learning_rate"] * batch_size / 50, rel=1e-6
    )
