"""Tests of `resizable`: fixed micro-batches, every example once per epoch."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import keras_batchtune
from keras_batchtune import resizable_data
from tests.conftest import make_mlp


def _epoch_ids(data):
    """The example ids (the first feature) of one epoch, batch by batch."""
    return [batch[0][:, 0].astype(int) for batch in data.get_numpy_iterator()]


def _ids_data(num_examples):
    x = np.zeros((num_examples, 64), "float32")
    x[:, 0] = np.arange(num_examples)
    return x, np.zeros(num_examples, "int32")


def test_every_example_once_per_epoch_reshuffled():
    x, y = _ids_data(100)
    data = keras_batchtune.resizable(x, y, batch_size=16, seed=1)
    first, second = _epoch_ids(data), _epoch_ids(data)
    assert data.num_batches == 7
    assert [len(b) for b in first] == [16] * 6 + [4]
    assert sorted(np.concatenate(first)) == list(range(100))
    assert sorted(np.concatenate(second)) == list(range(100))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))


def test_seed_makes_order_reproducible_and_shuffle_false_keeps_it():
    x, y = _ids_data(50)
    one = _epoch_ids(keras_batchtune.resizable(x, y, batch_size=8, seed=3))
    two = _epoch_ids(keras_batchtune.resizable(x, y, batch_size=8, seed=3))
    assert np.array_equal(np.concatenate(one), np.concatenate(two))
    kept = keras_batchtune.resizable(x, y, batch_size=8, shuffle=False)
    assert list(np.concatenate(_epoch_ids(kept))) == list(range(50))


def test_drop_remainder_gives_static_batches():
    x, y = _ids_data(100)
    data = keras_batchtune.resizable(x, y, batch_size=16, drop_remainder=True)
    assert data.num_batches == 6
    assert data.examples_per_epoch == 96
    assert {len(b) for b in _epoch_ids(data)} == {16}


def test_unbatched_and_batched_datasets(digits):
    x, y = digits[0], digits[1]
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    data = keras_batchtune.resizable(dataset, batch_size=32)
    assert (data.num_examples, data.num_batches) == (600, 19)
    with pytest.warns(UserWarning, match="unbatched and batched again"):
        rebatched = keras_batchtune.resizable(dataset.batch(50), batch_size=32)
    assert rebatched.num_examples == 600
    filtered = dataset.filter(lambda a, b: b >= 0)  # unknown cardinality
    assert keras_batchtune.resizable(filtered, batch_size=32).num_batches == 19


def test_fit_runs_the_right_steps_without_warnings(digits):
    x, y = digits[0], digits[1]
    model = make_mlp()
    data = keras_batchtune.resizable(x, y, batch_size=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(data, epochs=2, verbose=0)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert history.params["steps"] == 10
    assert int(model.optimizer.iterations) == 20
    assert resizable_data.last_used() is data


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 8.5}, "batch_size"),
        ({"batch_size": 200, "drop_remainder": True}, "batch_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    x, y = _ids_data(100)
    with pytest.raises(ValueError, match=match):
        keras_batchtune.resizable(x, y, **kwargs)


def test_bad_inputs():
    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="`y` must be None"):
        keras_batchtune.resizable(dataset, np.zeros(10), batch_size=2)
    with pytest.raises(ValueError, match="infinite"):
        keras_batchtune.resizable(dataset.repeat(), batch_size=2)
    with pytest.raises(ValueError, match="same number of examples"):
        keras_batchtune.resizable(np.zeros((10, 2)), np.zeros(9), batch_size=2)
    with pytest.raises(ValueError, match="`x`"):
        keras_batchtune.resizable(["a", "b"], batch_size=2)


def test_max_physical_batch_size_is_checked():
    x, y = _ids_data(100)
    for bad in (0, 2.5, 8):
        with pytest.raises(ValueError, match="max_physical_batch_size"):
            keras_batchtune.resizable(
                x, y, batch_size=16, max_physical_batch_size=bad
            )


def test_plan_splits_above_the_physical_cap(digits):
    x, y = digits[0], digits[1]
    data = keras_batchtune.resizable(
        x, y, batch_size=16, max_physical_batch_size=64
    )
    # Outside a `fit` the input cannot grow: accumulate micro-batches.
    assert not data.physical
    assert data.plan(128) == (16, 8)
    with pytest.raises(ValueError, match="physical batch of 32"):
        data.set_physical_batch_size(32)
    model = make_mlp()
    model.fit(data, epochs=1, verbose=0)
    # Inside a one-replica TensorFlow `fit` it can, up to the cap.
    assert data.physical
    assert data.plan(32) == (32, 1)
    assert data.plan(64) == (64, 1)
    assert data.plan(256) == (64, 4)
    data.set_physical_batch_size(64)
    assert (data.batch_size, data.num_batches) == (64, 10)


def test_drop_remainder_keeps_the_physical_batch(digits):
    x, y = digits[0], digits[1]
    data = keras_batchtune.resizable(x, y, batch_size=16, drop_remainder=True)
    make_mlp().fit(data, epochs=1, verbose=0)
    assert not data.physical
    assert data.plan(64) == (16, 4)
