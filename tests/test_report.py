import json
import os

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


def cost_oracle(tmp_path, tolerance):
    """Five trials: val_accuracy and fit_seconds as a search would record."""
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [16, 32, 64, 128, 256])
    oracle = oracle_module.BatchSearchOracle(
        objective="val_accuracy",
        max_trials=6,
        hyperparameters=hp,
        seed=3,
        tolerance=tolerance,
    )
    oracle._set_project_dir(str(tmp_path), "cost")
    records = [
        (0.981, 4.7),  # best, slowest
        (0.978, 1.3),  # within 0.005, fast: preferred
        (0.950, 2.0),  # dominated by the one before
        (0.900, 0.8),  # fastest, poor
        (0.979, 2.2),  # within 0.005, slower than 1.3 s but more accurate
    ]
    for score, seconds in records:
        trial = oracle.create_trial("tuner0")
        oracle.update_trial(
            trial.trial_id, {"val_accuracy": score, "fit_seconds": seconds}
        )
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    oracle.save()
    return oracle


def test_pareto_front_in_the_table_and_its_line(tmp_path):
    oracle = cost_oracle(tmp_path, tolerance=None)
    ids = oracle.start_order
    front = report.pareto_front(oracle)
    assert [t.trial_id for t in front] == [ids[3], ids[1], ids[4], ids[0]]
    table = report.trials_table(oracle).splitlines()
    assert "fit s" in table[0] and "front" in table[0]
    marked = [
        line.split()[0]
        for line in table[2:]
        if f" {report.FRONT_MARK} " in line
    ]
    assert marked == [ids[0], ids[1], ids[3], ids[4]]
    line = report.front_line(oracle)
    assert line.startswith("Pareto front (val_accuracy vs fit seconds): ")
    assert f"trial {ids[1]} (batch " in line and "0.978, 1.3 s)" in line
    assert line.index(f"trial {ids[3]} ") < line.index(f"trial {ids[0]} ")
    assert report.preferred_line(oracle) is None  # no tolerance


def test_tolerance_in_the_report(tmp_path, capsys):
    oracle = cost_oracle(tmp_path, tolerance=0.005)
    ids = oracle.start_order
    line = report.preferred_line(oracle)
    assert line.startswith(f"Preferred (tolerance 0.005): trial {ids[1]}, ")
    assert "the fastest of the 3 trials within 0.005 of the best" in line
    assert f"(trial {ids[0]}, 0.981 in 4.7 s, 3.6x slower)" in line
    # "Best" stays the best objective.
    assert report.best_line(oracle).startswith(f"Best: trial {ids[0]}, ")
    assert "fit 4.7 s" in report.best_line(oracle)
    # The command reads the tolerance back from oracle.json.
    output = tmp_path / "cost.png"
    project = os.path.join(str(tmp_path), "cost")
    assert cli.main(["report", project, "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert line in out and report.front_line(oracle) in out
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # When the best is also the fastest within the tolerance, it says so.
    oracle.tolerance = 0.001
    assert report.preferred_line(oracle) == (
        f"Preferred (tolerance 0.001): trial {ids[0]}, the best val_accuracy "
        "(0.981), is also the fastest of the 1 trial within 0.001 of it "
        "(4.7 s)."
    )


def test_report_of_a_real_search_with_a_tolerance(searched, tmp_path):
    oracle = report.load_project(searched.project_dir)
    assert oracle.tolerance is None
    oracle.tolerance = 1.0  # every trial is within: the fastest is preferred
    completed = [t for t in oracle.trials.values() if t.score is not None]
    fastest = min(
        completed, key=lambda t: t.metrics.get_last_value("fit_seconds")
    )
    assert oracle.get_best_trials(1)[0].trial_id == fastest.trial_id
    assert f"trial {fastest.trial_id}" in report.preferred_line(oracle)
    assert fastest in report.pareto_front(oracle)
    path = report.plot_oracle(oracle, tmp_path / "tolerance.png")
    assert path.stat().st_size > 10_000


def test_bad_saved_tolerance_names_the_file(tmp_path):
    oracle = cost_oracle(tmp_path, tolerance=0.01)
    path = os.path.join(oracle._project_dir, "oracle.json")
    with open(path) as file:
        state = json.load(file)
    state["tolerance"] = -1
    with open(path, "w") as file:
        json.dump(state, file)
    with pytest.raises(report.ProjectError, match="oracle.json: `tolerance`"):
        report.load_project(oracle._project_dir)
