"""Each epoch's batches of in-memory arrays, in numpy, on every backend.

`keras_batchtune.resizable` keeps array data (numpy arrays, or tensors of
any backend, copied to numpy once) here: every epoch draws a new order from
a seeded numpy `Generator` and cuts it into batches of the size the epoch
starts with, so each example is used once per epoch whatever the batch. The
JAX and PyTorch `fit` loops read these batches; TensorFlow's reads a
`tf.data` pipeline (`backend/resizable_tf_data.py`) made from the same
arrays. Needs no TensorFlow.
"""

import keras
import numpy as np

_SEED_RANGE = 2**31 - 1


def _to_numpy(leaf):
    if isinstance(leaf, np.ndarray):
        return leaf
    try:
        # Tensors of the configured backend (on any device).
        return keras.ops.convert_to_numpy(leaf)
    except (TypeError, ValueError, AttributeError, RuntimeError):
        # Another framework's CPU tensors, lists of numbers, ...
        return np.asarray(leaf)


def as_numpy_arrays(x, y=None):
    """Checks arrays `x`, `y` and returns them as one numpy structure.

    Example:

    ```python
    arrays, num_examples = as_numpy_arrays(np.zeros((10, 4)), np.zeros(10))
    num_examples  # 10
    ```

    Args:
        x: Numpy arrays or tensors of the backend (or nested dicts, lists or
            tuples of them), one example per row.
        y: Targets, the same kind of structure, or None.

    Returns:
        A tuple `(arrays, num_examples)`: `arrays` is `(x,)` or `(x, y)` with
        every leaf a numpy array.

    Raises:
        ValueError: naming `x`, if a leaf is not an array with a leading
            (examples) dimension, or if the leaves hold different numbers of
            examples.
    """
    structure = (x,) if y is None else (x, y)
    leaves = keras.tree.flatten(structure)
    if not leaves or not all(
        len(getattr(leaf, "shape", ())) >= 1 for leaf in leaves
    ):
        raise ValueError(
            "`x`: `resizable` takes numpy arrays, tensors (or nested "
            "dicts/lists of them) or an unbatched `tf.data.Dataset`. "
            f"Received: x of type {type(x).__name__}"
        )
    arrays = keras.tree.map_structure(_to_numpy, structure)
    sizes = {int(leaf.shape[0]) for leaf in keras.tree.flatten(arrays)}
    if len(sizes) != 1:
        raise ValueError(
            "`x` and `y` must hold the same number of examples. Received "
            f"leading dimensions {sorted(sizes)}"
        )
    return arrays, sizes.pop()


class ArrayEpochBatches:
    """The batches of each epoch over numpy arrays, reshuffled per epoch.

    Example:

    ```python
    arrays, n = as_numpy_arrays(x, y)
    batches = ArrayEpochBatches(arrays, n, shuffle=True, seed=0)
    for x_batch, y_batch in batches.epoch(32):
        ...
    ```

    Args:
        arrays: A structure of numpy arrays with `num_examples` rows each,
            as `as_numpy_arrays` returns it.
        num_examples: Positive integer.
        shuffle: Whether each epoch draws a new order.
        seed: Optional integer; None draws one from numpy's global random
            state (which `keras.utils.set_random_seed` seeds).
    """

    def __init__(self, arrays, num_examples, *, shuffle, seed):
        self.arrays = arrays
        self.num_examples = int(num_examples)
        self.shuffle = bool(shuffle)
        if seed is None:
            seed = int(np.random.randint(_SEED_RANGE))
        self._rng = np.random.default_rng(seed)

    def _take(self, index):
        return keras.tree.map_structure(lambda array: array[index], self.arrays)

    def epoch(self, batch_size, drop_remainder=False):
        """One epoch of batches; the order is drawn at the first batch.

        Nothing is drawn or sliced until the first batch is asked for, so
        an iterator made and dropped (as Keras's epoch iterator does at each
        epoch end) costs nothing and leaves the order of the next epoch.

        Args:
            batch_size: Positive integer.
            drop_remainder: Whether to leave out the last, smaller batch.

        Yields:
            Batches: the structure of `arrays`, `batch_size` rows each (the
            last one fewer unless `drop_remainder`).
        """
        size = self.num_examples
        if self.shuffle:
            order = self._rng.permutation(size)
        stop = size - size % batch_size if drop_remainder else size
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, size)
            if self.shuffle:
                yield self._take(order[start:end])
            else:
                yield self._take(slice(start, end))

    def samples(self, batch_size, seed=None):
        """Endless shuffled batches of exactly `batch_size` rows.

        For measurements beside training; they draw from their own random
        state, so they do not change the epochs' order.

        Args:
            batch_size: Positive integer, at most `num_examples`.
            seed: Optional integer.

        Yields:
            Batches: the structure of `arrays`.
        """
        rng = np.random.default_rng(seed)
        size = self.num_examples
        while True:
            order = rng.permutation(size)
            for start in range(0, size - batch_size + 1, batch_size):
                yield self._take(order[start : start + batch_size])
