"""Training input whose batch per optimizer update can change during `fit`.

Two mechanisms change the batch per update, and `DynamicBatchSize` picks:

- **Physical**: the input makes bigger batches from the next epoch on.
  Keras 3 reads the steps per epoch once, when `fit` starts, so the input
  tells the running `fit` loop's epoch iterator the new count at each epoch
  begin (`fit_loop`); without that the epoch would end early ("Your input
  ran out of data") or be cut. Every backend's `fit` runs on Keras's
  `EpochIterator`, which asks the input for a new iterator each epoch:
  TensorFlow's reads a `tf.data` pipeline whose batch size is a variable
  read when the epoch's iterator is made (the train step, traced with an
  unknown batch dimension, is not retraced); JAX's and PyTorch's read numpy
  batches cut at the epoch's size (on JAX each new batch shape is compiled
  once). Used on one replica or under a `keras.distribution.DataParallel`
  (JAX: Keras splits each batch evenly over the devices; over several
  hosts each reads its share of every batch from its own examples, and
  every host must hold as many examples as the others), without
  `drop_remainder` or `steps_per_epoch`, up to `max_physical_batch_size`.
- **Accumulation**: a fixed physical micro-batch for the whole `fit` and a
  fixed number of steps per epoch; a larger batch accumulates more
  micro-batches per update. Used beyond `max_physical_batch_size`, under
  `tf.distribute` strategies with several replicas, with
  `drop_remainder=True` (TPUs want static shapes), with `steps_per_epoch`
  and where the `fit` loop cannot be found.

Either way every example is used once per epoch.

The object is a Keras data adapter, which `model.fit` takes as its `x`
directly on every backend; it also tells the callback that it is being
trained on. Arrays are kept in numpy (`epoch_batches.py`) and need no
TensorFlow; a `tf.data.Dataset` and TensorFlow's own `fit` use the
`tf.data` pipelines of `backend/resizable_tf_data.py`.
"""

import math
import warnings
import weakref

import keras

from keras_batchtune import data as data_module
from keras_batchtune import distribute
from keras_batchtune import epoch_batches
from keras_batchtune import fit_loop
from keras_batchtune import gradients
from keras_batchtune import scaling
from keras_batchtune import space
from keras_batchtune.backend import keras_internals

SHUFFLE_BUFFER_SIZE = 10_000
"""The most examples of a `tf.data.Dataset` held in its shuffle buffer."""

# The input `fit` most recently started to use (see `last_used`).
_LAST_USED = None


def last_used():
    """Returns the `ResizableData` a `fit` most recently started to use.

    Every backend's `fit` resets its input (or, on TensorFlow, asks it for
    its dataset) before it calls any callback, so a callback's
    `on_train_begin` finds the input of its own `fit` here.

    Example:

    ```python
    # In a callback's `on_train_begin`:
    data = last_used()
    ```

    Returns:
        A `ResizableData`, or None.
    """
    return _LAST_USED() if _LAST_USED is not None else None


def _mark_used(resizable_data):
    global _LAST_USED
    _LAST_USED = weakref.ref(resizable_data)


def _tf_data():
    from keras_batchtune.backend import resizable_tf_data

    return resizable_tf_data


