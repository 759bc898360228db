"""`examples/multi_gpu.py` runs end to end on several devices.

On JAX, 4 virtual CPU devices (`XLA_FLAGS`, set before JAX starts: the
example runs in its own process) stand in for 4 GPUs: the searched batch is
split across them. On TensorFlow and PyTorch there is no GPU here, so the
example runs on the one device `resolve_distribution` finds.
"""

import os
import pathlib
import subprocess
import sys

from conftest import BACKEND

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multi_gpu.py"


def test_example_searches_on_every_device(tmp_path):
    devices = 4 if BACKEND == "jax" else 1
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--small",
            "--max-trials",
            "2",
            "--epochs",
            "1",
            "--directory",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,  # only stops a hang
        env={
            **os.environ,
            "KERAS_BACKEND": BACKEND,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        },
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"backend: {BACKEND}" in out
    assert f"devices: {devices}" in out
    if BACKEND == "jax":
        assert "keras.distribution.DataParallel over 4 cpu devices" in out
    # Which trial wins varies from run to run (thread scheduling changes
    # the float sums): any batch of the example's range, 32 to 2048.
    batch = int(out.split("best global batch:")[1].split()[0])
    assert batch % devices == 0 and 32 <= batch <= 2048
    rate = float(out.split("effective learning rate:")[1].split()[0])
    assert rate > 0
    trials = list((tmp_path / "multi_gpu").glob("trial_*/trial.json"))
    assert len(trials) == 2
