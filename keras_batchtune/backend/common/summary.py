"""TensorBoard logs through the `tensorboard` package's own event writer.

Keras's `keras.callbacks.TensorBoard` and TensorBoard's hparams API write
with `tf.summary`: on JAX and PyTorch without TensorFlow, the callback's
first write fails (`ModuleNotFoundError: No module named 'tensorflow'`, at
`set_model` or at the first epoch end in Keras 3.15). The `tensorboard`
package writes event files without TensorFlow:
`tensorboard.summary.writer.event_file_writer.EventFileWriter` (what
PyTorch's `SummaryWriter` uses) takes `event_pb2.Event` protos, and its
plugins build the summary protos (scalars, histograms, hparams sessions)
with numpy. This module writes the same records as `tf.summary` would, so
that TensorBoard shows the same dashboards on every backend:

- `write_session`: one HParams session (hparams, metrics, status);
- `TensorBoard`: a Keras callback writing the scalars of Keras's
  `TensorBoard` callback (`epoch_<name>` under `train/` and `validation/`,
  the learning rate, `evaluation_<name>_vs_iterations`, batch-level
  scalars, weight histograms, the model's conceptual graph);
- `trial_callback`: the callback a trial uses in place of the user's.

Where TensorFlow is installed the `tensorboard` package does its file IO
through `tf.io.gfile` (and so imports TensorFlow); elsewhere through its
own stub, which handles local paths (and `s3://` with boto3).

Example:

```python
from keras_batchtune.backend.common import summary

model.fit(x, y, epochs=3, callbacks=[summary.TensorBoard("logs")])
```
"""

import shutil
import time

from keras_batchtune.backend.common.event_writer import EventWriter
from keras_batchtune.backend.common.tensorboard_callback import (
    GRAPH_PLUGIN_NAME,
)
from keras_batchtune.backend.common.tensorboard_callback import TensorBoard

__all__ = [
    "GRAPH_PLUGIN_NAME",
    "EventWriter",
    "TensorBoard",
    "remove_run",
    "trial_callback",
    "write_session",
]


def remove_run(logdir):
    """Removes a run directory and everything under it, if it exists.

    Args:
        logdir: A local path, or a URL the `tensorboard` package's file
            system knows (`tf.io.gfile` where TensorFlow is installed).
    """
    logdir = str(logdir)
    if "://" not in logdir:
        shutil.rmtree(logdir, ignore_errors=True)
        return
    from tensorboard.compat import tf

    if tf.io.gfile.isdir(logdir):
        tf.io.gfile.rmtree(logdir)


def _session_end_pb(status):
    """The session-end summary (`hparams.summary.session_end_pb` imports
    TensorFlow; the same proto, built from the plugin's own messages)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(
            status=status, end_time_secs=time.time()
        )
    )
    summary = summary_pb2.Summary()
    summary.value.add(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(data),
        tensor=metadata.NULL_TENSOR,
    )
    return summary


def write_session(
    logdir,
    hparams,
    metrics,
    group_name=None,
    start_time_secs=None,
    failed=False,
):
    """Writes one HParams session into a run directory, without TensorFlow.

    The records of `hparams_api.hparams`, `tf.summary.scalar` at step 0 and
    the session end, built with `tensorboard.plugins.hparams.summary_v2`
    and written by `EventWriter`.

    Example:

    ```python
    write_session("logs/0/execution0", {"batch_size": 64},
                  {"val_accuracy": 0.95}, group_name="0")
    ```

    Args:
        logdir: The session's run directory.
        hparams: Dict from names to bool, int, float or str values.
        metrics: Dict from metric names to numbers.
        group_name: The session group, or None for one derived from the
            hparams.
        start_time_secs: When the session started (seconds since the
            epoch); None for now.
        failed: Whether the session ended in failure.
    """
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import summary_v2

    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    writer = EventWriter(logdir)
    try:
        writer.write(
            summary_v2.hparams_pb(
                hparams, trial_id=group_name, start_time_secs=start_time_secs
            )
        )
        for name, value in metrics.items():
            writer.scalar(name, value, step=0)
        writer.write(_session_end_pb(status))
    finally:
        writer.close()


def trial_callback(callback):
    """The callback a trial uses for a user's `TensorBoard` callback.

    On this backend `keras.callbacks.TensorBoard` needs TensorFlow's
    summary API; it is replaced by this module's `TensorBoard`, which
    writes the same scalars through the `tensorboard` package. One of ours
    is kept as it is.

    Args:
        callback: A callback whose class is named `TensorBoard`.

    Returns:
        A `TensorBoard` of this module.
    """
    if isinstance(callback, TensorBoard):
        return callback
    return TensorBoard.from_keras_callback(callback)
