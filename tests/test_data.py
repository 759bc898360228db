import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_batchtune import data

X = np.zeros((100, 4), "float32")
Y = np.zeros((100,), "int32")


def test_describe_batching():
    dataset = tf.data.Dataset.from_tensor_slices((X, Y))
    assert data.describe_batching(dataset) == (False, None)
    assert data.describe_batching(dataset.map(lambda a, b: (a, b))) == (
        False,
        None,
    )
    assert data.describe_batching(dataset.batch(16)) == (True, 16)
    # A map after batch hides the size, but not that it is batched.
    mapped = dataset.batch(16).map(lambda a, b: (a, b))
    assert data.describe_batching(mapped) == (True, None)


def test_unbatched_dataset_is_batched_without_warning(recwarn):
    dataset = tf.data.Dataset.from_tensor_slices((X, Y))
    batched = data.batch_dataset(dataset, 32)
    assert [int(b[0].shape[0]) for b in batched] == [32, 32, 32, 4]
    assert not [w for w in recwarn if "keras_batchtune" in str(w.message)]


def test_batched_dataset_is_rebatched_with_one_warning():
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(10)
    with pytest.warns(UserWarning, match="already batched") as record:
        rebatched = data.batch_dataset(dataset, 25)
    assert len(record) == 1
    assert len(str(record[0].message).splitlines()) == 1
    assert [int(b[0].shape[0]) for b in rebatched] == [25, 25, 25, 25]


def test_fixed_batch_inputs_are_refused_with_the_allowed_types():
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return X, Y

    for fixed in (Batches(), iter([(X, Y)])):
        with pytest.raises(ValueError, match="`x`.*unbatched"):
            data.check_batchable(fixed)
    for accepted in (X, tf.constant(X), {"a": X}, None):
        data.check_batchable(accepted)


def test_count_examples():
    assert data.count_examples(X) == 100
    assert data.count_examples({"a": X, "b": X}) == 100
    assert data.count_examples(X, validation_split=0.25) == 75
    dataset = tf.data.Dataset.from_tensor_slices((X, Y))
    assert data.count_examples(dataset) == 100
    assert data.count_examples(dataset.repeat()) is None
    assert data.count_examples(None) is None


def test_rebatched_dataset_keeps_a_known_length():
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(10)
    assert data.count_examples(dataset) == 100
    with pytest.warns(UserWarning):
        rebatched = data.batch_dataset(dataset, 30)
    assert int(rebatched.cardinality()) == 4
    assert data.count_examples(dataset.repeat()) is None
