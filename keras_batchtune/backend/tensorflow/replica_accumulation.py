"""Gradient accumulation that runs under a `tf.distribute` strategy.

Keras 3 (3.15) accumulates gradients inside a `cond` whose update branch
all-reduces them across replicas; with several replicas `tf.distribute`
refuses that ("`merge_call` called while defining a new graph"), so neither
`gradient_accumulation_steps` nor a resize by accumulation could run under
`MirroredStrategy`, `MultiWorkerMirroredStrategy` or `TPUStrategy`.

`install` gives one optimizer an apply step that does the same arithmetic in
an order `tf.distribute` accepts: every micro-step all-reduces its gradients
in the replica context (outside any `cond`, so collectives run on every
replica and worker in the same order), adds them to the accumulators in the
cross-replica context, and only there, under a `cond` on the step counter,
applies the mean of the accumulated gradients and resets the accumulators.
The update equals Keras's own: one step with the mean gradient of
`gradient_accumulation_steps` micro-batches. The price is an all-reduce per
micro-batch instead of one per update.

TensorFlow only: this module is imported only on that backend.
"""

import types

import tensorflow as tf


def needs_install(optimizer, strategy):
    """Whether an optimizer needs the replica-safe accumulation step.

    Example:

    ```python
    if needs_install(model.optimizer, model.distribute_strategy):
        install(model.optimizer)
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer`.
        strategy: The model's `tf.distribute.Strategy`, or None.

    Returns:
        True when `strategy` has several replicas in sync and the optimizer
        does not have the step yet.
    """
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return False
    return not getattr(optimizer, "_replica_safe_accumulation", False)


def install(optimizer):
    """Makes an optimizer's gradient accumulation work across replicas.

    Idempotent. Without `gradient_accumulation_steps` (or outside a replica
    context) the optimizer applies gradients exactly as Keras does; the step
    reads `gradient_accumulation_steps` when the train function is traced,
    as Keras does.

    Example:

    ```python
    with strategy.scope():
        model.compile(keras.optimizers.SGD(0.1, gradient_accumulation_steps=4),
                      "mse")
    install(model.optimizer)
    model.fit(x, y, batch_size=32)  # one update per 4 x 32 examples
    ```

    Args:
        optimizer: A `keras.optimizers.Optimizer` of the TensorFlow backend.

    Raises:
        ValueError: if the optimizer clips by global norm (`global_clipnorm`),
            which this step does not support.
    """
    if getattr(optimizer, "_replica_safe_accumulation", False):
        return
    if getattr(optimizer, "global_clipnorm", None):
        raise ValueError(
            "Gradient accumulation across replicas does not support "
            "`global_clipnorm`; use `clipnorm` or `clipvalue`. Received: "
            f"global_clipnorm={optimizer.global_clipnorm}"
        )
    optimizer._backend_apply_gradients = types.MethodType(
        _apply_gradients, optimizer
    )
    optimizer._replica_safe_accumulation = True


def _apply_gradients(optimizer, grads, trainable_variables):
    steps = optimizer.gradient_accumulation_steps
    replica_context = tf.distribute.get_replica_context()
    if not steps or replica_context is None:
        return type(optimizer)._backend_apply_gradients(
            optimizer, grads, trainable_variables
        )
    accumulators = [
        optimizer._accumulated_gradients[optimizer._get_variable_index(v)]
        for v in trainable_variables
    ]
    variables = [v.value for v in trainable_variables]
    reduced = optimizer._all_reduce_sum_gradients(list(zip(grads, variables)))
    reduced_grads = [grad for grad, _ in reduced]

    def accumulate_and_maybe_update(distribution, reduced_grads):
        for grad, accumulator in zip(reduced_grads, accumulators):
            distribution.extended.update(
                accumulator.value, _add, args=(grad,), group=False
            )
        is_update_step = (optimizer._iterations + 1) % steps == 0
        tf.cond(
            is_update_step,
            lambda: _update(optimizer, distribution, variables, accumulators),
            lambda: tf.constant(False),
        )

    replica_context.merge_call(
        accumulate_and_maybe_update, args=(reduced_grads,)
    )


def _add(accumulator, grad):
    return accumulator.assign_add(grad)


def _update(optimizer, distribution, variables, accumulators):
    """The update branch: mean gradient, clipping, weight decay, step."""
    steps = optimizer.gradient_accumulation_steps
    learning_rate = optimizer.learning_rate

    def update_variable(variable, accumulated):
        (grad,) = optimizer._clip_gradients([accumulated / steps])
        if optimizer.weight_decay is not None and optimizer._use_weight_decay(
            variable
        ):
            variable.assign_sub(
                variable
                * tf.cast(optimizer.weight_decay, variable.dtype)
                * tf.cast(learning_rate, variable.dtype)
            )
        return optimizer.update_step(grad, variable, learning_rate)

    for variable, accumulator in zip(variables, accumulators):
        distribution.extended.update(
            variable, update_variable, args=(accumulator.value,), group=False
        )
    for accumulator in accumulators:
        distribution.extended.update(accumulator.value, _reset, group=False)
    return tf.constant(True)


def _reset(accumulator):
    return accumulator.assign(tf.zeros_like(accumulator))
