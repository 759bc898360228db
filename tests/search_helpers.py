"""Shared pieces of the `BatchTuner` tests (`tests/test_tuner*.py`)."""

from conftest import make_mlp


def build_mlp(hp):
    """A digits MLP whose SGD learning rate is searched in [0.01, 0.1]."""
    return make_mlp(hp.Float("learning_rate", 0.01, 0.1, sampling="log"))


def memory_limited(hp):
    """As `build_mlp`, but batches above 100 run out of memory for real
    (error injection: `conftest.MemoryLimit`)."""
    return make_mlp(
        hp.Float("learning_rate", 0.01, 0.1, sampling="log"),
        max_batch_size=100,
    )


def search(tuner, digits, **kwargs):
    """Runs `tuner.search` on digits; one quiet epoch unless told."""
    x, y, x_val, y_val = digits
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("verbose", 0)
    tuner.search(x, y, validation_data=(x_val, y_val), **kwargs)


def trials(tuner):
    """The trials in the order they started (ids are not zero-padded alike)."""
    return [tuner.oracle.trials[i] for i in tuner.oracle.start_order]
