"""What the tuner can batch itself, and how many examples it holds.

Arrays and tensors of any backend, and a `tf.data.Dataset` where TensorFlow
is installed (`backend/tf_data.py` does the `tf.data` part).
"""

import math

import keras

DATA_TYPES_HELP = (
    "numpy arrays, tensors of the backend (or nested dicts/lists of them), "
    "or an unbatched `tf.data.Dataset`"
)


def is_tf_dataset(x):
    """Tells whether `x` is a `tf.data.Dataset`, without importing TensorFlow.

    Only a program that imported TensorFlow can hold a dataset, so its
    class is recognised by its module and the import is left to the
    `tf.data` helpers.

    Example:

    ```python
    is_tf_dataset(np.zeros(3))  # False
    ```

    Args:
        x: Anything.

    Returns:
        True for a `tf.data.Dataset` (of any kind: batched, mapped, ...).
    """
    return any(
        cls.__module__.startswith("tensorflow")
        and cls.__name__ in ("DatasetV2", "DatasetV1")
        for cls in type(x).__mro__
    )


def _is_torch_data_loader(x):
    return any(
        cls.__module__.startswith("torch.utils.data")
        and cls.__name__ == "DataLoader"
        for cls in type(x).__mro__
    )


def describe_batching(dataset):
    """Tells whether a `tf.data.Dataset` is batched, and by how much.

    See `keras_batchtune.backend.tf_data.describe_batching`.

    Args:
        dataset: A `tf.data.Dataset`.

    Returns:
        A tuple `(is_batched, batch_size)`; `batch_size` is None when unknown.
    """
    from keras_batchtune.backend import tf_data

    return tf_data.describe_batching(dataset)


def check_batchable(x):
    """Checks that the tuner can batch `x` itself.

    A `keras.utils.PyDataset`, a `torch.utils.data.DataLoader`, a generator
    or another iterator hands `fit` batches whose size it chose itself: the
    tuner cannot set a trial's batch size through them, so they are refused
    rather than trained at a batch size other than the one recorded.

    Example:

    ```python
    check_batchable(np.zeros((10, 4)))  # passes
    ```

    Args:
        x: The training input given to `fit`.

    Raises:
        ValueError: if `x` is a `keras.utils.PyDataset`, a
            `torch.utils.data.DataLoader`, a generator or another iterator.
    """
    fixed = (
        isinstance(x, keras.utils.PyDataset)
        or _is_torch_data_loader(x)
        or (hasattr(x, "__next__") and not is_tf_dataset(x))
    )
    if fixed:
        raise ValueError(
            "`x`: BatchTuner sets the batch size of each trial, so it needs "
            f"{DATA_TYPES_HELP}. Received: x of type {type(x).__name__}, "
            "whose batches are fixed. Pass the unbatched data instead (for a "
            "`torch.utils.data.DataLoader`, the arrays or tensors of its "
            "dataset), or set `batch_size` yourself in `HyperModel.fit`."
        )


def count_examples(x, validation_split=0.0):
    """Counts the training examples in one pass over `x`.

    Example:

    ```python
    count_examples(np.zeros((100, 4)), validation_split=0.2)  # 80
    ```

    Args:
        x: Arrays or tensors (possibly nested), or a `tf.data.Dataset`; the
            examples of a batched dataset are counted by reading it once.
        validation_split: The `fit` argument of that name, for arrays.

    Returns:
        The number of examples, or None when it cannot be known (an infinite
        dataset, or an unbatched one of unknown size).
    """
    if x is None:
        return None
    if is_tf_dataset(x):
        from keras_batchtune.backend import tf_data

        return tf_data.count_examples(x)
    leaves = keras.tree.flatten(x)
    if not leaves or not hasattr(leaves[0], "shape"):
        return None
    num_examples = int(leaves[0].shape[0])
    if validation_split:
        num_examples = int(math.floor(num_examples * (1.0 - validation_split)))
    return num_examples
