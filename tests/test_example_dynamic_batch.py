"""`examples/dynamic_batch.py` runs end to end (two short epochs)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dynamic_batch.py"


@pytest.mark.parametrize("policy", ["noise_scale", "schedule"])
def test_example_runs(policy):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--policy", policy, "--epochs", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": str(EXAMPLE.parents[1]),
        },
        cwd=EXAMPLE.parents[1],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "batch size per epoch: [32, 32]" in result.stdout
