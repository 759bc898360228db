"""`TensorBoard`: the scalars of Keras's callback, without TensorFlow.

Keras's `keras.callbacks.TensorBoard` writes with `tf.summary`; this
callback writes the same records through the `tensorboard` package's event
writer (`event_writer.EventWriter`), on every backend.

Example:

```python
model.fit(x, y, epochs=3, callbacks=[TensorBoard("logs")])
```
"""

import numbers
import os
import time
import warnings

import keras
import numpy as np

from keras_batchtune.backend.common.event_writer import EventWriter

GRAPH_PLUGIN_NAME = "graph_keras_model"
"""The plugin of the model's conceptual graph (as Keras writes it)."""

UPDATE_FREQ_VALUES = '"epoch", "batch" or an integer >= 1'


def _number(value):
    """`value` as a float, or None where it is not one real number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        array = np.asarray(keras.ops.convert_to_numpy(value))
    except Exception:
        return None
    if array.shape != () or array.dtype.kind not in "biuf":
        return None
    return float(array)


def _learning_rates(model):
    """The optimizer's learning rate(s), named as Keras's callback logs."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(optimizer, "optimizers"):
        return {
            f"learning_rate_{inner.name}": _number(inner.learning_rate)
            for inner in optimizer.optimizers
        }
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return {"learning_rate": _number(optimizer.learning_rate)}
    return {}


def _iterations(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "iterations"):
        return None
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


