"""JAX's out-of-memory errors, raised for real on the CPU, are recognised."""

import gc
import weakref

import jax
import jax.numpy as jnp
import keras
import pytest

from keras_batchtune import memory
from keras_batchtune.backend.jax import memory as jax_memory

# The conftest beside this file leaves it out on other backends; named on
# the command line, it is skipped there.
pytestmark = pytest.mark.skipif(
    keras.config.backend() != "jax", reason="tests of the JAX backend"
)
IMPOSSIBLE = 1 << 41  # float32 elements: 8 TiB


def raised(function):
    try:
        function()
    except Exception as error:  # noqa: BLE001 - the error is the subject
        return error
    raise AssertionError("the allocator accepted an 8 TiB array")


def allocate_eagerly():
    jnp.zeros((IMPOSSIBLE,))


def allocate_while_tracing():
    @jax.jit
    def step(x):
        with jax.ensure_compile_time_eval():
            jnp.zeros((IMPOSSIBLE,))
        return x + 1.0

    step(1.0)


@pytest.mark.parametrize("allocate", [allocate_eagerly, allocate_while_tracing])
def test_resource_exhausted_is_recognised(allocate):
    error = raised(allocate)
    assert isinstance(error, jax.errors.JaxRuntimeError)
    assert str(error).startswith("RESOURCE_EXHAUSTED")
    assert jax_memory.is_out_of_memory_error(error)
    assert memory.is_out_of_memory_error(error)


def test_out_of_memory_met_after_asynchronous_dispatch_is_recognised():
    # A step dispatched asynchronously that runs out of memory is reported
    # when a result is read, with the status INTERNAL: the message below is
    # the one a real run under a capped address space gave
    # (tests/reliability/test_failures_mid_search.py has it for real).
    error = jax.errors.JaxRuntimeError(
        "INTERNAL: Error dispatching computation: Error dispatching "
        "computation: Out of memory allocating 1346904272 bytes."
    )
    assert jax_memory.is_out_of_memory_error(error)
    assert not jax_memory.is_out_of_memory_error(
        jax.errors.JaxRuntimeError("INTERNAL: Error dispatching computation")
    )


def test_other_runtime_errors_are_not_out_of_memory():
    # A real XLA error of another status: a donated buffer used again.
    step = jax.jit(lambda x: x + 1.0, donate_argnums=0)
    x = jnp.ones(3)
    step(x)
    error = raised(lambda: step(x))
    assert "INVALID_ARGUMENT" in str(error)
    assert not jax_memory.is_out_of_memory_error(error)
    deleted = jnp.ones(3)
    deleted.delete()
    error = raised(lambda: deleted + 1.0)
    assert isinstance(error, RuntimeError)
    assert not jax_memory.is_out_of_memory_error(error)
    assert not jax_memory.is_out_of_memory_error(ValueError("shapes"))


def test_release_memory_deletes_arrays_held_in_cycles():
    array = jnp.ones((1024,))
    cycle = [array]
    cycle.append(cycle)  # as a failed step's traceback holds its frames
    reference = weakref.ref(array)
    del array, cycle
    gc.disable()
    try:
        assert reference() is not None
        jax_memory.release_memory()
        assert reference() is None
    finally:
        gc.enable()
