"""TensorBoard logs on TensorFlow: `tf.summary`, as Keras and KerasTuner.

On this backend `keras.callbacks.TensorBoard` writes its scalars itself, so
a trial keeps the user's callback (`trial_callback`), and HParams sessions
are written with TensorBoard's hparams API over a `tf.summary` writer.
`TensorBoard`, the callback that writes through the `tensorboard` package
(`backend/common/summary.py`), works here too.

Example:

```python
from keras_batchtune.backend.tensorflow import summary

summary.write_session("logs/0/execution0", {"batch_size": 64},
                      {"val_accuracy": 0.95}, group_name="0")
```
"""

import tensorflow as tf

from keras_batchtune.backend.common.summary import TensorBoard  # noqa: F401


def remove_run(logdir):
    """Removes a run directory and everything under it, if it exists.

    Args:
        logdir: A path or URL `tf.io.gfile` knows.
    """
    if tf.io.gfile.isdir(logdir):
        tf.io.gfile.rmtree(logdir)


def write_session(
    logdir,
    hparams,
    metrics,
    group_name=None,
    start_time_secs=None,
    failed=False,
):
    """Writes one HParams session into a run directory, with `tf.summary`.

    `hparams_api.hparams` for the session start (hyperparameter values),
    one `tf.summary.scalar` at step 0 per metric, and the session end with
    its status.

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
    from tensorboard.plugins.hparams import api as hparams_api
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import summary as hparams_summary

    status = api_pb2.STATUS_FAILURE if failed else api_pb2.STATUS_SUCCESS
    writer = tf.summary.create_file_writer(str(logdir))
    try:
        with writer.as_default():
            hparams_api.hparams(
                hparams, trial_id=group_name, start_time_secs=start_time_secs
            )
            for name, value in metrics.items():
                tf.summary.scalar(name, value, step=0)
            end = hparams_summary.session_end_pb(status)
            tf.summary.experimental.write_raw_pb(
                end.SerializeToString(), step=0
            )
    finally:
        writer.close()


def trial_callback(callback):
    """The callback a trial uses for a user's `TensorBoard` callback.

    On TensorFlow, the callback itself: `keras.callbacks.TensorBoard`
    writes with `tf.summary` here.

    Args:
        callback: A callback whose class is named `TensorBoard`.

    Returns:
        `callback`.
    """
    return callback
