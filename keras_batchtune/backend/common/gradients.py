"""What every backend's gradient-noise probe shares, in Keras terms only.

The argument checks, the size check of a measured batch, the one-off build
of an unbuilt model or compiled loss, and the copy of the non-trainable and
metric variables that a probe puts back after each call. The backend
modules (`backend/<backend>/gradients.py`) add the gradients themselves.

Example:

```python
from keras_batchtune.backend.common import gradients as common

small, large = common.check_probe_arguments(model, 16, 256)
```
"""

import keras
import numpy as np

from keras_batchtune import noise


def check_probe_arguments(
    model, small_batch_size, large_batch_size, num_replicas=1
):
    """Validates a probe's model and batch sizes.

    Example:

    ```python
    check_probe_arguments(model, 16, 256)  # (16, 256)
    ```

    Args:
        model: The model to measure.
        small_batch_size: Positive integer, `B_small`.
        large_batch_size: Positive integer, a multiple of
            `small_batch_size * num_replicas` greater than `B_small`.
        num_replicas: Positive integer, the replicas of the model's
            strategy (1 without one).

    Returns:
        The pair `(small_batch_size, large_batch_size)` as ints.

    Raises:
        ValueError: naming the argument, if a batch size is not a positive
            integer, `small_batch_size >= large_batch_size`, or
            `large_batch_size` is not a multiple of `small_batch_size`
            (times the number of replicas); if the model is not compiled or
            (once built) has no trainable weights.
    """
    small, large = noise.check_batch_sizes(small_batch_size, large_batch_size)
    if large % (small * num_replicas):
        where = (
            f" times the {num_replicas} replicas of the model's strategy"
            if num_replicas > 1
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
    if model.built:
        check_trainable_weights(model)
    return small, large


def check_trainable_weights(model):
    """Refuses a built model without trainable weights.

    Args:
        model: A built Keras model.

    Raises:
        ValueError: if the model has no trainable weights.
    """
    if not model.trainable_weights:
        raise ValueError(
            "`model` has no trainable weights: there is no gradient whose "
            "noise scale could be measured."
        )


def check_batch_size(x, large_batch_size):
    """Checks that a batch holds exactly `large_batch_size` examples.

    Args:
        x: The batch's inputs (a tensor, or a nest of them).
        large_batch_size: The probe's large batch size.

    Raises:
        ValueError: if it holds another number of examples.
    """
    leaves = [leaf for leaf in keras.tree.flatten(x) if leaf is not None]
    size = int(leaves[0].shape[0]) if leaves else 0
    if size != large_batch_size:
        raise ValueError(
            f"The batch must hold `large_batch_size`={large_batch_size} "
            f"examples. Received: {size}"
        )


def to_backend_tensors(batch, is_native):
    """Converts a nest of arrays or tensors to tensors of the backend.

    Floating-point values of another precision become `floatx` tensors, as
    Keras's own data adapters make them; tensors of the backend
    (`is_native(t)`) go to its device as they are; others (numpy arrays,
    TensorFlow or PyTorch tensors on the CPU) go through numpy.

    Args:
        batch: A nest of arrays, tensors or None.
        is_native: A function telling a tensor of the backend.

    Returns:
        The same nest with backend tensors (None kept).
    """

    def convert(value):
        if value is None:
            return None
        if not is_native(value):
            value = np.asarray(value)
        dtype = keras.backend.standardize_dtype(value.dtype)
        if keras.backend.is_float_dtype(dtype):
            dtype = keras.config.floatx()
        return keras.ops.convert_to_tensor(value, dtype=dtype)

    return keras.tree.map_structure(convert, batch)


def take_examples(batch, start, stop):
    """The examples `start:stop` of each tensor of a nest (None kept)."""
    return keras.tree.map_structure(
        lambda t: None if t is None else t[start:stop], batch
    )


class VariableSnapshot:
    """The values of a model's non-trainable and metric variables.

    Taken before a measurement and put back after it, so that batch-norm
    moving statistics, seed-generator states and metrics look untouched.

    Example:

    ```python
    snapshot = VariableSnapshot(model)
    try:
        ...  # forward passes in training mode
    finally:
        snapshot.restore()
    ```

    Args:
        model: A built Keras model.
    """

    def __init__(self, model):
        variables = list(model.non_trainable_variables) + list(
            model.metrics_variables
        )
        unique = {id(variable): variable for variable in variables}
        self._saved = [
            (variable, keras.ops.convert_to_numpy(variable))
            for variable in unique.values()
        ]

    def restore(self):
        """Assigns every saved value back to its variable."""
        for variable, value in self._saved:
            variable.assign(value)


def build_for_probe(model, x, y, sample_weight):
    """Builds the model and its compiled loss eagerly, on a few examples.

    Runs one forward pass in inference mode and the compiled loss, so that
    every variable (the model's, the per-output loss trackers') exists
    before a probe copies them or traces its gradients. The metrics that
    existed before get their values back; those the build created are left
    reset.

    Args:
        model: A compiled Keras model.
        x: Inputs of a few examples.
        y: Targets, or None.
        sample_weight: Sample weights, or None.

    Raises:
        ValueError: if the built model has no trainable weights.
    """
    before = VariableSnapshot(model)
    y_pred = model(x, training=False)
    model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
    model.reset_metrics()
    before.restore()
    check_trainable_weights(model)
