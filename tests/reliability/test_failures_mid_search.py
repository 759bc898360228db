"""A real allocator out-of-memory error and a diverged trial mid-search.

`memory_capped_search.py` caps its own address space
(`resource.setrlimit(RLIMIT_AS)`) once the backend is warmed up, so a trial
at batch 65536 of a wide model really runs out of memory in the backend's
own CPU allocator (TensorFlow's, XLA's, PyTorch's): no layer injects the
error. A trial with learning rate 1e30 diverges. Seed 13 orders the four
trials completed, out of memory, diverged, completed, so each failure is
followed by another trial. It runs under every backend.
"""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import BACKEND
from conftest import parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).with_name("memory_capped_search.py")
HEADROOM_MIB = 160
# What each backend's CPU allocator raises: the error's class (the cause of
# the trial's `FailedTrialError`), then a line of its message.
ALLOCATOR_ERRORS = {
    "tensorflow": ("ResourceExhaustedError", "OOM when allocating tensor"),
    "jax": ("JaxRuntimeError", "Out of memory allocating"),
    "torch": ("RuntimeError", "DefaultCPUAllocator: can't allocate memory"),
}


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="caps the address space and reads /proc/self/status",
)
def test_search_goes_on_after_a_real_out_of_memory_and_a_divergence(
    tmp_path,
):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KERAS_BACKEND": BACKEND,
        "SEARCH_SEED": "13",
        # CPU only: a GPU runtime reserves far more address space than
        # the cap leaves.
        "CUDA_VISIBLE_DEVICES": "",
        # Fewer malloc arenas: less address space reserved per thread, so
        # the headroom left under the cap does not depend on thread timing.
        "MALLOC_ARENA_MAX": "2",
    }
    process = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), str(HEADROOM_MIB)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-3000:]
    events = parse(process.stdout, "EVENT")
    (done,) = parse(process.stdout, "DONE")
    trials = done["trials"]
    order = [e["trial"] for e in events if e["kind"] == "begin"]
    assert order == ["0", "1", "2", "3"]

    out_of_memory = trials["1"]
    assert out_of_memory["values"]["batch_size"] == 65536
    assert out_of_memory["status"] == "FAILED"
    assert out_of_memory["message"] == "out of memory at batch 65536"
    (error,) = [e for e in events if e["kind"] == "error" and e["trial"] == "1"]
    # The backend's own allocator failed, under the cap.
    cause, message = ALLOCATOR_ERRORS[BACKEND]
    assert error["cause"] == cause
    assert message in error["allocator"][0]
    if BACKEND == "tensorflow":
        assert error["allocator"][0].endswith("by allocator cpu")
    assert done["ceiling"] == 65536

    diverged = trials["2"]
    assert diverged["values"]["learning_rate"] == 1e30
    assert diverged["status"] == "FAILED"
    assert diverged["message"].startswith("diverged at epoch ")
    assert int(diverged["message"].rsplit(" ", 1)[1]) in (1, 2)

    # The search went on: trials before and after completed, at the batch
    # that fits, and nothing at or above the ceiling ran after it.
    for trial_id in ("0", "3"):
        assert trials[trial_id]["status"] == "COMPLETED"
        assert trials[trial_id]["values"]["batch_size"] == 32
