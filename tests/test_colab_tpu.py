"""The Colab TPU notebook is valid and runs top to bottom on CPU.

The notebook's main route is today's Colab TPU runtime: Keras 3 on JAX, a
`keras.distribution.DataParallel` over the cores. On CPU, 8 virtual JAX
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set before
JAX starts, hence a fresh process) stand in for the 8 cores; the notebook's
small-data switch keeps the run short. Its alternative `tf.distribute` cell
runs under the TensorFlow backend, in this process.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import nbformat
import pytest

NOTEBOOK = (
    pathlib.Path(__file__).resolve().parents[1] / "examples" / "colab_tpu.ipynb"
)

# Runs the notebook's code cells (without IPython's `%` lines) in one
# namespace, then prints what the test checks as one JSON line.
_RUNNER = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, {tests!r})
from test_colab_tpu import run_notebook

namespace = run_notebook()
tuner = namespace["tuner"]
trials = [tuner.oracle.trials[i] for i in tuner.oracle.start_order]
print("RESULT", json.dumps({{
    "devices": namespace["distribution"].device_mesh.devices.size,
    "trials": [
        {{
            "status": t.status,
            "per_core_batch": t.hyperparameters.values["batch_size"],
            "global_batch": t.metrics.get_last_value("global_batch_size"),
            "learning_rate": t.hyperparameters.values["learning_rate"],
            "effective_learning_rate": t.metrics.get_last_value(
                "effective_learning_rate"),
        }}
        for t in trials
    ],
    "trial_ids": [t.trial_id for t in trials],
}}), flush=True)
"""


def code_without_magics(cell):
    """A code cell's source without IPython's `%` and `!` lines."""
    lines = cell.source.splitlines()
    return "\n".join(
        line for line in lines if not line.lstrip().startswith(("%", "!"))
    )


def run_notebook():
    """Runs the notebook's code cells in order; returns their namespace."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    namespace = {"__name__": "__main__"}
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    for index, cell in enumerate(code_cells):
        source = code_without_magics(cell)
        exec(
            compile(source, f"colab_tpu.ipynb, code cell {index}", "exec"),
            namespace,
        )
    return namespace


def test_notebook_is_valid_nbformat():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["accelerator"] == "TPU"
    sources = "\n".join(cell.source for cell in notebook.cells)
    assert 'os.environ.setdefault("KERAS_BACKEND", "jax")' in sources
    assert "keras_batchtune.resolve_distribution()" in sources
    assert "keras.distribution.set_distribution(distribution)" in sources
    # The tf.distribute route stays, as the alternative cell.
    assert "keras_batchtune.resolve_strategy()" in sources
    assert "%tensorboard --logdir" in sources
    # Saved without outputs: what runs is what is shown.
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.skipif(
    keras.config.backend() != "jax",
    reason="the notebook's route is Keras on JAX (today's Colab TPU); it "
    "runs once, in the JAX backend's suite",
)
def test_notebook_runs_on_8_virtual_devices_with_small_data(tmp_path):
    script = tmp_path / "run_notebook.py"
    script.write_text(_RUNNER.format(tests=str(NOTEBOOK.parents[1] / "tests")))
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "KERAS_BATCHTUNE_SMALL_DATA": "1",
    }
    # The timeout only stops a hang.
    process = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    out = process.stdout
    assert "Keras" in out and "on jax" in out
    # resolve_distribution says what it chose and why.
    assert "using keras.distribution.DataParallel over 8 cpu devices" in out
    assert "no GPU or TPU found" in out
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["devices"] == 8
    assert len(result["trials"]) == 2
    for trial in result["trials"]:
        assert trial["status"] == "COMPLETED"
        # The searched batch is per core, a multiple of 8; the global batch
        # is 8 cores' worth, and the LR is coupled to it (linear, at 256).
        assert trial["per_core_batch"] % 8 == 0
        assert 16 <= trial["per_core_batch"] <= 128
        assert trial["global_batch"] == 8 * trial["per_core_batch"]
        assert trial["effective_learning_rate"] == pytest.approx(
            trial["learning_rate"] * trial["global_batch"] / 256, rel=1e-5
        )
    assert "best global batch:" in out
    assert "effective learning rate:" in out
    runs = list((tmp_path / "batchtune_logs").iterdir())
    assert sorted(run.name for run in runs) == sorted(result["trial_ids"])


@pytest.mark.tensorflow_backend
def test_tf_distribute_route_runs_on_cpu_with_small_data(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("KERAS_BATCHTUNE_SMALL_DATA", "1")
    monkeypatch.chdir(tmp_path)
    namespace = run_notebook()
    out = capsys.readouterr().out
    # No TPU here: the default strategy, and it says why.
    assert "keras_batchtune: using the default strategy" in out
    assert "no TPU found" in out
    assert "distribution" not in namespace  # the JAX cell did nothing
    tuner = namespace["tuner"]
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == 2
    assert all(t.status == "COMPLETED" for t in trials)
    assert "effective learning rate:" in out
    runs = list((tmp_path / "batchtune_logs").iterdir())
    assert sorted(run.name for run in runs) == sorted(
        t.trial_id for t in trials
    )
