"""Measures the gradient noise scale of a Keras model, on every backend.

The maths lives in `noise.py`; the backend's `GradientNoiseProbe`
(`keras_batchtune/backend/<backend>/gradients.py`) computes the squared
norms of mean gradients at two batch sizes without updating anything; this
module samples the batches and joins them.
"""

import keras
import numpy as np

from keras_batchtune import backend
from keras_batchtune import data as data_module
from keras_batchtune import noise
from keras_batchtune import scaling

GradientNoiseProbe = backend.gradients.GradientNoiseProbe


def data_parallel_devices():
    """The devices each batch is split over by the global distribution.

    Those of a `keras.distribution.DataParallel` set with
    `keras.distribution.set_distribution` (JAX); 1 without one, under
    another distribution, and on backends without `keras.distribution`
    (TensorFlow's replicas are its `tf.distribute` strategy's). A probe
    made under such a distribution takes each device's gradient as a
    small batch (see `GradientNoiseProbe`).

    Example:

    ```python
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    data_parallel_devices()  # 8 on 8 TPU cores
    ```

    Returns:
        A positive integer.
    """
    count = getattr(backend.gradients, "data_parallel_devices", None)
    return 1 if count is None else count()


def _split_element(element):
    """Splits a data element into `(x, y, sample_weight)`."""
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        return tuple(element) + (None,) * (3 - len(element))
    return element, None, None


def _take(tensor, index):
    if tensor is None:
        return None
    if isinstance(tensor, np.ndarray):
        return tensor[index]
    if data_module.is_tf_dataset(tensor) or not hasattr(tensor, "shape"):
        raise ValueError(f"Cannot index {type(tensor).__name__}")
    try:
        return keras.ops.take(tensor, index, axis=0)
    except Exception:  # noqa: BLE001 - a tensor of another framework
        return np.asarray(tensor)[index]


def _array_batches(data, large_batch_size, num_batches, shuffle, seed):
    """Yields `(x, y, sample_weight)` large batches from arrays."""
    x, y, sample_weight = _split_element(tuple(data))
    leaves = [t for t in keras.tree.flatten(x) if t is not None]
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
        yield tuple(
            keras.tree.map_structure(lambda t: _take(t, index), part)
            if part is not None
            else None
            for part in (x, y, sample_weight)
        )


def _dataset_batches(dataset, large_batch_size, num_batches):
    """Yields `(x, y, sample_weight)` large batches from a dataset."""
    from keras_batchtune.backend import tf_data

    size = tf_data.cardinality(dataset)
    if size is not None and size < large_batch_size:
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

    It runs on every Keras backend: a `tf.GradientTape` on TensorFlow,
    `jax.grad` over Keras's stateless API (one jitted function) on JAX,
    `torch.autograd.grad` on PyTorch. Under a `tf.distribute` strategy
    (TensorFlow; a model built in its scope), each replica's gradients
    before the all-reduce are small batches (AdaptDL's method, Pollux,
    arXiv 2008.12260): the measurement costs one scalar all-reduce more
    than a training step. `large_batch_size` must then be a multiple of
    `num_replicas * small_batch_size`. On JAX under a
    `keras.distribution.DataParallel` over several devices the same holds
    per device: each device differentiates its own shard of the large batch
    with no communication (`jax.shard_map`), and one all-reduce gives both
    norms; `large_batch_size` must be a multiple of
    `devices * small_batch_size`. Elsewhere (PyTorch, JAX without such a
    distribution) the probe measures on one replica. See
    `GradientNoiseProbe` and `data_parallel_devices`.

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
        model: A compiled Keras model (any backend).
        data: A tuple `(x, y)` or `(x, y, sample_weight)` of numpy arrays
            or tensors of the backend (`x` may be a dict or list of them),
            or, where TensorFlow is installed, a `tf.data.Dataset` of such
            tuples (on any backend). Arrays are sampled without
            replacement, pass after pass (shuffled unless `shuffle=False`);
            a dataset is read in its own order, repeated if needed (a
            batched one is unbatched first).
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, a multiple of
            `small_batch_size` (times the replicas or devices, see above).
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
    if data_module.is_tf_dataset(data):
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
