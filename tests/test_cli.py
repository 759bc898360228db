"""The demo command, run as a user runs it."""

import os
import subprocess
import sys

from conftest import BACKEND

from keras_batchtune import cli


def test_demo_runs_on_bundled_digits(tmp_path):
    logdir = tmp_path / "runs"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_batchtune",
            "demo",
            "--max-trials",
            "2",
            "--epochs",
            "1",
            "--logdir",
            str(logdir),
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "KERAS_BACKEND": BACKEND,
            "TF_CPP_MIN_LOG_LEVEL": "3",
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"keras_batchtune demo on the Keras {BACKEND} backend" in out
    assert "Search: Running Trial #2" in out  # KerasTuner's progress display
    for column in (
        "batch",
        "base LR",
        "effective LR",
        "objective",
        "examples/s",
    ):
        assert column in out
    assert "Best: trial" in out
    assert "Pareto front (val_accuracy vs fit seconds): trial" in out
    assert f"tensorboard --logdir {logdir / 'tensorboard'}" in out
    assert f"keras-batchtune report {logdir / 'digits'}" in out
    assert (logdir / "digits" / "oracle.json").exists()
    event_files = list((logdir / "tensorboard").rglob("events.out.tfevents*"))
    assert event_files


def test_demo_rejects_bad_flags(capsys):
    assert cli.main(["demo", "--max-trials", "0"]) == 2
    assert "--max-trials must be >= 1" in capsys.readouterr().err
