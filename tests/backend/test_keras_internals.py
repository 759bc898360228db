"""Every private Keras name in `backend/keras_internals.py` still exists.

One test per function: when a Keras release moves a name, the failure
names the function and the Keras version, instead of a library error deep
in a search.
"""

import keras
import numpy as np
import pytest

from keras_batchtune.backend import keras_internals

MOVED = (
    "keras_internals.{function} no longer works with keras {version}: "
    "{error!r}. Update keras_batchtune/backend/keras_internals.py."
)


def _check(function, check):
    try:
        check()
    except (AttributeError, ImportError, KeyError, TypeError) as error:
        pytest.fail(
            MOVED.format(
                function=function, version=keras.version(), error=error
            )
        )


def _built_optimizer(**kwargs):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, **kwargs)
    model.compile(optimizer, "mse")
    optimizer.build(model.trainable_variables)
    return model, optimizer


def test_data_adapter_class():
    def check():
        cls = keras_internals.data_adapter_class()
        for name in ("get_numpy_iterator", "num_batches", "on_epoch_begin"):
            getattr(cls, name)

    _check("data_adapter_class", check)


def test_epoch_iterator_num_batches():
    def check():
        cls = keras_internals.epoch_iterator_class()
        x = np.zeros((10, 3), "float32")
        iterator = cls(x, x, batch_size=4)
        assert keras_internals.epoch_iterator_num_batches(iterator) == 3
        keras_internals.set_epoch_iterator_num_batches(iterator, 5)
        assert keras_internals.epoch_iterator_num_batches(iterator) == 5

    _check("epoch_iterator_num_batches", check)


def test_optimizer_learning_rate():
    def check():
        _, optimizer = _built_optimizer()
        variable = keras_internals.optimizer_learning_rate(optimizer)
        assert isinstance(variable, keras.Variable)
        schedule = keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.5)
        keras_internals.set_optimizer_learning_rate(optimizer, schedule)
        assert keras_internals.optimizer_learning_rate(optimizer) is schedule
        assert float(optimizer.learning_rate) == pytest.approx(0.5)

    _check("optimizer_learning_rate", check)


def test_optimizer_iterations():
    def check():
        _, optimizer = _built_optimizer(gradient_accumulation_steps=2)
        counter = keras_internals.optimizer_iterations(optimizer)
        counter.assign(5)
        assert int(optimizer.iterations) == 2  # 5 micro-steps // 2

    _check("optimizer_iterations", check)


def test_accumulated_gradients():
    def check():
        model, optimizer = _built_optimizer(gradient_accumulation_steps=2)
        accumulators = keras_internals.accumulated_gradients(optimizer)
        variables = keras_internals.optimizer_trainable_variables(optimizer)
        assert len(accumulators) == len(variables)
        assert len(variables) == len(model.trainable_variables)
        keras_internals.set_accumulated_gradients(optimizer, accumulators)

    _check("accumulated_gradients", check)


@pytest.mark.requires_tensorflow
def test_tf_dataset_adapter():
    import tensorflow as tf

    def check():
        dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 3)))
        adapter = keras_internals.tf_dataset_adapter(dataset.batch(4))
        assert adapter.num_batches == 3
        assert len(list(adapter.get_numpy_iterator())) == 3

    _check("tf_dataset_adapter", check)


def test_epoch_iterator_distribute_strategy():
    def check():
        cls = keras_internals.epoch_iterator_class()
        x = np.zeros((10, 3), "float32")
        iterator = cls(x, x, batch_size=4)
        strategy = keras_internals.epoch_iterator_distribute_strategy(iterator)
        assert strategy is None

    _check("epoch_iterator_distribute_strategy", check)


@pytest.mark.tensorflow_backend
def test_epoch_iterator_distribute_strategy_on_tensorflow():
    import tensorflow as tf
    from keras.src.backend.tensorflow.trainer import TFEpochIterator

    def check():
        x = np.zeros((10, 3), "float32")
        strategy = tf.distribute.get_strategy()
        iterator = TFEpochIterator(
            x=x, y=x, batch_size=4, distribute_strategy=strategy
        )
        # A silent None here would let several replicas grow the batch.
        found = keras_internals.epoch_iterator_distribute_strategy(iterator)
        assert found is strategy, "TFEpochIterator._distribute_strategy moved"

    _check("epoch_iterator_distribute_strategy", check)
