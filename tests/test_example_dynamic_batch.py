"""`examples/dynamic_batch.py` runs end to end (two short epochs).

Under the backend of the test run (`KERAS_BACKEND` is passed on).
"""

import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import BACKEND

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
            "KERAS_BACKEND": BACKEND,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": str(EXAMPLE.parents[1]),
        },
        cwd=EXAMPLE.parents[1],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"backend: {BACKEND}" in result.stdout
    assert "batch size per epoch: [32, 32]" in result.stdout
    assert "physical batch size per epoch: [32, 32]" in result.stdout
