"""PyTorch's out-of-memory errors, on CUDA and on the CPU, and their cleanup."""

import gc

import torch

# The CPU allocator's message (c10/core/impl/alloc_cpu.cpp).
CPU_ALLOCATOR_MESSAGE = "DefaultCPUAllocator: can't allocate memory"


def is_out_of_memory_error(error):
    """Tells whether `error` is one of PyTorch's out-of-memory errors.

    On CUDA (and other accelerators) PyTorch raises `torch.OutOfMemoryError`;
    its CPU allocator raises a plain `RuntimeError` whose message holds
    "DefaultCPUAllocator: can't allocate memory".

    Example:

    ```python
    try:
        torch.empty(2**41)
    except RuntimeError as error:
        is_out_of_memory_error(error)  # True
    ```

    Args:
        error: An exception.

    Returns:
        True for `torch.OutOfMemoryError` or the CPU allocator's error.
    """
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and CPU_ALLOCATOR_MESSAGE in str(
        error
    )


def release_memory():
    """Frees what the last training steps left behind, before the next probe.

    A failed step's traceback holds its frames, and with them tensors, in
    reference cycles: a garbage collection frees them. On CUDA the caching
    allocator then still holds their blocks; `torch.cuda.empty_cache()`
    returns them, so the next probe starts from unfragmented memory (done
    only where CUDA is already initialised: this never starts it).

    Example:

    ```python
    release_memory()
    ```
    """
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
