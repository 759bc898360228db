"""Changing a Keras optimizer's gradient accumulation while it trains.

Keras 3 accumulates `gradient_accumulation_steps` micro-batch gradients into
one update (`Optimizer(gradient_accumulation_steps=k)`). It decides which
micro-step updates from its raw step counter (`(steps + 1) % k == 0`) and
counts updates as `steps // k`, so changing `k` mid-training as such would
cut a group short and make `optimizer.iterations` (Adam's bias correction,
schedules) jump. `set_accumulation_steps` re-indexes the counter instead:
after it, `iterations` still counts the updates done and a partly
accumulated group is completed with the new `k`.

Written with `keras.ops` only; runs on every backend (on JAX the train
function must be rebuilt after a change, `model.make_train_function(force=
True)`, as on TensorFlow; PyTorch's eager step reads the setting at each
step). Keras's private optimizer attributes are reached through
`keras_batchtune.backend.keras_internals`.
"""

import contextlib

import keras

from keras_batchtune import backend
from keras_batchtune import distribute
from keras_batchtune import scaling
from keras_batchtune.backend import keras_internals


def strategy_scope(model):
    """The scope to create a model's variables in.

    Example:

    ```python
    with strategy_scope(model):
        variable = model.optimizer.add_variable((4,), name="extra")
    ```

    Args:
        model: A Keras model.

    Returns:
        Its `tf.distribute` strategy's scope on TensorFlow; elsewhere, or
        without a strategy, a context that does nothing.
    """
    strategy = distribute.model_strategy(model)
    if strategy is None:
        return contextlib.nullcontext()
    return strategy.scope()


def accumulation_steps(optimizer):
    """Returns the micro-batches per update of an optimizer (1 if none).

    Example:

    ```python
    accumulation_steps(keras.optimizers.SGD(gradient_accumulation_steps=4))
    # 4
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer`.

    Returns:
        A positive integer.
    """
    return int(getattr(optimizer, "gradient_accumulation_steps", None) or 1)


def prepare(model):
    """Gives a compiled model's optimizer the accumulators resizing needs.

    Keras creates gradient accumulators only when the optimizer is built with
    `gradient_accumulation_steps` set; for a model compiled without it, they
    are added here (one zero variable per trainable weight, as Keras makes
    them). Under a strategy with several replicas the optimizer also gets a
    step that accumulates across them (`make_replica_safe`). Idempotent.

    Example:

    ```python
    prepare(model)
    set_accumulation_steps(model.optimizer, 4)
    ```

    Args:
        model: A compiled Keras model.

    Raises:
        ValueError: if the model is not compiled with an optimizer.
    """
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "The model must be compiled with a `keras.optimizers.Optimizer` "
            f"before its batch size can be resized. Received: {optimizer!r}"
        )
    with strategy_scope(model):
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        if not keras_internals.accumulated_gradients(optimizer):
            variables = keras_internals.optimizer_trainable_variables(optimizer)
            accumulators = [
                optimizer.add_variable_from_reference(
                    variable, name="gradient_accumulator"
                )
                for variable in variables
            ]
            keras_internals.set_accumulated_gradients(optimizer, accumulators)
    make_replica_safe(model)


def make_replica_safe(model):
    """Lets a model's optimizer accumulate gradients across replicas.

    Under a `tf.distribute` strategy with several replicas, Keras 3's own
    accumulation step cannot be traced; the optimizer gets the step of
    `backend/tensorflow/replica_accumulation.py` instead (same arithmetic).
    A no-op with one replica and on other backends. Idempotent.

    Example:

    ```python
    with strategy.scope():
        model.compile(keras.optimizers.SGD(gradient_accumulation_steps=4))
    make_replica_safe(model)
    ```

    Args:
        model: A compiled Keras model.
    """
    backend.distribute.make_replica_safe(model)


def set_accumulation_steps(optimizer, steps):
    """Sets the micro-batches per update, keeping the update count.

    A group of micro-batch gradients accumulated under the old setting is
    completed under the new one. When it already holds `c >= steps`
    micro-batches (the accumulation shrank), its mean is kept with the weight
    of `steps - 1` micro-batches, so the next micro-batch completes it; with
    `steps == 1` the partial group is dropped. The caller must retrace the
    train function (`model.make_train_function(force=True)`), which reads
    `gradient_accumulation_steps` when traced.

    Example:

    ```python
    prepare(model)
    set_accumulation_steps(model.optimizer, 8)  # 8 micro-batches per update
    ```

    Args:
        optimizer: A built `keras.optimizers.Optimizer` given accumulators by
            `prepare`.
        steps: Positive integer, the micro-batches per update.

    Returns:
        The number of micro-batch gradients pending in the next update.

    Raises:
        ValueError: if `steps` is not a positive integer, or the optimizer
            has no accumulators.
    """
    steps = scaling.check_positive_int("steps", steps)
    accumulators = keras_internals.accumulated_gradients(optimizer)
    if not accumulators:
        raise ValueError(
            "The optimizer has no gradient accumulators; call "
            "`accumulation.prepare(model)` first."
        )
    old_steps = accumulation_steps(optimizer)
    counter = keras_internals.optimizer_iterations(optimizer)
    micro_steps = int(keras.ops.convert_to_numpy(counter))
    updates, pending = divmod(micro_steps, old_steps)
    if pending >= steps:
        keep = steps - 1
        for accumulator in accumulators:
            accumulator.assign(accumulator * (keep / pending))
        pending = keep
    counter.assign(updates * steps + pending)
    optimizer.gradient_accumulation_steps = steps if steps > 1 else None
    return pending
