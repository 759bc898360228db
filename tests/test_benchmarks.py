"""The benchmarks' `--quick` modes run (smoke test: exit code only, no
timing assertions), on the backend of the suite."""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import BACKEND

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script",
    [
        # The per-backend benchmarks (their tables have a column per
        # backend) run on every backend.
        "overhead.py",
        "memory.py",
        # The longest smoke runs compare policies and searches whose
        # backend paths the callback and tuner tests cover on every backend:
        # they run once, in the TensorFlow backend's suite (CI's time).
        pytest.param("dynamic.py", marks=pytest.mark.tensorflow_backend),
        pytest.param(
            "search_efficiency.py", marks=pytest.mark.tensorflow_backend
        ),
        pytest.param("tuner_family.py", marks=pytest.mark.tensorflow_backend),
        pytest.param("task_suite.py", marks=pytest.mark.tensorflow_backend),
    ],
)
def test_quick_mode_runs(tmp_path, script):
    # Without --output, a smoke run writes to the temporary folder (TMPDIR,
    # here the test's), never over the results the documentation quotes.
    recorded = {
        path: path.read_bytes()
        for path in (BENCHMARKS / "results").glob("*.json")
    }
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "KERAS_BACKEND": BACKEND,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "TMPDIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / f"{script[:-3]}_quick.json").exists()
    after = {
        path: path.read_bytes()
        for path in (BENCHMARKS / "results").glob("*.json")
    }
    assert after == recorded
