"""`tf.data` pipelines of `keras_batchtune.resizable`.

Two users, wherever TensorFlow is installed:

- TensorFlow's `fit` reads a `tf.data.Dataset`: `TFEpochBatches` makes it,
  of fixed micro-batches or of batches whose size is read from a
  `tf.Variable` when each epoch's iterator is made (the train step, traced
  with an unknown batch dimension, is then not retraced);
- a `tf.data.Dataset` given to `resizable` on JAX or PyTorch:
  `DatasetEpochBatches` reads each epoch through it as numpy batches, the
  way `epoch_batches.ArrayEpochBatches` reads arrays.

Imported only where a dataset is there or the backend is TensorFlow.
"""

import warnings

import tensorflow as tf

from keras_batchtune.backend import tf_data


def from_arrays(arrays):
    """The dataset of the examples of numpy arrays, one element each.

    Args:
        arrays: A structure of numpy arrays, `(x,)` or `(x, y)`, with the
            same number of rows.

    Returns:
        An unbatched `tf.data.Dataset`.
    """
    return tf.data.Dataset.from_tensor_slices(arrays)


def from_dataset(dataset, y):
    """Checks a dataset given to `resizable`; returns it unbatched.

    Args:
        dataset: A finite `tf.data.Dataset` yielding `(x, y)` (or `x`),
            batched or not.
        y: What was given as `y`; must be None.

    Returns:
        A tuple `(element_dataset, num_examples)`; the elements are tuples.

    Raises:
        ValueError: naming the argument, if `y` is given or the dataset is
            infinite.
    """
    if y is not None:
        raise ValueError(
            "`y` must be None when `x` is a `tf.data.Dataset` (it yields the "
            f"targets). Received: y of type {type(y).__name__}"
        )
    batched, _ = tf_data.describe_batching(dataset)
    if batched:
        warnings.warn(
            "resizable: `x` is a batched tf.data.Dataset; it is unbatched "
            "and batched again in micro-batches of `batch_size`.",
            stacklevel=3,
        )
        dataset = dataset.unbatch()
    num_examples = int(dataset.cardinality())
    if num_examples == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "`x`: an infinite dataset has no epochs to resize the batch in; "
            "pass a finite dataset (without `.repeat()`)."
        )
    if num_examples < 0:
        # Unknown size (after a `filter`, say): count it in one pass.
        num_examples = int(
            dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)
        )
        dataset = dataset.apply(
            tf.data.experimental.assert_cardinality(num_examples)
        )
    if isinstance(dataset.element_spec, tuple):
        return dataset, num_examples
    return dataset.map(lambda *element: element), num_examples


def _shuffled(element_dataset, num_examples, shuffle, seed, buffer_size):
    if not shuffle:
        return element_dataset
    return element_dataset.shuffle(
        min(num_examples, buffer_size),
        seed=seed,
        reshuffle_each_iteration=True,
    )


class DatasetEpochBatches:
    """The batches of each epoch over a `tf.data.Dataset`, as numpy.

    Same interface as `epoch_batches.ArrayEpochBatches`.

    Args:
        element_dataset: An unbatched `tf.data.Dataset` of tuples.
        num_examples: Positive integer, its number of elements.
        shuffle: Whether each epoch reshuffles.
        seed: Optional integer, the shuffle seed.
        shuffle_buffer_size: Positive integer, the most examples held in
            the shuffle buffer.
    """

    def __init__(
        self,
        element_dataset,
        num_examples,
        *,
        shuffle,
        seed,
        shuffle_buffer_size,
    ):
        self.element_dataset = element_dataset
        self.num_examples = int(num_examples)
        self.shuffle_buffer_size = int(shuffle_buffer_size)
        self.shuffled = _shuffled(
            element_dataset, num_examples, shuffle, seed, shuffle_buffer_size
        )

    def epoch(self, batch_size, drop_remainder=False):
        """One epoch of numpy batches; nothing is read before the first.

        Args:
            batch_size: Positive integer.
            drop_remainder: Whether to leave out the last, smaller batch.

        Yields:
            Batches: tuples of numpy arrays.
        """
        dataset = self.shuffled.batch(batch_size, drop_remainder=drop_remainder)
        yield from dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    def samples(self, batch_size, seed=None):
        """Endless shuffled numpy batches of exactly `batch_size` examples.

        Args:
            batch_size: Positive integer, at most `num_examples`.
            seed: Optional integer, the shuffle seed.

        Yields:
            Batches: tuples of numpy arrays.
        """
        dataset = self.element_dataset.shuffle(
            min(self.num_examples, self.shuffle_buffer_size), seed=seed
        )
        dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
        yield from dataset.prefetch(1).as_numpy_iterator()


class TFEpochBatches:
    """The `tf.data.Dataset` TensorFlow's `fit` reads, fixed or resizable.

    Args:
        element_dataset: An unbatched `tf.data.Dataset` of tuples.
        num_examples: Positive integer, its number of elements.
        batch_size: Positive integer, the micro-batch.
        shuffle: Whether each epoch reshuffles.
        seed: Optional integer, the shuffle seed.
        drop_remainder: Whether to drop each epoch's last, smaller batch.
        shuffle_buffer_size: Positive integer, the most examples held in
            the shuffle buffer.
    """

    def __init__(
        self,
        element_dataset,
        num_examples,
        *,
        batch_size,
        shuffle,
        seed,
        drop_remainder,
        shuffle_buffer_size,
    ):
        self.shuffled = _shuffled(
            element_dataset, num_examples, shuffle, seed, shuffle_buffer_size
        )
        self._fixed = self.shuffled.batch(
            batch_size, drop_remainder=drop_remainder
        ).prefetch(tf.data.AUTOTUNE)
        self._variable = None

    def fixed(self):
        """The dataset of micro-batches (the batch never changes)."""
        return self._fixed

    def resizable(self, batch_size):
        """A dataset whose batch size is read when each epoch begins.

        Args:
            batch_size: Positive integer, the batch of the first epoch.

        Returns:
            A `tf.data.Dataset`; `set_batch_size` changes the batch of the
            epochs that begin afterwards.
        """
        if self._variable is None:
            with tf.init_scope():
                self._variable = tf.Variable(
                    batch_size,
                    dtype=tf.int64,
                    trainable=False,
                    name="resizable_batch_size",
                )
        variable = self._variable
        variable.assign(batch_size)
        shuffled = self.shuffled
        dataset = tf.data.Dataset.from_tensors(0).flat_map(
            lambda _: shuffled.batch(variable.read_value())
        )
        return dataset.prefetch(tf.data.AUTOTUNE)

    def set_batch_size(self, batch_size):
        """Sets the batch of the `resizable` dataset's next epochs.

        Args:
            batch_size: Positive integer.
        """
        if self._variable is not None:
            self._variable.assign(batch_size)
