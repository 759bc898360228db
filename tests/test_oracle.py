import keras_tuner
import pytest

from keras_batchtune import oracle as oracle_module


def make_oracle(tmp_path, name="project", **kwargs):
    hp = keras_tuner.HyperParameters()
    hp.Int("batch_size", 16, 1024, step=2, sampling="log")
    hp.Float("learning_rate", 1e-3, 1e-1, sampling="log")
    oracle = oracle_module.BatchSearchOracle(
        objective="val_loss",
        max_trials=kwargs.pop("max_trials", 30),
        hyperparameters=hp,
        seed=kwargs.pop("seed", 1),
        **kwargs,
    )
    oracle._set_project_dir(str(tmp_path), name)
    return oracle


def run_trial(oracle, metrics=None, tuner_id="tuner0"):
    trial = oracle.create_trial(tuner_id)
    if trial.status != "RUNNING":
        return trial
    if metrics is None:
        oracle.update_trial(trial.trial_id, {"val_loss": 1.0})
        trial.status = "COMPLETED"
    else:
        oracle.update_trial(trial.trial_id, metrics)
        trial.status = "FAILED"
    oracle.end_trial(trial)
    return oracle.get_trial(trial.trial_id)


def test_out_of_memory_sets_a_ceiling_that_is_never_proposed_again(tmp_path):
    oracle = make_oracle(tmp_path)
    trial = run_trial(oracle, {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: 128})
    assert oracle.batch_size_ceiling == 128
    assert trial.status == "FAILED"
    assert trial.message == "out of memory at batch 128"
    proposed = [
        run_trial(oracle).hyperparameters["batch_size"] for _ in range(20)
    ]
    assert max(proposed) < 128
    assert set(proposed) <= {16, 32, 64}


def test_ceiling_only_moves_down(tmp_path):
    oracle = make_oracle(tmp_path)
    run_trial(oracle, {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: 256})
    run_trial(oracle, {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: 512})
    assert oracle.batch_size_ceiling == 256


def test_ceiling_survives_save_and_reload(tmp_path):
    oracle = make_oracle(tmp_path)
    run_trial(oracle, {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: 64})
    reloaded = make_oracle(tmp_path)
    reloaded.reload()
    assert reloaded.batch_size_ceiling == 64
    assert oracle_module.failure_reason(reloaded.get_trial("00")) == (
        "out of memory at batch 64"
    )


def test_informative_failures_do_not_count_as_consecutive(tmp_path):
    oracle = make_oracle(tmp_path, max_consecutive_failed_trials=2)
    for _ in range(3):
        run_trial(oracle, {oracle_module.DIVERGED_AT_EPOCH: 2})
    run_trial(oracle, {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: 1024})
    messages = [t.message for t in oracle.trials.values()]
    assert messages.count("diverged at epoch 2") == 3
    # Two real failures in a row still stop the search.
    for _ in range(2):
        trial = oracle.create_trial("tuner0")
        trial.status = "FAILED"
        trial.message = "boom"
        if len(oracle.end_order) == 5:
            with pytest.raises(RuntimeError, match="consecutive failures"):
                oracle.end_trial(trial)
        else:
            oracle.end_trial(trial)


def test_search_stops_when_nothing_fits(tmp_path, capsys):
    oracle = make_oracle(tmp_path)
    run_trial(oracle, {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: 16})
    trial = oracle.create_trial("tuner0")
    assert trial.status == "STOPPED"
    assert "every batch size in the search space ran out of memory" in (
        capsys.readouterr().out
    )


def test_retry_at_or_above_a_later_ceiling_is_not_run(tmp_path):
    oracle = make_oracle(tmp_path, max_retries_per_trial=1, seed=3)
    crashed = oracle.create_trial("worker0")
    other = oracle.create_trial("worker1")
    batch_size = crashed.hyperparameters["batch_size"]
    assert batch_size >= 32
    # The first trial crashes (INVALID: queued for a retry); then the other
    # worker runs out of memory, at a batch no larger than the first's.
    crashed.status = "INVALID"
    oracle.end_trial(crashed)
    assert crashed.trial_id in oracle._retry_queue
    oracle.update_trial(
        other.trial_id, {oracle_module.OUT_OF_MEMORY_AT_BATCH_SIZE: batch_size}
    )
    other.status = "FAILED"
    oracle.end_trial(other)
    following = [run_trial(oracle, tuner_id="worker0") for _ in range(3)]
    assert crashed.trial_id not in [t.trial_id for t in following]
    assert all(t.hyperparameters["batch_size"] < batch_size for t in following)
    ended = oracle.get_trial(crashed.trial_id)
    assert ended.status == "FAILED"
    assert ended.message.startswith(
        f"not retried: batch {batch_size} is at or above the out-of-memory "
        f"ceiling {batch_size}"
    )
    assert crashed.trial_id not in oracle._retry_queue


def finish(oracle, score, seconds=None, objective="val_loss"):
    """Completes one trial with its score and, if given, its fit_seconds."""
    trial = oracle.create_trial("tuner0")
    metrics = {objective: score}
    if seconds is not None:
        metrics[oracle_module.FIT_SECONDS] = seconds
    oracle.update_trial(trial.trial_id, metrics)
    trial.status = "COMPLETED"
    oracle.end_trial(trial)
    return trial.trial_id


def test_tolerance_prefers_the_fastest_trial_within_it(tmp_path, capsys):
    oracle = make_oracle(tmp_path, tolerance=0.01)
    slow_best = finish(oracle, 0.200, seconds=4.7)
    fast_close = finish(oracle, 0.205, seconds=1.3)
    faster_worse = finish(oracle, 0.300, seconds=0.5)
    failed = run_trial(oracle, {oracle_module.DIVERGED_AT_EPOCH: 1}).trial_id
    middle = finish(oracle, 0.209, seconds=2.0)
    ranked = [t.trial_id for t in oracle.get_best_trials(5)]
    assert ranked == [fast_close, middle, slow_best, faster_worse, failed]
    assert oracle.get_best_trials()[0].trial_id == fast_close
    # KerasTuner's progress lines still show the best score.
    progress = capsys.readouterr().out.splitlines()
    assert [line for line in progress if "So Far" in line][-1] == (
        "Best val_loss So Far: 0.2"
    )
    # The default is KerasTuner's order: by score alone.
    plain = make_oracle(tmp_path, name="plain")
    plain.trials = oracle.trials
    ranked = [t.trial_id for t in plain.get_best_trials(4)]
    assert ranked == [slow_best, fast_close, middle, faster_worse]


def test_tolerance_without_fit_seconds_keeps_the_score_order(tmp_path):
    oracle = make_oracle(tmp_path, tolerance=0.5)
    best = finish(oracle, 0.20)  # e.g. a trial of an older project
    other = finish(oracle, 0.25, seconds=0.1)
    assert [t.trial_id for t in oracle.get_best_trials(2)] == [best, other]


def test_tolerance_is_saved_but_the_argument_wins_on_reload(tmp_path):
    oracle = make_oracle(tmp_path, tolerance=0.01)
    oracle.save()
    again = make_oracle(tmp_path)
    again.reload()
    assert again.tolerance is None
    assert again.get_state()["tolerance"] is None
    assert oracle.get_state()["tolerance"] == 0.01


@pytest.mark.parametrize("tolerance", [-0.1, "0.01", float("nan")])
def test_bad_tolerance(tmp_path, tolerance):
    with pytest.raises(ValueError, match="`tolerance`"):
        make_oracle(tmp_path, tolerance=tolerance)
