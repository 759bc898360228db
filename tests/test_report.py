import keras_tuner

from keras_batchtune import oracle as oracle_module
from keras_batchtune import report


def test_table_and_best_line(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [32, 512])
    hp.Fixed("learning_rate", 0.05)
    oracle = oracle_module.BatchSearchOracle(
        objective="val_accuracy", max_trials=3, hyperparameters=hp, seed=1
    )
    oracle._set_project_dir(str(tmp_path), "report")
    records = [
        {
            "val_accuracy": 0.9,
            "effective_learning_rate": 0.05,
            "examples_per_second": 1000.0,
        },
        {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: 512},
    ]
    for metrics in records:
        trial = oracle.create_trial("tuner0")
        oracle.update_trial(trial.trial_id, metrics)
        trial.status = "COMPLETED" if "val_accuracy" in metrics else "FAILED"
        oracle.end_trial(trial)
    table = report.trials_table(oracle).splitlines()
    assert "effective LR" in table[0] and "examples/s" in table[0]
    assert len(table) == 4
    assert "COMPLETED" in table[2] and "1000" in table[2]
    assert "out of memory at batch 512" in table[3]
    assert report.best_line(oracle).startswith("Best: trial 0, batch_size=32")


import pytest  # noqa: E402
from conftest import make_mlp  # noqa: E402

import keras_batchtune  # noqa: E402
from keras_batchtune import cli  # noqa: E402


@pytest.fixture(scope="module")
def searched(tmp_path_factory, digits):
    """A finished small search: 3 trials at batch 16 or 32, LR 0.05 or 0.2."""
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [16, 32])
    hp.Choice("learning_rate", [0.05, 0.2])
    directory = tmp_path_factory.mktemp("report")
    tuner = keras_batchtune.BatchTuner(
        lambda hp: make_mlp(hp["learning_rate"]),
        objective="val_accuracy",
        max_trials=3,
        seed=2,
        hyperparameters=hp,
        directory=directory,
        project_name="search",
    )
    x, y, x_val, y_val = digits
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=1, verbose=0)
    return tuner


def test_plot_from_tuner_and_from_directory(searched, tmp_path):
    for source in (searched, searched.project_dir):
        path = tmp_path / "plot.png"
        assert keras_batchtune.plot_search(source, path) == path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000
        path.unlink()


def test_load_project_reads_the_trials_back(searched):
    oracle = report.load_project(searched.project_dir)
    assert oracle.objective.name == "val_accuracy"
    assert oracle.objective.direction == "max"
    assert sorted(oracle.trials) == sorted(searched.oracle.trials)
    best = oracle.get_best_trials(1)[0]
    assert best.trial_id == searched.oracle.get_best_trials(1)[0].trial_id


def test_edge_of_range_is_noticed(searched, capsys):
    best = searched.oracle.get_best_trials(1)[0].hyperparameters
    notices = report.range_notices(searched.oracle)
    # Both hyperparameters have two values: the best is always at an edge.
    assert len(notices) == 2
    edge = "lower" if best["batch_size"] == 16 else "upper"
    suggestion = (
        "min_batch_size down to 4"
        if edge == "lower"
        else ("max_batch_size up to 128")
    )
    assert f"{edge} edge of the searched range [16, 32]" in notices[0]
    assert suggestion in notices[0]
    searched.results_summary()
    assert notices[1] in capsys.readouterr().out


def test_report_command(searched, tmp_path, capsys):
    output = tmp_path / "report.png"
    assert (
        cli.main(["report", searched.project_dir, "--output", str(output)]) == 0
    )
    out = capsys.readouterr().out
    assert "effective LR" in out and f"wrote {output}" in out
    assert output.exists()


def test_report_without_matplotlib_prints_the_table(
    searched, tmp_path, capsys, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    output = tmp_path / "none.png"
    assert (
        cli.main(["report", searched.project_dir, "--output", str(output)]) == 0
    )
    out = capsys.readouterr().out
    assert "effective LR" in out and report.PLOT_HINT in out
    assert not output.exists()


def test_report_refuses_bad_directories(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a tuner project directory" in err
    assert len(err.splitlines()) == 1
    project = tmp_path / "empty"  # a project with no trial at all
    project.mkdir()
    keras_batchtune.BatchTuner(
        lambda hp: make_mlp(),
        objective="val_accuracy",
        directory=tmp_path,
        project_name="empty",
    ).oracle.save()
    assert cli.main(["report", str(project)]) == 2
    assert "holds no completed trial" in capsys.readouterr().err


def test_no_notice_for_ranges_that_are_not_numbers(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Choice("learning_rate", ["low", "high"])
    oracle = oracle_module.BatchSearchOracle(
        objective="val_accuracy", max_trials=1, hyperparameters=hp
    )
    oracle._set_project_dir(str(tmp_path), "strings")
    trial = oracle.create_trial("tuner0")
    oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    assert report.range_notices(oracle) == []
