"""Measures the gradient noise scale of a Keras model (TensorFlow backend).

The maths lives in `noise.py`; this module only computes the squared norms
of mean gradients at two batch sizes with a `tf.GradientTape`, without
updating anything.
"""

import inspect

import numpy as np
import tensorflow as tf

from keras_batchtune import data as data_module
from keras_batchtune import noise
from keras_batchtune import scaling


def _strategy_of(model):
    strategy = getattr(model, "distribute_strategy", None)
    return strategy or tf.distribute.get_strategy()


def _split_element(element):
    """Splits a data element into `(x, y, sample_weight)`."""
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        return tuple(element) + (None,) * (3 - len(element))
    return element, None, None


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
        small, large = noise.check_batch_sizes(
            small_batch_size, large_batch_size
        )
        self.strategy = _strategy_of(model)
        replicas = self.strategy.num_replicas_in_sync
        if large % (small * replicas):
            where = (
                f" times the {replicas} replicas of the model's strategy"
                if replicas > 1
                else ""
            )
            raise ValueError(
                "`large_batch_size` must be a multiple of `small_batch_size`"
                f"{where}. Received: large_batch_size={large}, "
                f"small_batch_size={small}"
            )
        if not getattr(model, "compiled", False):
            raise ValueError(
                "`model` must be compiled with a loss before its gradient "
                "noise scale can be measured."
            )
        self.model = model
        self.small_batch_size = small
        self.large_batch_size = large
        self.num_replicas = replicas
        self._small_per_replica = large // (small * replicas)
        self._loss_has_training_arg = (
            "training" in inspect.signature(model.compute_loss).parameters
        )
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
        """Builds an unbuilt model or compiled loss eagerly, in scope."""
        model = self.model
        compile_loss = getattr(model, "_compile_loss", None)
        if model.built and getattr(compile_loss, "built", True):
            return
        x, y, sample_weight = tf.nest.map_structure(
            lambda t: None if t is None else t[: self.small_batch_size], batch
        )
        with self.strategy.scope():
            y_pred = model(x, training=False)
            model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight
            )

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
        size = int(tf.nest.flatten(batch[0])[0].shape[0])
        if size != self.large_batch_size:
            raise ValueError(
                f"The batch must hold `large_batch_size`="
                f"{self.large_batch_size} examples. Received: {size}"
            )
        self._build(batch)
        model = self.model
        saved = {
            id(v): (v, v.numpy())
            for v in list(model.non_trainable_variables)
            + list(model.metrics_variables)
        }
        try:
            small_sq, large_sq = self._function(self._distribute(batch))
        finally:
            for variable, value in saved.values():
                variable.assign(value)
        return float(small_sq), float(large_sq)


def _take(tensor, index):
    if tensor is None:
        return None
    if isinstance(tensor, np.ndarray):
        return tensor[index]
    return tf.gather(tensor, index)


def _array_batches(data, large_batch_size, num_batches, shuffle, seed):
    """Yields `(x, y, sample_weight)` large batches from arrays."""
    x, y, sample_weight = _split_element(tuple(data))
    leaves = [t for t in tf.nest.flatten(x) if t is not None]
    size = int(np.shape(leaves[0])[0])
    if size < large_batch_size:
        raise ValueError(
            f"`data` holds {size} examples, fewer than "
            f"`large_batch_size`={large_batch_size}."
        )
    rng = np.random.default_rng(seed)
    order = np.arange(size)
    position = size  # start with a fresh pass
    for _ in range(num_batches):
        if position + large_batch_size > size:
            order = rng.permutation(size) if shuffle else np.arange(size)
            position = 0
        index = order[position : position + large_batch_size]
        position += large_batch_size
        yield tf.nest.map_structure(
            lambda t: _take(t, index), (x, y, sample_weight)
        )


def _dataset_batches(dataset, large_batch_size, num_batches):
    """Yields `(x, y, sample_weight)` large batches from a dataset."""
    size = int(dataset.cardinality())
    if 0 <= size < large_batch_size:
        raise ValueError(
            f"`data` yields {size} examples, fewer than "
            f"`large_batch_size`={large_batch_size}."
        )
    batches = (
        dataset.repeat()
        .batch(large_batch_size, drop_remainder=True)
        .take(num_batches)
    )
    count = 0
    for element in batches:
        count += 1
        yield _split_element(element)
    if count == 0:
        raise ValueError(
            "`data` yields fewer than `large_batch_size`="
            f"{large_batch_size} examples."
        )


