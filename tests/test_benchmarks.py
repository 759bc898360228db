"""The benchmarks' `--quick` modes run (smoke test: exit code only, no
timing assertions), on the backend of the suite."""

import json
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
        pytest.param("suite_search.py", marks=pytest.mark.tensorflow_backend),
    ],
)
def test_quick_mode_runs(tmp_path, script):
    # Without --output, a smoke run writes to the temporary folder (TMPDIR,
    # here the test's), never over the results the documentation quotes.
    recorded = recorded_results()
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
    assert list(tmp_path.glob(f"{script[:-3]}_quick.json*"))
    assert recorded_results() == recorded


def recorded_results():
    """The recorded results and plots the documentation quotes."""
    paths = [
        *(BENCHMARKS / "results").glob("*.json*"),
        *(BENCHMARKS.parent / "docs").glob("*.png"),
    ]
    return {path: path.read_bytes() for path in paths}


@pytest.mark.skipif(
    BACKEND != "jax", reason="the GPU machine runs JAX; smoke-tested there"
)
def test_device_check_smoke(tmp_path):
    # The script the GPU machine runs (issue 16), at its smallest settings:
    # the throughput curve, the workload searches and the dynamic batch,
    # each exiting 0 and writing its JSON where it was told to.
    recorded = recorded_results()
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "device_check.sh"), str(tmp_path), "--smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for name in ("throughput", "workload_search", "workload_dynamic"):
        assert (tmp_path / f"{name}.json").exists(), name
    assert recorded_results() == recorded
    # A search spread over sessions: --resume keeps the finished searches
    # and runs none of them again.
    searches = tmp_path / "workload_search.json"
    before = json.loads(searches.read_text())["runs"]
    resumed = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "workload_search.py"),
            "--quick",
            "--resume",
            "--output",
            str(searches),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"0 searches ({len(before)} already done)" in resumed.stdout
    assert json.loads(searches.read_text())["runs"] == before