class ResizableData(keras_internals.data_adapter_class()):
    """Training data whose batch `DynamicBatchSize` can resize between epochs.

    Made by `keras_batchtune.resizable`; pass it to `model.fit` as `x`.

    Example:

    ```python
    train = keras_batchtune.resizable(x, y, batch_size=32, seed=0)
    model.fit(train, epochs=10, callbacks=[...])
    ```

    Args:
        batches: An `epoch_batches.ArrayEpochBatches` or a
            `resizable_tf_data.DatasetEpochBatches`: each epoch's batches.
        num_examples: Positive integer.
        batch_size: Positive integer, the micro-batch.
        shuffle: Whether each epoch reshuffles.
        seed: Optional integer, the shuffle seed.
        drop_remainder: Whether to drop each epoch's last, smaller batch.
        max_physical_batch_size: Optional integer, the largest physical
            batch.

    Attributes:
        micro_batch_size: The batch size given to `resizable`: the smallest
            physical batch, and the unit of every batch size.
        max_physical_batch_size: The largest physical batch, or None.
        num_examples: The number of training examples.
        epochs_begun: How many epochs `fit` has started on this input.
        physical: Whether the running `fit` can take bigger physical batches
            (decided when a `fit` starts on this input).
        devices: The devices each batch is split over: those of a
            `keras.distribution.DataParallel` on JAX, else 1 (found when a
            `fit` starts on this input).
    """

    def __init__(
        self,
        batches,
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
        self.devices = 1
        self.processes = 1
        self._physical_batch_size = batch_size
        self._batches = batches
        self._tf_batches = None
        self._epoch_iterator = None

    # The DataAdapter interface.

    def get_tf_dataset(self):
        """The `tf.data.Dataset` TensorFlow's `fit` reads (every epoch)."""
        self._attach()
        tf_batches = self._tf_epoch_batches()
        if not self.physical:
            return tf_batches.fixed()
        return tf_batches.resizable(self._physical_batch_size)

    def get_numpy_iterator(self):
        """One epoch of numpy batches, at the current physical batch."""
        self._attach()
        return self._epoch()

    def get_jax_iterator(self):
        """One epoch of batches for JAX's `fit` (numpy, as Keras's own)."""
        self._attach()
        return self._epoch()

    def get_torch_dataloader(self):
        """One epoch of batches of backend tensors, for PyTorch's `fit`."""
        self._attach()
        return self._epoch(keras.ops.convert_to_tensor)

    @property
    def num_batches(self):
        batch_size = self._rows_per_step
        if self.drop_remainder:
            return self.num_examples // batch_size
        return math.ceil(self._usable_examples / batch_size)

    @property
    def batch_size(self):
        return self._rows_per_step

    @property
    def has_partial_batch(self):
        return (
            not self.drop_remainder
            and self._usable_examples % self._rows_per_step != 0
        )

    @property
    def partial_batch_size(self):
        if not self.has_partial_batch:
            return None
        return self._usable_examples % self._rows_per_step

    def on_epoch_begin(self):
        self.epochs_begun += 1
        epoch_iterator = self._attach()
        if self.physical and epoch_iterator is not None:
            # Called by the epoch iterator before it reads its step count.
            fit_loop.set_steps_per_epoch(epoch_iterator, self.num_batches)

    def on_epoch_end(self):
        # `fit` resets its epoch iterator, which calls this, before it
        # calls any callback: a new `fit` is found here on every backend.
        self._attach()

    # For the callback.

    def plan(self, batch_size):
        """How a batch per update is made: physical batch, micro-steps.

        Example:

        ```python
        data = keras_batchtune.resizable(
            x, y, batch_size=16, max_physical_batch_size=64)
        data.plan(256)  # (16, 16) outside a fit; (64, 4) in one that grows
        ```

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

        Example:

        ```python
        # In a callback's `on_epoch_end`, during a fit that can grow:
        data.set_physical_batch_size(64)
        ```

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
        if self._tf_batches is not None:
            self._tf_batches.set_batch_size(batch_size)

    @property
    def examples_per_epoch(self):
        """Examples trained on per epoch (all, unless `drop_remainder`)."""
        if self.drop_remainder:
            return self.num_batches * self._rows_per_step
        return self._usable_examples

    def sample_batches(self, batch_size, seed=None):
        """Endless shuffled batches of exactly `batch_size` examples.

        For measurements beside training (the gradient noise scale); reading
        them does not disturb the epochs.

        Example:

        ```python
        x_batch, y_batch = next(data.sample_batches(64, seed=0))
        ```

        Args:
            batch_size: Positive integer, at most `num_examples`.
            seed: Optional integer, the shuffle seed.

        Returns:
            An iterator of numpy batches, each a tuple `(x, y)` or `(x,)`.
        """
        return self._batches.samples(batch_size, seed=seed)

    def __repr__(self):
        return (
            f"<ResizableData: {self.num_examples} examples in batches of "
            f"{self._physical_batch_size} (micro-batch "
            f"{self.micro_batch_size})>"
        )

    # The work.

    @property
    def _usable_examples(self):
        """The examples of each epoch: all, or a multiple of the devices."""
        return self.num_examples - self.num_examples % self._local_devices

    @property
    def _local_devices(self):
        """The devices this host's share of each batch is split over."""
        return max(1, self.devices // self.processes)

    @property
    def _rows_per_step(self):
        """This host's share of the physical batch (all of it on one host).

        Over several JAX hosts, Keras takes what each host's `fit` reads as
        its part of the global batch; batch sizes here stay global.
        """
        return self._physical_batch_size // self.processes

    def _attach(self):
        """Finds the `fit` calling; a new one starts at the micro-batch.

        Returns:
            The calling `fit`'s epoch iterator, or None outside a `fit`.
        """
        _mark_used(self)
        epoch_iterator = fit_loop.find_epoch_iterator()
        if epoch_iterator is None:
            return None
        current = self._epoch_iterator and self._epoch_iterator()
        if current is epoch_iterator:
            return epoch_iterator
        self._find_devices()
        self._epoch_iterator = weakref.ref(epoch_iterator)
        self._physical_batch_size = self.micro_batch_size
        self.physical = self._can_grow(epoch_iterator)
        if self._tf_batches is not None:
            self._tf_batches.set_batch_size(self.micro_batch_size)
        # It read the step count of a batch left by an earlier `fit`.
        fit_loop.set_steps_per_epoch(epoch_iterator, self.num_batches)
        return epoch_iterator

    def _can_grow(self, epoch_iterator):
        if self.drop_remainder:
            return False
        if getattr(epoch_iterator, "steps_per_epoch", None):
            return False
        cap = self.max_physical_batch_size
        if cap is not None and cap < 2 * self.micro_batch_size:
            return False
        strategy = fit_loop.distribute_strategy_of(epoch_iterator)
        return strategy is None or strategy.num_replicas_in_sync == 1

    def _find_devices(self):
        """Reads the devices each batch of this `fit` is split over."""
        self.devices = gradients.data_parallel_devices()
        self.processes = distribute.data_processes()
        if self.micro_batch_size % self.devices:
            raise ValueError(
                f"`batch_size`={self.micro_batch_size} (the micro-batch given "
                "to `resizable`) must be a multiple of the "
                f"{self.devices} devices of the `keras.distribution` each "
                "batch is split over, so that every batch splits evenly."
            )
        devices = self._local_devices
        left_out = self.num_examples % devices
        if left_out and not self.drop_remainder:
            warnings.warn(
                f"keras_batchtune: {self.num_examples} examples do not split "
                f"evenly over the {devices} devices of the "
                "`keras.distribution`: the last batch of each epoch is cut "
                f"to a multiple of {devices}, leaving out the last "
                f"{left_out} examples of the epoch's order (other ones each "
                "epoch when shuffled).",
                UserWarning,
                stacklevel=2,
            )

    def _epoch(self, convert=None):
        """One epoch's batches, cut at the physical batch of its start.

        Lazy: the batch size is read, and the order drawn, at the first
        batch (Keras's epoch iterator makes, and drops, one iterator more at
        each epoch end). Under a distribution over `devices`, the last
        batch is cut to a multiple of them.
        """
        remaining = self._usable_examples
        for batch in self._batches.epoch(
            self._rows_per_step, self.drop_remainder
        ):
            size = int(keras.tree.flatten(batch)[0].shape[0])
            if size > remaining and not self.drop_remainder:
                if remaining == 0:
                    return
                batch = keras.tree.map_structure(
                    lambda array, keep=remaining: array[:keep], batch
                )
                size = remaining
            remaining -= size
            if convert is not None:
                batch = keras.tree.map_structure(convert, batch)
            yield batch

    def _tf_epoch_batches(self):
        if self._tf_batches is None:
            tf_data = _tf_data()
            element_dataset = getattr(self._batches, "element_dataset", None)
            if element_dataset is None:
                element_dataset = tf_data.from_arrays(self._batches.arrays)
            self._tf_batches = tf_data.TFEpochBatches(
                element_dataset,
                self.num_examples,
                batch_size=self.micro_batch_size,
                shuffle=self.shuffle,
                seed=self.seed,
                drop_remainder=self.drop_remainder,
                shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
            )
        return self._tf_batches


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
    (the input makes bigger batches from the next epoch on) on every
    backend on one replica and under a `keras.distribution.DataParallel`
    on JAX, up to `max_physical_batch_size`; beyond that, under a
    `tf.distribute` strategy with several replicas, with
    `steps_per_epoch` or with `drop_remainder=True`, it accumulates
    physical batches into one update. Under a `DataParallel` over `n`
    devices, `batch_size` must be a multiple of `n` (so is every batch);
    when the number of examples is not, each epoch's last batch is cut to
    a multiple of `n` (its last `num_examples % n` examples left out, with
    a warning) instead of an uneven split, which JAX refuses.

    Example:

    ```python
    train = keras_batchtune.resizable(x, y, batch_size=32, seed=0)
    model.fit(train, epochs=20, validation_data=(x_val, y_val), callbacks=[
        keras_batchtune.DynamicBatchSize(
            "plateau", min_batch_size=32, max_batch_size=512)])
    ```

    Args:
        x: Numpy arrays or tensors of the backend (or nested
            dicts/lists/tuples of them), or, where TensorFlow is installed,
            an unbatched `tf.data.Dataset` yielding `(x, y)` (a batched one
            is unbatched with a warning).
        y: Targets for array `x`; None for a dataset.
        batch_size: Positive integer, the physical micro-batch size (global
            under a `tf.distribute` strategy or a `keras.distribution`, and
            then a multiple of its replicas or devices).
        shuffle: Boolean, whether to reshuffle the examples every epoch. A
            dataset is shuffled in a buffer of up to `SHUFFLE_BUFFER_SIZE`
            examples.
        seed: Optional integer, the shuffle seed (None: drawn from numpy's
            global random state, which `keras.utils.set_random_seed` sets).
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
            not a positive integer >= `batch_size`; when a `fit` starts,
            if `batch_size` is not a multiple of the devices of a
            `keras.distribution.DataParallel`.
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
    if data_module.is_tf_dataset(x):
        tf_data = _tf_data()
        dataset, num_examples = tf_data.from_dataset(x, y)
        batches = tf_data.DatasetEpochBatches(
            dataset,
            num_examples,
            shuffle=shuffle,
            seed=seed,
            shuffle_buffer_size=SHUFFLE_BUFFER_SIZE,
        )
    else:
        arrays, num_examples = epoch_batches.as_numpy_arrays(x, y)
        batches = epoch_batches.ArrayEpochBatches(
            arrays, num_examples, shuffle=shuffle, seed=seed
        )
    if num_examples < 1 or (drop_remainder and num_examples < batch_size):
        raise ValueError(
            f"`batch_size`={batch_size} leaves no batch: the data holds "
            f"{num_examples} examples (drop_remainder={drop_remainder})."
        )
    return ResizableData(
        batches,
        num_examples,
        batch_size=batch_size,
        shuffle=bool(shuffle),
        seed=seed,
        drop_remainder=bool(drop_remainder),
        max_physical_batch_size=max_physical_batch_size,
    )
