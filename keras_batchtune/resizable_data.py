"""Training input whose batch per optimizer update can change during `fit`.

Keras 3 reads the number of steps per epoch once, when `fit` starts: an input
whose physical batch grew mid-`fit` would run out of data early ("Your input
ran out of data") and one that shrank would be cut. The input made here
therefore keeps a fixed physical micro-batch for the whole `fit`, with a
fixed number of steps per epoch that uses every example once; the
`DynamicBatchSize` callback changes the batch per optimizer update by
accumulating more or fewer micro-batches per update.

The object is a Keras data adapter, which `model.fit` takes as its `x`
directly on every backend; it also tells the callback that it is being
trained on.
"""

import math
import warnings
import weakref

import tensorflow as tf
from keras.src.trainers.data_adapters import data_adapter
from keras.src.trainers.data_adapters import tf_dataset_adapter

from keras_batchtune import data as data_module
from keras_batchtune import scaling

SHUFFLE_BUFFER_SIZE = 10_000
"""The most examples of a `tf.data.Dataset` held in its shuffle buffer."""

# The input `fit` most recently started to use (see `last_used`).
_LAST_USED = None


def last_used():
    """Returns the `ResizableData` a `fit` most recently started to use.

    `fit` asks its input for its dataset (TensorFlow) or resets it before it
    calls any callback, so a callback's `on_train_begin` finds the input of
    its own `fit` here.

    Returns:
        A `ResizableData`, or None.
    """
    return _LAST_USED() if _LAST_USED is not None else None


def _mark_used(resizable_data):
    global _LAST_USED
    _LAST_USED = weakref.ref(resizable_data)


