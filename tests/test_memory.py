import tensorflow as tf

from keras_batchtune import memory


def test_allocator_out_of_memory_is_recognised():
    # A real failure of TensorFlow's CPU allocator: 2**60 bytes.
    try:
        tf.zeros([1 << 20, 1 << 38])
    except Exception as error:  # noqa: BLE001 - the error is the subject
        assert isinstance(error, tf.errors.ResourceExhaustedError)
        assert memory.is_out_of_memory_error(error)
    else:
        raise AssertionError("the allocator accepted a 4 EiB tensor")


def test_other_errors_are_not_out_of_memory():
    assert not memory.is_out_of_memory_error(ValueError("shapes"))
    assert not memory.is_out_of_memory_error(
        tf.errors.InvalidArgumentError(None, None, "bad")
    )
