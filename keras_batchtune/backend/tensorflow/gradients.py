"""The gradient-noise probe on TensorFlow: `tf.GradientTape`, `tf.distribute`.

The maths lives in `noise.py` and the sampling of batches in `gradients.py`;
this module only computes the squared norms of mean gradients at two batch
sizes with a `tf.GradientTape`, without updating anything.
"""

import inspect

import tensorflow as tf

from keras_batchtune.backend.common import gradients as common


def _strategy_of(model):
    strategy = getattr(model, "distribute_strategy", None)
    return strategy or tf.distribute.get_strategy()


class GradientNoiseProbe:
    """Squared norms of mean gradients at a small and a large batch size.

    Calling the probe on one large batch of `large_batch_size` examples
    computes the gradient of the model's compiled loss (regularization
    losses included, as in `fit`) over the trainable weights on each of its
    consecutive small batches of `small_batch_size` examples, and returns
    the mean of their squared norms `|G_small|^2` and the squared norm of
    their mean, which is the large batch's gradient, `|G_big|^2`. The
    forward pass runs in training mode (dropout, batch statistics), as in
    `fit`; nothing is updated: no weight, no optimizer state, and the
    non-trainable variables (batch-norm moving statistics, seed generator
    states) and metric variables are restored after each call. The probe
    traces its `tf.function` once and can be called every epoch.

    Under a `tf.distribute` strategy (the model built in its scope) each
    replica takes its consecutive share of the large batch, computes the
    gradients of its own small batches, and the replica means are
    all-reduced into the large batch's gradient exactly as in a training
    step; the small-batch norms cost one extra scalar all-reduce. This is
    AdaptDL's method (Pollux, arXiv 2008.12260): per-replica gradients
    before the all-reduce are small batches for free. It needs
    `large_batch_size` to be a multiple of `num_replicas * small_batch_size`
    (with `small_batch_size = large_batch_size / num_replicas`, the replica
    gradients themselves are the small batches).

    Example:

    ```python
    probe = GradientNoiseProbe(model, small_batch_size=32,
                               large_batch_size=512)
    small_sq_norm, large_sq_norm = probe(x[:512], y[:512])
    ```

    Args:
        model: A compiled Keras model (TensorFlow backend).
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, a multiple of
            `small_batch_size` (times the number of replicas under a
            strategy).

    Raises:
        ValueError: naming the argument, if a batch size is not a positive
            integer, `small_batch_size >= large_batch_size`, or
            `large_batch_size` is not a multiple of `small_batch_size`
            (times the number of replicas); if the model is not compiled
            or has no trainable weights.
    """

    def __init__(self, model, *, small_batch_size, large_batch_size):
        self.strategy = _strategy_of(model)
        replicas = self.strategy.num_replicas_in_sync
        small, large = common.check_probe_arguments(
            model, small_batch_size, large_batch_size, num_replicas=replicas
        )
        self.model = model
        self.small_batch_size = small
        self.large_batch_size = large
        self.num_replicas = replicas
        self._small_per_replica = large // (small * replicas)
        self._loss_has_training_arg = (
            "training" in inspect.signature(model.compute_loss).parameters
        )
        self._built = False
        self._function = tf.function(self._distributed_step)

    def _loss(self, x, y, sample_weight):
        model = self.model
        y_pred = model(x, training=True)
        kwargs = {"training": True} if self._loss_has_training_arg else {}
        return model.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **kwargs
        )

    def _replica_step(self, batch):
        """Runs on each replica: its small batches, then the all-reduce."""
        x, y, sample_weight = batch
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync
        weights = self.model.trainable_variables
        small = self.small_batch_size
        count = self._small_per_replica

        def split(tensor):
            # (count * small, ...) -> (count, small, ...).
            if tensor is None:
                return None
            shape = tf.concat([[count, small], tf.shape(tensor)[1:]], 0)
            return tf.reshape(tensor, shape)

        x, y, sample_weight = tf.nest.map_structure(
            split, (x, y, sample_weight)
        )
        grad_sum = [tf.zeros(w.shape, "float32") for w in weights]
        small_sq_sum = tf.constant(0.0, "float32")
        for index in tf.range(count):
            xs, ys, ws = tf.nest.map_structure(
                lambda t: None if t is None else t[index],
                (x, y, sample_weight),
            )
            with tf.GradientTape() as tape:
                loss = self._loss(xs, ys, ws)
                # Keras divides the loss by the number of replicas so that
                # summed replica gradients are the mean; undo it to get this
                # replica's own mean gradient.
                loss = tf.cast(loss, "float32") * float(replicas)
            grads = tape.gradient(loss, weights)
            grads = [
                tf.zeros(w.shape, "float32")
                if g is None
                else tf.cast(tf.convert_to_tensor(g), "float32")
                for g, w in zip(grads, weights)
            ]
            small_sq_sum += tf.add_n([tf.reduce_sum(g * g) for g in grads])
            grad_sum = [a + g for a, g in zip(grad_sum, grads)]
        local_mean = [g / float(count) for g in grad_sum]
        if replicas > 1:
            large_grads = context.all_reduce("MEAN", local_mean)
            small_sq_sum = context.all_reduce("SUM", small_sq_sum)
        else:
            large_grads = local_mean
        large_sq = tf.add_n([tf.reduce_sum(g * g) for g in large_grads])
        small_sq = small_sq_sum / float(count * replicas)
        return small_sq, large_sq

    def _distributed_step(self, batch):
        small_sq, large_sq = self.strategy.run(
            self._replica_step, args=(batch,)
        )
        local = self.strategy.experimental_local_results
        return local(small_sq)[0], local(large_sq)[0]

    def _distribute(self, batch):
        if self.num_replicas == 1:
            return batch
        share = self.large_batch_size // self.num_replicas

        def replica_share(context):
            start = context.replica_id_in_sync_group * share
            return tf.nest.map_structure(
                lambda t: None if t is None else t[start : start + share],
                batch,
            )

        return self.strategy.experimental_distribute_values_from_function(
            replica_share
        )

    def _build(self, batch):
        """Builds the model and its compiled loss eagerly, once, in scope."""
        if self._built:
            return
        with self.strategy.scope():
            common.build_for_probe(
                self.model,
                *common.take_examples(batch, 0, self.small_batch_size),
            )
        self._built = True

    def __call__(self, x, y=None, sample_weight=None):
        """Measures one large batch.

        Args:
            x: Inputs of exactly `large_batch_size` examples (array, tensor,
                or a dict/list of them).
            y: Targets, or None.
            sample_weight: Sample weights, or None.

        Returns:
            The pair `(small_sq_norm, large_sq_norm)` of floats:
            `|G_small|^2` averaged over the small batches, and `|G_big|^2`.

        Raises:
            ValueError: if the batch does not hold `large_batch_size`
                examples.
        """
        batch = tf.nest.map_structure(
            lambda t: None if t is None else tf.convert_to_tensor(t),
            (x, y, sample_weight),
        )
        common.check_batch_size(batch[0], self.large_batch_size)
        self._build(batch)
        snapshot = common.VariableSnapshot(self.model)
        try:
            small_sq, large_sq = self._function(self._distribute(batch))
        finally:
            snapshot.restore()
        return float(small_sq), float(large_sq)
