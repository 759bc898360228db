"""Gradient accumulation across the replicas of a real MirroredStrategy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_batchtune.backend.tensorflow import replica_accumulation


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("int32")
    return x, y


def _train(strategy, make_optimizer, steps, batch_size, initial_weights):
    x, y = _data()
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)]
        )
        model.compile(make_optimizer(steps), "sparse_categorical_crossentropy")
    model.set_weights(initial_weights)
    if replica_accumulation.needs_install(model.optimizer, strategy):
        replica_accumulation.install(model.optimizer)
    model.fit(x, y, batch_size=batch_size, epochs=2, shuffle=False, verbose=0)
    iterations = keras.ops.convert_to_numpy(model.optimizer.iterations)
    return model.get_weights(), int(iterations)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda steps: keras.optimizers.SGD(
            0.1, momentum=0.9, gradient_accumulation_steps=steps
        ),
        lambda steps: keras.optimizers.AdamW(
            0.01,
            weight_decay=0.1,
            clipnorm=0.5,
            gradient_accumulation_steps=steps,
        ),
    ],
    ids=["sgd_momentum", "adamw_clipnorm"],
)
def test_two_replicas_accumulating_equal_one_large_batch(
    mirrored_strategy, make_optimizer
):
    default = tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    initial = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)]
    ).get_weights()
    reference, reference_updates = _train(
        default, make_optimizer, None, 32, initial
    )
    # 2 micro-batches of 16 (8 per replica) per update, on 2 replicas.
    accumulated, updates = _train(
        mirrored_strategy, make_optimizer, 2, 16, initial
    )
    assert updates == reference_updates == 4
    for got, expected in zip(accumulated, reference):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_one_replica_keeps_keras_own_step(mirrored_strategy):
    optimizer = keras.optimizers.SGD(gradient_accumulation_steps=2)
    assert not replica_accumulation.needs_install(
        optimizer, tf.distribute.get_strategy()
    )
    assert replica_accumulation.needs_install(optimizer, mirrored_strategy)
    replica_accumulation.install(optimizer)
    replica_accumulation.install(optimizer)  # idempotent
    assert not replica_accumulation.needs_install(optimizer, mirrored_strategy)


def test_global_clipnorm_is_refused():
    optimizer = keras.optimizers.SGD(
        global_clipnorm=1.0, gradient_accumulation_steps=2
    )
    with pytest.raises(ValueError, match="global_clipnorm"):
        replica_accumulation.install(optimizer)