def gradient_noise_scale(
    model,
    data,
    *,
    small_batch_size,
    large_batch_size,
    num_batches=16,
    shuffle=True,
    seed=None,
):
    """Measures the gradient noise scale `B_simple` of a model on data.

    Takes `num_batches` large batches of `large_batch_size` examples, splits
    each into its consecutive small batches of `small_batch_size`, and
    computes the mean gradient of the model's compiled loss (its
    regularization losses included) over the trainable weights on each
    small batch; the large batch's gradient is their mean. `|G_small|^2` is
    averaged over all the small batches and `|G_big|^2` over the large
    ones, and the unbiased two-batch estimator of McCandlish et al. 2018
    (arXiv 1812.06162, App. A) turns them into `|G|^2`, `tr(Sigma)` and
    `B_simple = tr(Sigma) / |G|^2`. The forward passes run in training
    mode; no weight, optimizer state, non-trainable variable or metric is
    changed.

    Under a `tf.distribute` strategy (a model built in its scope), each
    replica's gradients before the all-reduce are small batches (AdaptDL's
    method, Pollux, arXiv 2008.12260): the measurement costs one scalar
    all-reduce more than a training step. `large_batch_size` must then be a
    multiple of `num_replicas * small_batch_size`. See `GradientNoiseProbe`.

    Because `|G|^2` is small next to the noise, the estimate needs many
    examples: `num_batches * large_batch_size` of several thousand, with
    `large_batch_size` well above `B_simple` and `small_batch_size` well
    below it, gives a few percent of error on smooth problems.

    Example:

    ```python
    estimate = gradient_noise_scale(
        model, (x_train, y_train), small_batch_size=32,
        large_batch_size=512, num_batches=16,
    )
    estimate.b_simple
    ```

    Args:
        model: A compiled Keras model (TensorFlow backend).
        data: A tuple `(x, y)` or `(x, y, sample_weight)` of arrays or
            tensors (`x` may be a dict or list of them), or an unbatched
            `tf.data.Dataset` of such tuples. Arrays are sampled without
            replacement, pass after pass (shuffled unless `shuffle=False`);
            a dataset is read in its own order, repeated if needed (a
            batched one is unbatched first).
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, a multiple of
            `small_batch_size`.
        num_batches: Positive integer, the number of large batches.
        shuffle: Boolean, shuffle arrays (default True).
        seed: Integer or None, the shuffling seed.

    Returns:
        A `NoiseScale(b_simple, grad_sq_norm, trace_cov)`.

    Raises:
        ValueError: naming the argument, if a batch size or `num_batches` is
            not a positive integer, `large_batch_size` is not a multiple of
            `small_batch_size` greater than it, `data` holds fewer than
            `large_batch_size` examples, or the model is not compiled.
    """
    num_batches = scaling.check_positive_int("num_batches", num_batches)
    probe = GradientNoiseProbe(
        model,
        small_batch_size=small_batch_size,
        large_batch_size=large_batch_size,
    )
    if isinstance(data, tf.data.Dataset):
        if data_module.describe_batching(data)[0]:
            data = data.unbatch()
        batches = _dataset_batches(data, probe.large_batch_size, num_batches)
    elif isinstance(data, (tuple, list)) and 1 <= len(data) <= 3:
        batches = _array_batches(
            data, probe.large_batch_size, num_batches, shuffle, seed
        )
    else:
        raise ValueError(
            "`data` must be a tuple `(x, y)` or `(x, y, sample_weight)` of "
            "arrays, or an unbatched `tf.data.Dataset`. Received: "
            f"data of type {type(data).__name__}"
        )
    small_total = 0.0
    large_total = 0.0
    count = 0
    for x, y, sample_weight in batches:
        small_sq, large_sq = probe(x, y, sample_weight)
        small_total += small_sq
        large_total += large_sq
        count += 1
    return noise.estimate_noise_scale(
        small_total / count,
        large_total / count,
        probe.small_batch_size,
        probe.large_batch_size,
    )