class TensorBoard(keras.callbacks.Callback):
    """The scalars of `keras.callbacks.TensorBoard`, on every backend.

    Writes what Keras's callback writes for scalars, with the `tensorboard`
    package's event writer instead of `tf.summary`, so it needs no
    TensorFlow: under `<log_dir>/train` and `<log_dir>/validation`, one
    `epoch_<name>` scalar per epoch-log entry (`val_` entries under
    `validation/`, without the prefix) plus `epoch_learning_rate` from the
    optimizer; `evaluation_<name>_vs_iterations` after each evaluation;
    with `update_freq`, `batch_<name>` every that many batches; with
    `write_steps_per_second`, the steps per second; with `histogram_freq`,
    weight histograms; with `write_graph`, the model's conceptual graph.
    Keras's images, embeddings and profiler are not written.

    `BatchTuner` puts one in place of a `keras.callbacks.TensorBoard` given
    to `search()` on the JAX and PyTorch backends (see `trial_callback`).
    The class keeps Keras's name, `TensorBoard`, by which KerasTuner and
    the trial's fit recognise a TensorBoard callback.

    Example:

    ```python
    model.fit(x, y, epochs=3, validation_data=(xv, yv),
              callbacks=[TensorBoard("logs")])
    # logs/train: epoch_loss, epoch_learning_rate, ...
    # logs/validation: epoch_loss, evaluation_loss_vs_iterations, ...
    ```

    Args:
        log_dir: The directory of the logs.
        histogram_freq: Every how many epochs to write weight histograms
            (0: never).
        write_graph: Whether to write the model's conceptual graph.
        write_steps_per_second: Whether to log the steps per second.
        update_freq: `"epoch"`, `"batch"` (every batch) or an integer N
            (every N batches): how often batch-level scalars are written.

    Raises:
        ValueError: For a negative `histogram_freq` or an `update_freq`
            other than those above.
    """

    def __init__(
        self,
        log_dir="logs",
        histogram_freq=0,
        write_graph=True,
        write_steps_per_second=False,
        update_freq="epoch",
    ):
        super().__init__()
        if (
            isinstance(histogram_freq, bool)
            or not isinstance(histogram_freq, numbers.Integral)
            or histogram_freq < 0
        ):
            raise ValueError(
                "`histogram_freq` must be an integer >= 0 (0: no "
                f"histograms). Received: histogram_freq={histogram_freq!r}"
            )
        if update_freq == "batch":
            update_freq = 1
        valid_int = (
            isinstance(update_freq, numbers.Integral)
            and not isinstance(update_freq, bool)
            and update_freq >= 1
        )
        if update_freq != "epoch" and not valid_int:
            raise ValueError(
                f"`update_freq` must be {UPDATE_FREQ_VALUES}. "
                f"Received: update_freq={update_freq!r}"
            )
        self.log_dir = str(log_dir)
        self.histogram_freq = int(histogram_freq)
        self.write_graph = bool(write_graph)
        self.write_steps_per_second = bool(write_steps_per_second)
        self.update_freq = update_freq
        self._writers = {}
        self._graph_pending = self.write_graph
        self._global_train_batch = 0
        self._batch_start_time = 0.0
        self._epoch_start = (0, 0.0)

    @classmethod
    def from_keras_callback(cls, callback):
        """The equivalent of a `keras.callbacks.TensorBoard` callback.

        Takes its `log_dir`, `histogram_freq`, `write_graph`,
        `write_steps_per_second` and `update_freq`; warns when it asks for
        images or embeddings, which this callback does not write.

        Args:
            callback: A `keras.callbacks.TensorBoard`.

        Returns:
            A `TensorBoard` of this module.
        """
        left_out = [
            name
            for name in ("write_images", "embeddings_freq")
            if getattr(callback, name, None)
        ]
        if left_out:
            warnings.warn(
                f"On the {keras.config.backend()} backend, TensorBoard logs "
                "are written through the tensorboard package's event "
                "writer (keras.callbacks.TensorBoard writes with "
                f"tf.summary): {', '.join(left_out)} not written.",
                stacklevel=2,
            )
        return cls(
            log_dir=callback.log_dir,
            histogram_freq=getattr(callback, "histogram_freq", 0) or 0,
            write_graph=getattr(callback, "write_graph", True),
            write_steps_per_second=getattr(
                callback, "write_steps_per_second", False
            ),
            update_freq=getattr(callback, "update_freq", "epoch"),
        )

    def _writer(self, run):
        if run not in self._writers:
            path = os.path.join(self.log_dir, run)
            self._writers[run] = EventWriter(path)
        return self._writers[run]

    def _close_writers(self):
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()

    def set_model(self, model):
        super().set_model(model)
        self._close_writers()
        self._graph_pending = self.write_graph

    def on_train_begin(self, logs=None):
        self._global_train_batch = 0

    def on_train_end(self, logs=None):
        self._close_writers()

    def _write_graph(self):
        """The model's JSON config, which the graph dashboard draws."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.util import tensor_util

        if type(self.model).__name__ not in ("Functional", "Sequential"):
            return
        try:
            config = self.model.to_json()
        except Exception as error:  # as Keras: a model that will not serialise
            warnings.warn(f"Model failed to serialize as JSON: {error}")
            return
        summary = summary_pb2.Summary()
        value = summary.value.add(
            tag="keras",
            tensor=tensor_util.make_tensor_proto(config.encode()),
        )
        value.metadata.plugin_data.plugin_name = GRAPH_PLUGIN_NAME
        value.metadata.plugin_data.content = b"1"
        self._writer("train").write(summary, step=0)

    def on_train_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1
        if self.write_steps_per_second:
            self._batch_start_time = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch":
            return
        step = self._global_train_batch
        if step % self.update_freq:
            return
        scalars = dict(logs) if isinstance(logs, dict) else {}
        if self.write_steps_per_second:
            elapsed = time.time() - self._batch_start_time
            scalars["steps_per_second"] = 1.0 / max(elapsed, 1e-9)
        self._write_scalars("train", "batch_", scalars, step)

    def on_test_end(self, logs=None):
        step = _iterations(self.model)
        if step is None or not logs:
            return
        writer = self._writer("validation")
        for name, value in logs.items():
            value = _number(value)
            if value is not None:
                writer.scalar(f"evaluation_{name}_vs_iterations", value, step)

    def on_epoch_begin(self, epoch, logs=None):
        if self.write_steps_per_second:
            self._epoch_start = (_iterations(self.model) or 0, time.time())

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        validation = {
            k[len("val_") :]: v for k, v in logs.items() if k.startswith("val_")
        }
        if train:
            train.update(_learning_rates(self.model))
            if self.write_steps_per_second:
                iterations, started = self._epoch_start
                steps = (_iterations(self.model) or 0) - iterations
                train["steps_per_second"] = steps / max(
                    time.time() - started, 1e-9
                )
        if self._graph_pending:
            # At step 0 as Keras, but only once an epoch has run: a fit
            # that fails in its first step (out of memory) opens no writer.
            self._graph_pending = False
            self._write_graph()
        self._write_scalars("train", "epoch_", train, epoch)
        self._write_scalars("validation", "epoch_", validation, epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._write_histograms(epoch)
        for writer in self._writers.values():
            writer.flush()

    def _write_scalars(self, run, prefix, scalars, step):
        if not scalars:
            return
        writer = self._writer(run)
        for name, value in scalars.items():
            value = _number(value)
            if value is not None:
                writer.scalar(f"{prefix}{name}", value, step)

    def _write_histograms(self, epoch):
        writer = self._writer("train")
        for layer in self.model.layers:
            for weight in layer.weights:
                name = weight.path.replace(":", "_")
                values = keras.ops.convert_to_numpy(weight)
                writer.histogram(f"{name}/histogram", values, epoch)
