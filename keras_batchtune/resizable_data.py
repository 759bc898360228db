"""Training input whose batch per optimizer update can change during `fit`.

Two mechanisms change the batch per update, and `DynamicBatchSize` picks:

- **Physical**: the pipeline makes bigger batches from the next epoch on (a
  batch size read from a variable when the epoch's iterator is made, so the
  train step, traced with an unknown batch dimension, is not retraced).
  Keras 3 reads the steps per epoch once, when `fit` starts, so the input
  tells the running `fit` loop's epoch iterator the new count at each epoch
  begin (`fit_loop`); without that the epoch would end early ("Your input
  ran out of data") or be cut. Used with the TensorFlow backend on one
  replica, without `drop_remainder`, up to `max_physical_batch_size`.
- **Accumulation**: a fixed physical micro-batch for the whole `fit` and a
  fixed number of steps per epoch; a larger batch accumulates more
  micro-batches per update. Used beyond `max_physical_batch_size`, under
  strategies with several replicas, with `drop_remainder=True` (TPUs want
  static shapes) and where the `fit` loop cannot be found.

Either way every example is used once per epoch.

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
from keras_batchtune import fit_loop
from keras_batchtune import scaling
from keras_batchtune import space

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
    """Training data whose batch `DynamicBatchSize` can resize between epochs.

    Made by `keras_batchtune.resizable`; pass it to `model.fit` as `x`.

    Attributes:
        micro_batch_size: The batch size given to `resizable`: the smallest
            physical batch, and the unit of every batch size.
        max_physical_batch_size: The largest physical batch, or None.
        num_examples: The number of training examples.
        epochs_begun: How many epochs `fit` has started on this input.
        physical: Whether the running `fit` can take bigger physical batches
            (decided when `fit` asks for the dataset).
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
        max_physical_batch_size=None,
    ):
        self.num_examples = num_examples
        self.micro_batch_size = batch_size
        self.max_physical_batch_size = max_physical_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.epochs_begun = 0
        self.physical = False
        self._physical_batch_size = batch_size
        self._batch_size_variable = None
        self._epoch_iterator = None
        self._element_dataset = element_dataset
        if shuffle:
            element_dataset = element_dataset.shuffle(
                min(num_examples, SHUFFLE_BUFFER_SIZE),
                seed=seed,
                reshuffle_each_iteration=True,
            )
        self._shuffled = element_dataset
        dataset = element_dataset.batch(
            batch_size, drop_remainder=drop_remainder
        )
        self._dataset = dataset.prefetch(tf.data.AUTOTUNE)
        self._adapter = tf_dataset_adapter.TFDatasetAdapter(self._dataset)

    # The DataAdapter interface.

    def get_tf_dataset(self):
        _mark_used(self)
        iterator_class = fit_loop.epoch_iterator_class()
        epoch_iterator = (
            fit_loop.find_caller(iterator_class) if iterator_class else None
        )
        self.physical = self._can_grow(epoch_iterator)
        self._physical_batch_size = self.micro_batch_size
        if not self.physical:
            self._epoch_iterator = None
            return self._dataset
        self._epoch_iterator = weakref.ref(epoch_iterator)
        return self._resizable_dataset()

    def get_numpy_iterator(self):
        self.physical = False
        return self._adapter.get_numpy_iterator()

    def get_jax_iterator(self):
        self.physical = False
        return self._adapter.get_jax_iterator()

    def get_torch_dataloader(self):
        self.physical = False
        return self._adapter.get_torch_dataloader()

    @property
    def num_batches(self):
        batch_size = self._physical_batch_size
        if self.drop_remainder:
            return self.num_examples // batch_size
        return math.ceil(self.num_examples / batch_size)

    @property
    def batch_size(self):
        return self._physical_batch_size

    @property
    def has_partial_batch(self):
        return (
            not self.drop_remainder
            and self.num_examples % self._physical_batch_size != 0
        )

    @property
    def partial_batch_size(self):
        if not self.has_partial_batch:
            return None
        return self.num_examples % self._physical_batch_size

    def on_epoch_begin(self):
        self.epochs_begun += 1
        _mark_used(self)
        epoch_iterator = self._epoch_iterator and self._epoch_iterator()
        if self.physical and epoch_iterator is not None:
            # Called by the epoch iterator before it reads its step count.
            fit_loop.set_steps_per_epoch(epoch_iterator, self.num_batches)

    def on_epoch_end(self):
        _mark_used(self)

    # For the callback.

    def plan(self, batch_size):
        """How a batch per update is made: physical batch, micro-steps.

        Args:
            batch_size: Positive multiple of `micro_batch_size`.

        Returns:
            A tuple `(physical_batch_size, accumulation_steps)` with
            `physical_batch_size * accumulation_steps == batch_size`.
        """
        micro = self.micro_batch_size
        if not self.physical:
            return micro, batch_size // micro
        cap = self.max_physical_batch_size or batch_size
        return space.split_batch(batch_size, max(cap, micro), multiple=micro)

    def set_physical_batch_size(self, batch_size):
        """Sets the physical batch of the epochs that begin from now on.

        Args:
            batch_size: Positive multiple of `micro_batch_size`; with
                `physical` False, only `micro_batch_size` itself.

        Raises:
            ValueError: if this `fit` cannot take that batch.
        """
        if batch_size == self._physical_batch_size:
            return
        if not self.physical or batch_size % self.micro_batch_size:
            raise ValueError(
                f"This `fit` cannot take a physical batch of {batch_size}; "
                f"it stays at {self._physical_batch_size}."
            )
        self._physical_batch_size = int(batch_size)
        self._batch_size_variable.assign(batch_size)

    @property
    def examples_per_epoch(self):
        """Examples trained on per epoch (all, unless `drop_remainder`)."""
        if self.drop_remainder:
            return self.num_batches * self._physical_batch_size
        return self.num_examples

    def _can_grow(self, epoch_iterator):
        if self.drop_remainder or epoch_iterator is None:
            return False
        if getattr(epoch_iterator, "steps_per_epoch", None):
            return False
        if not hasattr(epoch_iterator, "_num_batches"):
            return False
        cap = self.max_physical_batch_size
        if cap is not None and cap < 2 * self.micro_batch_size:
            return False
        strategy = getattr(epoch_iterator, "_distribute_strategy", None)
        return strategy is None or strategy.num_replicas_in_sync == 1

    def _resizable_dataset(self):
        """Batches of the size the variable holds when an epoch begins."""
        if self._batch_size_variable is None:
            with tf.init_scope():
                self._batch_size_variable = tf.Variable(
                    self._physical_batch_size,
                    dtype=tf.int64,
                    trainable=False,
                    name="resizable_batch_size",
                )
        variable = self._batch_size_variable
        variable.assign(self._physical_batch_size)
        shuffled = self._shuffled
        dataset = tf.data.Dataset.from_tensors(0).flat_map(
            lambda _: shuffled.batch(variable.read_value())
        )
        return dataset.prefetch(tf.data.AUTOTUNE)

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
            f"<ResizableData: {self.num_examples} examples in batches of "
            f"{self._physical_batch_size} (micro-batch "
            f"{self.micro_batch_size})>"
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
    max_physical_batch_size=None,
):
    """Wraps training data so `DynamicBatchSize` can resize its batch.

    The data is cut into batches of `batch_size` examples, reshuffled every
    epoch; each epoch uses every example once (the last batch is smaller
    unless `drop_remainder=True`). Pass the result to `model.fit` as `x` (no
    `y`, no `batch_size`). `batch_size` is the starting batch and the unit
    of every batch the callback sets. A larger batch is made physically
    (the pipeline makes bigger batches from the next epoch on) with the
    TensorFlow backend on one replica, up to `max_physical_batch_size`;
    beyond that, under a strategy with several replicas or with
    `drop_remainder=True`, it accumulates physical batches into one update.

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
            micro-batch of each epoch (static shapes, as TPUs want); it
            also keeps the physical batch fixed.
        max_physical_batch_size: Optional positive integer, the largest
            physical batch (what fits in memory, say from
            `keras_batchtune.find_max_batch_size`); larger batches
            accumulate. None: no cap. `batch_size` itself: always
            accumulate, with a fixed physical batch.

    Returns:
        A `ResizableData`, which `model.fit` takes as its `x`.

    Raises:
        ValueError: naming the argument, if `batch_size` is not a positive
            integer, `x` is not arrays or a finite dataset, `y` is given
            with a dataset, there are fewer examples than `batch_size`
            with `drop_remainder=True`, or `max_physical_batch_size` is
            not a positive integer >= `batch_size`.
    """
    batch_size = scaling.check_positive_int("batch_size", batch_size)
    if max_physical_batch_size is not None:
        scaling.check_positive_int(
            "max_physical_batch_size", max_physical_batch_size
        )
        if max_physical_batch_size < batch_size:
            raise ValueError(
                "`max_physical_batch_size` must be >= `batch_size` (or "
                f"None). Received: max_physical_batch_size="
                f"{max_physical_batch_size}, batch_size={batch_size}"
            )
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
        max_physical_batch_size=max_physical_batch_size,
    )
