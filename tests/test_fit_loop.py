"""Tests of `fit_loop`: finding a running `fit`'s epoch iterator and bar.

Run on every backend: each one's `fit` runs on Keras's `EpochIterator`.
"""

import keras
import numpy as np

from keras_batchtune import fit_loop
from tests.conftest import make_mlp


class _Finder(keras.callbacks.Callback):
    """Looks for the `fit` loop's objects from inside its callbacks."""

    def on_train_begin(self, logs=None):
        self.callback_list = fit_loop.find_caller(keras.callbacks.CallbackList)
        self.progress_bar = fit_loop.progress_bar_of(self.callback_list)
        self.not_there = fit_loop.find_caller(np.ndarray)


def test_finds_the_callback_list_and_progress_bar_of_a_fit(digits):
    finder = _Finder()
    make_mlp().fit(
        digits[0], digits[1], epochs=1, verbose=1, callbacks=[finder]
    )
    assert isinstance(finder.callback_list, keras.callbacks.CallbackList)
    assert finder in finder.callback_list.callbacks
    assert isinstance(finder.progress_bar, keras.callbacks.ProgbarLogger)
    assert finder.not_there is None
    assert fit_loop.progress_bar_of(None) is None


def test_set_steps_per_epoch_only_without_a_fixed_count():
    iterator_class = fit_loop.epoch_iterator_class()
    x = np.zeros((10, 2))
    free = iterator_class(x, batch_size=2)
    assert fit_loop.set_steps_per_epoch(free, 3)
    assert free.num_batches == 3
    fixed = iterator_class(x, batch_size=2, steps_per_epoch=4)
    assert not fit_loop.set_steps_per_epoch(fixed, 3)
    assert fixed.num_batches == 4
    assert not fit_loop.set_steps_per_epoch(object(), 3)
    # The base iterator, as JAX's and PyTorch's, feeds no `tf.distribute`.
    assert fit_loop.distribute_strategy_of(free) is None


def test_find_epoch_iterator_from_the_data_adapter_it_calls():
    iterator = fit_loop.epoch_iterator_class()(np.zeros((10, 2)), batch_size=4)
    adapter = iterator.data_adapter
    found = []
    on_epoch_begin = adapter.on_epoch_begin

    def recording_on_epoch_begin():
        found.append(fit_loop.find_epoch_iterator())
        on_epoch_begin()

    adapter.on_epoch_begin = recording_on_epoch_begin
    batches = list(iterator.enumerate_epoch())
    assert len(batches) == 3
    assert found == [iterator]
    assert fit_loop.find_epoch_iterator() is None
