"""The Colab TPU notebook is valid and runs top to bottom on CPU."""

import pathlib

import nbformat

NOTEBOOK = (
    pathlib.Path(__file__).resolve().parents[1] / "examples" / "colab_tpu.ipynb"
)


def code_without_magics(cell):
    """A code cell's source without IPython's `%` and `!` lines."""
    lines = cell.source.splitlines()
    return "\n".join(
        line for line in lines if not line.lstrip().startswith(("%", "!"))
    )


def test_notebook_is_valid_nbformat():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["accelerator"] == "TPU"
    sources = "\n".join(cell.source for cell in notebook.cells)
    assert "keras_batchtune.resolve_strategy()" in sources
    assert "%tensorboard --logdir" in sources
    # Saved without outputs: what runs is what is shown.
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_on_cpu_with_small_data(tmp_path, monkeypatch, capsys):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("KERAS_BATCHTUNE_SMALL_DATA", "1")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    for index, cell in enumerate(code_cells):
        source = code_without_magics(cell)
        exec(
            compile(source, f"colab_tpu.ipynb, code cell {index}", "exec"),
            namespace,
        )
    out = capsys.readouterr().out
    # No TPU here: the default strategy, and it says why.
    assert "keras_batchtune: using the default strategy" in out
    assert "no TPU found" in out
    tuner = namespace["tuner"]
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == 2
    assert all(t.status == "COMPLETED" for t in trials)
    assert "effective learning rate:" in out
    runs = list((tmp_path / "batchtune_logs").iterdir())
    assert sorted(run.name for run in runs) == sorted(
        t.trial_id for t in trials
    )