class ResizableData(data_adapter.DataAdapter):
    """Training data batched in fixed micro-batches, for `DynamicBatchSize`.

    Made by `keras_batchtune.resizable`; pass it to `model.fit` as `x`.

    Attributes:
        batch_size: The physical (micro-)batch size, fixed for a `fit`.
        num_examples: The number of training examples.
        epochs_begun: How many epochs `fit` has started on this input.
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
    ):
        self.num_examples = num_examples
        self._batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.epochs_begun = 0
        self._element_dataset = element_dataset
        dataset = element_dataset
        if shuffle:
            dataset = dataset.shuffle(
                min(num_examples, SHUFFLE_BUFFER_SIZE),
                seed=seed,
                reshuffle_each_iteration=True,
            )
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        self._dataset = dataset.prefetch(tf.data.AUTOTUNE)
        self._adapter = tf_dataset_adapter.TFDatasetAdapter(self._dataset)

    # The DataAdapter interface.

    def get_tf_dataset(self):
        _mark_used(self)
        return self._dataset

    def get_numpy_iterator(self):
        return self._adapter.get_numpy_iterator()

    def get_jax_iterator(self):
        return self._adapter.get_jax_iterator()

    def get_torch_dataloader(self):
        return self._adapter.get_torch_dataloader()

    @property
    def num_batches(self):
        if self.drop_remainder:
            return self.num_examples // self._batch_size
        return math.ceil(self.num_examples / self._batch_size)

    @property
    def batch_size(self):
        return self._batch_size

    @property
    def has_partial_batch(self):
        return (
            not self.drop_remainder
            and self.num_examples % self._batch_size != 0
        )

    @property
    def partial_batch_size(self):
        if not self.has_partial_batch:
            return None
        return self.num_examples % self._batch_size

    def on_epoch_begin(self):
        self.epochs_begun += 1
        _mark_used(self)

    def on_epoch_end(self):
        _mark_used(self)

    # For the callback.

    @property
    def examples_per_epoch(self):
        """Examples trained on per epoch (all, unless `drop_remainder`)."""
        if self.drop_remainder:
            return self.num_batches * self._batch_size
        return self.num_examples

    def sample_batches(self, batch_size, seed=None):
        """Endless shuffled batches of exactly `batch_size` examples.

        For measurements beside training (the gradient noise scale); reading
        them does not disturb the epochs.

        Args:
            batch_size: Positive integer, at most `num_examples`.
            seed: Optional integer, the shuffle seed.

        Returns:
            An iterator of batches, each a tuple `(x, y)` or `(x,)`.
        """
        dataset = self._element_dataset.shuffle(
            min(self.num_examples, SHUFFLE_BUFFER_SIZE), seed=seed
        )
        dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
        return iter(dataset.prefetch(1))

    def __repr__(self):
        return (
            f"<ResizableData: {self.num_examples} examples in micro-batches "
            f"of {self._batch_size}>"
        )


def _as_tensors(structure):
    return tf.nest.map_structure(tf.convert_to_tensor, structure)


def _from_arrays(x, y):
    structure = (x,) if y is None else (x, y)
    leaves = tf.nest.flatten(structure)
    if not leaves or not all(hasattr(leaf, "shape") for leaf in leaves):
        raise ValueError(
            "`x`: `resizable` takes numpy arrays, tensors (or nested "
            "dicts/lists of them) or an unbatched `tf.data.Dataset`. "
            f"Received: x of type {type(x).__name__}"
        )
    sizes = {int(leaf.shape[0]) for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(
            "`x` and `y` must hold the same number of examples. Received "
            f"leading dimensions {sorted(sizes)}"
        )
    num_examples = sizes.pop()
    tensors = _as_tensors(structure)
    return tf.data.Dataset.from_tensor_slices(tensors), num_examples


def _from_dataset(dataset, y):
    if y is not None:
        raise ValueError(
            "`y` must be None when `x` is a `tf.data.Dataset` (it yields the "
            f"targets). Received: y of type {type(y).__name__}"
        )
    batched, _ = data_module.describe_batching(dataset)
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


def resizable(
    x,
    y=None,
    *,
    batch_size,
    shuffle=True,
    seed=None,
    drop_remainder=False,
):
    """Wraps training data so `DynamicBatchSize` can resize its batch.

    The data is cut into micro-batches of `batch_size` examples, reshuffled
    every epoch; each epoch uses every example once (the last micro-batch is
    smaller unless `drop_remainder=True`). Pass the result to `model.fit` as
    `x` (no `y`, no `batch_size`). `batch_size` is the physical batch: the
    smallest batch per update the callback can use, and its starting one;
    larger batches are whole numbers of micro-batches accumulated into one
    update.

    Example:

    ```python
    train = keras_batchtune.resizable(x, y, batch_size=32, seed=0)
    model.fit(train, epochs=20, validation_data=(x_val, y_val), callbacks=[
        keras_batchtune.DynamicBatchSize(
            "plateau", min_batch_size=32, max_batch_size=512)])
    ```

    Args:
        x: Numpy arrays or tensors (or nested dicts/lists/tuples of them),
            or an unbatched `tf.data.Dataset` yielding `(x, y)` (a batched
            one is unbatched with a warning).
        y: Targets for array `x`; None for a dataset.
        batch_size: Positive integer, the physical micro-batch size (global
            under a `tf.distribute` strategy).
        shuffle: Boolean, whether to reshuffle the examples every epoch. A
            dataset is shuffled in a buffer of up to `SHUFFLE_BUFFER_SIZE`
            examples.
        seed: Optional integer, the shuffle seed.
        drop_remainder: Boolean, whether to drop the last, smaller
            micro-batch of each epoch (static shapes, as TPUs want).

    Returns:
        A `ResizableData`, which `model.fit` takes as its `x`.

    Raises:
        ValueError: naming the argument, if `batch_size` is not a positive
            integer, `x` is not arrays or a finite dataset, `y` is given
            with a dataset, or there are fewer examples than `batch_size`
            with `drop_remainder=True`.
    """
    batch_size = scaling.check_positive_int("batch_size", batch_size)
    if isinstance(x, ResizableData):
        raise ValueError(
            "`x` is already resizable; pass the original data to "
            "`resizable` again to change its micro-batch size."
        )
    if isinstance(x, tf.data.Dataset):
        dataset, num_examples = _from_dataset(x, y)
    else:
        dataset, num_examples = _from_arrays(x, y)
    if num_examples < 1 or (drop_remainder and num_examples < batch_size):
        raise ValueError(
            f"`batch_size`={batch_size} leaves no batch: the data holds "
            f"{num_examples} examples (drop_remainder={drop_remainder})."
        )
    return ResizableData(
        dataset,
        num_examples,
        batch_size=batch_size,
        shuffle=bool(shuffle),
        seed=seed,
        drop_remainder=bool(drop_remainder),
    )
