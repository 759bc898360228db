"""`tf.data` helpers: batching a dataset at a searched batch size.

A `tf.data.Dataset` can feed `fit` on every backend where TensorFlow is
installed, so these helpers are used whatever the backend; TensorFlow is
imported only when a dataset is there (only a TensorFlow program can hold
one).
"""

import math
import warnings
import weakref

import tensorflow as tf

# Examples counted in batched datasets, so each is read through only once.
_EXAMPLE_COUNTS = weakref.WeakKeyDictionary()


def describe_batching(dataset):
    """Tells whether a `tf.data.Dataset` is batched, and by how much.

    The batch size is read from the dataset graph (the `ComputeBatchSize` op
    that `tf.distribute` uses). When the graph does not tell (a `map` after
    `batch`, say), a dataset whose every component has an unknown leading
    dimension is taken as batched with an unknown batch size.

    Example:

    ```python
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    describe_batching(ds)  # (False, None)
    describe_batching(ds.batch(32))  # (True, 32)
    ```

    Args:
        dataset: A `tf.data.Dataset`.

    Returns:
        A tuple `(is_batched, batch_size)`; `batch_size` is None when unknown.
    """
    batch_size = int(
        tf.raw_ops.ComputeBatchSize(input_dataset=dataset._variant_tensor)
    )
    if batch_size > 0:
        return True, batch_size
    specs = tf.nest.flatten(dataset.element_spec)
    shapes = [getattr(spec, "shape", None) for spec in specs]
    batched = bool(shapes) and all(
        shape is not None
        and shape.rank is not None
        and shape.rank >= 1
        and shape[0] is None
        for shape in shapes
    )
    return batched, None


def batch_dataset(dataset, batch_size, drop_remainder=False):
    """Batches a dataset at `batch_size`, re-batching one already batched.

    An already batched dataset is unbatched first, with a one-line warning:
    its batch size was chosen by hand, and the tuner replaces it. Its examples
    are counted (one pass, once per dataset object) so that the re-batched
    dataset keeps a known number of steps per epoch.

    Example:

    ```python
    batch_dataset(tf.data.Dataset.from_tensor_slices((x, y)), 64)
    ```

    Args:
        dataset: A `tf.data.Dataset`, batched or not.
        batch_size: Positive integer.
        drop_remainder: Whether to drop the last partial batch.

    Returns:
        The batched `tf.data.Dataset`.
    """
    batched, old_batch_size = describe_batching(dataset)
    if batched:
        warnings.warn(
            "keras_batchtune: the tf.data.Dataset given to fit is already "
            f"batched (batch size {old_batch_size or 'unknown'}); it is "
            "unbatched and batched again at each trial's batch size.",
            UserWarning,
            stacklevel=2,
        )
        num_examples = count_examples(dataset)
        dataset = dataset.unbatch().batch(
            batch_size, drop_remainder=drop_remainder
        )
        if num_examples is not None:
            round_steps = math.floor if drop_remainder else math.ceil
            dataset = dataset.apply(
                tf.data.experimental.assert_cardinality(
                    round_steps(num_examples / batch_size)
                )
            )
        return dataset
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def count_examples(dataset):
    """Counts the examples of a `tf.data.Dataset`.

    Example:

    ```python
    count_examples(tf.data.Dataset.range(10).batch(4))  # 10
    ```

    Args:
        dataset: A `tf.data.Dataset`; a batched one is read once (once per
            dataset object) to count its examples.

    Returns:
        The number of examples, or None when it cannot be known (an infinite
        dataset, or an unbatched one of unknown size).
    """
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        return None
    if not describe_batching(dataset)[0]:
        return cardinality if cardinality >= 0 else None
    if dataset not in _EXAMPLE_COUNTS:
        _EXAMPLE_COUNTS[dataset] = int(
            dataset.unbatch().reduce(
                tf.constant(0, tf.int64), lambda count, _: count + 1
            )
        )
    return _EXAMPLE_COUNTS[dataset]


def cardinality(dataset):
    """The number of elements of a dataset, or None if unknown or infinite.

    Args:
        dataset: A `tf.data.Dataset`.

    Returns:
        A non-negative integer, or None.
    """
    value = int(dataset.cardinality())
    return value if value >= 0 else None
