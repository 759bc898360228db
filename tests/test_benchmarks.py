"""The benchmarks run (smoke test: exit code only, no timing assertions)."""

import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script",
    ["overhead.py", "memory.py", "dynamic.py", "search_efficiency.py"],
)
def test_quick_mode_runs(tmp_path, script):
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / script),
            "--quick",
            "--output",
            str(tmp_path / "result.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "result.json").exists()
