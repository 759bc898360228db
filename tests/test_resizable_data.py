"""Tests of `resizable`: batches of the epoch's size, every example once.

Run on every backend: arrays are batched in numpy for JAX and PyTorch and
through `tf.data` for TensorFlow's `fit`; a `tf.data.Dataset` input needs
TensorFlow installed (`requires_tensorflow`), whatever the backend.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_batchtune
from keras_batchtune import resizable_data
from tests.conftest import make_mlp


def _epoch_ids(data):
    """The example ids (the first feature) of one epoch, batch by batch."""
    return [
        np.asarray(batch[0])[:, 0].astype(int)
        for batch in data.get_numpy_iterator()
    ]


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


def test_set_random_seed_makes_an_unseeded_order_reproducible():
    x, y = _ids_data(50)
    orders = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        data = keras_batchtune.resizable(x, y, batch_size=8)
        orders.append(np.concatenate(_epoch_ids(data)))
    assert np.array_equal(orders[0], orders[1])


def test_drop_remainder_gives_static_batches():
    x, y = _ids_data(100)
    data = keras_batchtune.resizable(x, y, batch_size=16, drop_remainder=True)
    assert data.num_batches == 6
    assert data.examples_per_epoch == 96
    assert {len(b) for b in _epoch_ids(data)} == {16}


def test_backend_tensors_and_nested_inputs():
    x, y = _ids_data(40)
    tensors = keras_batchtune.resizable(
        keras.ops.convert_to_tensor(x),
        keras.ops.convert_to_tensor(y),
        batch_size=16,
        seed=0,
    )
    ids = _epoch_ids(tensors)
    assert sorted(np.concatenate(ids)) == list(range(40))
    nested = keras_batchtune.resizable(
        {"a": x, "b": x[:, :3]}, y, batch_size=16, shuffle=False
    )
    first = next(iter(nested.get_numpy_iterator()))
    assert set(first[0]) == {"a", "b"}
    assert first[0]["b"].shape == (16, 3) and first[1].shape == (16,)


def test_sample_batches_are_full_and_leave_the_epochs_alone():
    x, y = _ids_data(50)
    data = keras_batchtune.resizable(x, y, batch_size=8, seed=3)
    reference = keras_batchtune.resizable(x, y, batch_size=8, seed=3)
    samples = data.sample_batches(32, seed=0)
    sizes = [len(next(samples)[0]) for _ in range(5)]
    assert sizes == [32] * 5
    assert np.array_equal(
        np.concatenate(_epoch_ids(data)), np.concatenate(_epoch_ids(reference))
    )


def test_fit_runs_the_right_steps_without_warnings(digits):
    x, y = digits[0], digits[1]
    model = make_mlp()
    data = keras_batchtune.resizable(x, y, batch_size=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(data, epochs=2, verbose=0)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert history.params["steps"] == 10
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 20
    assert resizable_data.last_used() is data


def test_a_new_fit_starts_again_at_the_micro_batch(digits):
    x, y = digits[0], digits[1]
    data = keras_batchtune.resizable(x, y, batch_size=16)
    model = make_mlp()
    model.fit(data, epochs=1, verbose=0)
    assert data.physical
    data.set_physical_batch_size(128)  # as a callback leaves it
    assert data.num_batches == 5
    # Keras reads the step count when `fit` starts: the input puts the
    # micro-batch's back before the first epoch.
    history = model.fit(data, epochs=1, verbose=0)
    assert history.params["steps"] == 38
    assert (data.batch_size, data.num_batches) == (16, 38)


def test_steps_per_epoch_keeps_the_physical_batch(digits):
    x, y = digits[0], digits[1]
    data = keras_batchtune.resizable(x, y, batch_size=16)
    make_mlp().fit(data, epochs=1, steps_per_epoch=10, verbose=0)
    assert not data.physical
    assert data.plan(64) == (16, 4)


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


def test_bad_array_inputs():
    with pytest.raises(ValueError, match="same number of examples"):
        keras_batchtune.resizable(np.zeros((10, 2)), np.zeros(9), batch_size=2)
    with pytest.raises(ValueError, match="`x`"):
        keras_batchtune.resizable(["a", "b"], batch_size=2)
    with pytest.raises(ValueError, match="`x`"):
        keras_batchtune.resizable(np.float32(3.0), batch_size=2)
    data = keras_batchtune.resizable(np.zeros((10, 2)), batch_size=2)
    with pytest.raises(ValueError, match="already resizable"):
        keras_batchtune.resizable(data, batch_size=4)


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
    # Inside a one-replica `fit` (every backend's) it can, up to the cap.
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


@pytest.mark.requires_tensorflow
def test_unbatched_and_batched_datasets(digits):
    import tensorflow as tf

    x, y = digits[0], digits[1]
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    data = keras_batchtune.resizable(dataset, batch_size=32)
    assert (data.num_examples, data.num_batches) == (600, 19)
    with pytest.warns(UserWarning, match="unbatched and batched again"):
        rebatched = keras_batchtune.resizable(dataset.batch(50), batch_size=32)
    assert rebatched.num_examples == 600
    filtered = dataset.filter(lambda a, b: b >= 0)  # unknown cardinality
    assert keras_batchtune.resizable(filtered, batch_size=32).num_batches == 19


@pytest.mark.requires_tensorflow
def test_dataset_epochs_use_every_example_once():
    import tensorflow as tf

    x, y = _ids_data(100)
    data = keras_batchtune.resizable(
        tf.data.Dataset.from_tensor_slices((x, y)), batch_size=16, seed=1
    )
    first, second = _epoch_ids(data), _epoch_ids(data)
    assert [len(b) for b in first] == [16] * 6 + [4]
    assert sorted(np.concatenate(first)) == list(range(100))
    assert sorted(np.concatenate(second)) == list(range(100))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))
    assert len(next(data.sample_batches(32, seed=0))[0]) == 32


@pytest.mark.requires_tensorflow
def test_bad_dataset_inputs():
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="`y` must be None"):
        keras_batchtune.resizable(dataset, np.zeros(10), batch_size=2)
    with pytest.raises(ValueError, match="infinite"):
        keras_batchtune.resizable(dataset.repeat(), batch_size=2)
