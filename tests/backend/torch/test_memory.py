"""PyTorch's out-of-memory errors are recognised: CPU allocator and CUDA."""

import gc
import weakref

import keras
import pytest
import torch

from keras_batchtune import memory
from keras_batchtune.backend.torch import memory as torch_memory

# The conftest beside this file leaves it out on other backends; named on
# the command line, it is skipped there.
pytestmark = pytest.mark.skipif(
    keras.config.backend() != "torch", reason="tests of the PyTorch backend"
)


def raised(function):
    try:
        function()
    except Exception as error:  # noqa: BLE001 - the error is the subject
        return error
    raise AssertionError("the call raised nothing")


def test_cpu_allocator_error_is_recognised():
    # A real failure of the CPU allocator: 8 TiB of float32.
    error = raised(lambda: torch.empty(1 << 41))
    assert type(error) is RuntimeError
    assert torch_memory.CPU_ALLOCATOR_MESSAGE in str(error)
    assert torch_memory.is_out_of_memory_error(error)
    assert memory.is_out_of_memory_error(error)


def test_cuda_out_of_memory_error_is_recognised():
    # CUDA is absent here: the real class, constructed as CUDA raises it.
    error = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB"
    )
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    assert isinstance(error, RuntimeError)
    assert torch_memory.is_out_of_memory_error(error)
    assert memory.is_out_of_memory_error(error)


def test_other_runtime_errors_are_not_out_of_memory():
    error = raised(lambda: torch.ones(2) @ torch.ones(3))
    assert isinstance(error, RuntimeError)
    assert not torch_memory.is_out_of_memory_error(error)
    assert not memory.is_out_of_memory_error(error)
    assert not torch_memory.is_out_of_memory_error(ValueError("shapes"))


def test_release_memory_frees_tensors_held_in_cycles():
    tensor = torch.ones(1024)
    cycle = [tensor]
    cycle.append(cycle)  # as a failed step's traceback holds its frames
    reference = weakref.ref(tensor)
    del tensor, cycle
    gc.disable()
    try:
        assert reference() is not None
        torch_memory.release_memory()
        assert reference() is None
    finally:
        gc.enable()
    # It never starts CUDA by itself.
    assert not torch.cuda.is_initialized()
