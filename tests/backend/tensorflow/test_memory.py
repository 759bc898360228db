"""TensorFlow's out-of-memory error, raised for real on the CPU."""

import gc
import weakref

import keras
import pytest

tf = pytest.importorskip("tensorflow")

from keras_batchtune import memory  # noqa: E402
from keras_batchtune.backend.tensorflow import memory as tf_memory  # noqa: E402

# The conftest beside this file leaves it out on other backends; named on
# the command line, it is skipped there.
pytestmark = pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="tests of the TensorFlow backend",
)


def test_allocator_out_of_memory_is_recognised():
    # A real failure of TensorFlow's CPU allocator: 2**60 bytes.
    try:
        tf.zeros([1 << 20, 1 << 38])
    except Exception as error:  # noqa: BLE001 - the error is the subject
        assert isinstance(error, tf.errors.ResourceExhaustedError)
        assert tf_memory.is_out_of_memory_error(error)
        assert memory.is_out_of_memory_error(error)
    else:
        raise AssertionError("the allocator accepted a 4 EiB tensor")


def test_other_errors_are_not_out_of_memory():
    try:
        tf.reshape(tf.zeros([6]), [4])
    except Exception as error:  # noqa: BLE001 - the error is the subject
        assert isinstance(error, tf.errors.InvalidArgumentError)
        assert not tf_memory.is_out_of_memory_error(error)
        assert not memory.is_out_of_memory_error(error)
    else:
        raise AssertionError("a 6-element tensor was reshaped to 4")
    assert not tf_memory.is_out_of_memory_error(ValueError("shapes"))


def test_release_memory_frees_tensors_held_in_cycles():
    tensor = tf.ones([1024])
    cycle = [tensor]
    cycle.append(cycle)  # as a failed step's traceback holds its frames
    reference = weakref.ref(tensor)
    del tensor, cycle
    gc.disable()
    try:
        assert reference() is not None
        tf_memory.release_memory()
        assert reference() is None
    finally:
        gc.enable()
