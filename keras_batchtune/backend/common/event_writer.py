"""`EventWriter`: summaries into a run directory, without TensorFlow.

`tensorboard.summary.writer.event_file_writer.EventFileWriter` (what
PyTorch's `SummaryWriter` uses) writes `event_pb2.Event` protos; the
`tensorboard` package's plugins build the summary protos with numpy.

Example:

```python
writer = EventWriter("logs/train")
writer.scalar("epoch_loss", 0.3, step=0)
writer.close()
```
"""

import time


class EventWriter:
    """Writes summaries into one run directory, as `Event` protos.

    Example:

    ```python
    writer = EventWriter("logs/train")
    writer.scalar("epoch_loss", 0.3, step=0)
    writer.close()
    ```

    Args:
        logdir: The run directory (created if missing).
    """

    def __init__(self, logdir):
        from tensorboard.summary.writer import event_file_writer

        self.logdir = str(logdir)
        self._writer = event_file_writer.EventFileWriter(self.logdir)

    def write(self, summary, step=0):
        """Writes a `summary_pb2.Summary` at `step`, stamped now."""
        from tensorboard.compat.proto import event_pb2

        event = event_pb2.Event(
            wall_time=time.time(), step=int(step), summary=summary
        )
        self._writer.add_event(event)

    def scalar(self, tag, value, step):
        """Writes a float32 scalar, as `tf.summary.scalar` does."""
        from tensorboard.plugins.scalar import summary_v2

        self.write(summary_v2.scalar_pb(tag, value), step)

    def histogram(self, tag, values, step):
        """Writes a histogram of `values`, as `tf.summary.histogram` does."""
        from tensorboard.plugins.histogram import summary_v2

        self.write(summary_v2.histogram_pb(tag, values), step)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()
