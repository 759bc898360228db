import math

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


def make_band_oracle(tmp_path, lr_band, name="band", lr_name="learning_rate"):
    """A wide search: batch 16-1024, learning rate over four decades."""
    hp = keras_tuner.HyperParameters()
    hp.Int("batch_size", 16, 1024, step=2, sampling="log")
    hp.Float(lr_name, 1e-4, 1.0, sampling="log")
    oracle = oracle_module.BatchSearchOracle(
        objective="val_loss",
        max_trials=40,
        hyperparameters=hp,
        seed=3,
        lr_band=lr_band,
        lr_hyperparameter=None if lr_name == "learning_rate" else lr_name,
    )
    oracle._set_project_dir(str(tmp_path), name)
    oracle.learning_rate_multiplier = lambda batch_size: batch_size / 32
    return oracle


def ridge_distance(values, lr_name="learning_rate"):
    """Decades between a trial's effective LR and the best, 0.003 B**0.8."""
    batch_size = values["batch_size"]
    effective = values[lr_name] * batch_size / 32
    return abs(math.log10(effective / (0.003 * batch_size**0.8)))


def run_synthetic_search(oracle, num_trials, lr_name="learning_rate"):
    """Trials scored by their distance to a known ridge; returns values."""
    proposed = []
    for _ in range(num_trials):
        trial = oracle.create_trial("tuner0")
        values = dict(trial.hyperparameters.values)
        proposed.append(values)
        loss = ridge_distance(values, lr_name)
        oracle.update_trial(trial.trial_id, {"val_loss": loss})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return proposed


@pytest.mark.parametrize("lr_name", ["learning_rate", "base_lr"])
def test_lr_band_from_trials_concentrates_samples_on_the_ridge(
    tmp_path, lr_name
):
    plain = run_synthetic_search(
        make_band_oracle(tmp_path, "off", "plain", lr_name), 30, lr_name
    )
    oracle = make_band_oracle(tmp_path, "trials", lr_name=lr_name)
    banded = run_synthetic_search(oracle, 30, lr_name)

    def share_near(values):  # within half a decade of the ridge
        later = values[8:]
        near = [v for v in later if ridge_distance(v, lr_name) <= 0.5]
        return len(near) / len(later)

    assert share_near(plain) < 0.4
    assert share_near(banded) >= 0.6
    fitted = oracle.fitted_band()
    assert 0.5 <= fitted.slope <= 1.1
    # Every sample stays in the hyperparameter's range.
    assert all(1e-4 <= v[lr_name] <= 1.0 for v in banded)
    # The first trials, before a band exists, are sampled as without one.
    assert banded[:4] == plain[:4]


def test_lr_band_off_keeps_random_search_sampling(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Int("batch_size", 16, 1024, step=2, sampling="log")
    hp.Float("learning_rate", 1e-4, 1.0, sampling="log")
    plain = keras_tuner.oracles.RandomSearchOracle(
        objective="val_loss", max_trials=40, hyperparameters=hp, seed=3
    )
    plain._set_project_dir(str(tmp_path), "keras_tuner")
    ours = run_synthetic_search(make_band_oracle(tmp_path, None), 12)
    assert ours == run_synthetic_search(plain, 12)


def test_lr_band_from_a_range_test_is_saved_with_the_oracle(tmp_path):
    oracle = make_band_oracle(tmp_path, "range_test")
    oracle.range_test_learning_rate = 0.01
    oracle.save()
    reloaded = make_band_oracle(tmp_path, "range_test")
    reloaded.reload()
    assert reloaded.range_test_learning_rate == 0.01
    low, high = reloaded.learning_rate_interval(512)
    assert (low, high) == pytest.approx((0.01 / 10**0.5, 0.01 * 10**0.5))
    proposed = run_synthetic_search(reloaded, 20)
    inside = [v for v in proposed if low <= v["learning_rate"] <= high]
    assert len(inside) >= 12  # 3 in 4 in the band, some by chance


def test_lr_band_needs_a_learning_rate_hyperparameter(tmp_path):
    oracle = make_band_oracle(tmp_path, "both", lr_name="step_size")
    oracle.lr_hyperparameter = None  # "step_size" is not a known LR name
    oracle.range_test_learning_rate = 0.01
    assert oracle.learning_rate_hyperparameter() is None
    assert oracle.learning_rate_interval(64) is None


@pytest.mark.parametrize("lr_band", ["auto", True, 0.5])
def test_bad_lr_band(tmp_path, lr_band):
    with pytest.raises(ValueError, match="`lr_band` must be None, 'off'"):
        make_band_oracle(tmp_path, lr_band)


def test_successive_halving_promotes_and_scales_costs(tmp_path):
    oracle = make_oracle(
        tmp_path,
        successive_halving={"factor": 2, "min_epochs": 2},
        tolerance=0.01,
    )
    oracle.max_epochs = 8
    worse = finish(oracle, 0.50, seconds=1.0)
    better = finish(oracle, 0.30, seconds=1.0)
    values = {
        trial_id: oracle.get_trial(trial_id).hyperparameters.values
        for trial_id in (worse, better)
    }
    assert [v["tuner/epochs"] for v in values.values()] == [2, 2]
    # 2 finished at 2 epochs: the better one is trained again for 4.
    promoted = oracle.create_trial("tuner0")
    promoted_values = promoted.hyperparameters.values
    assert (promoted_values["tuner/rung"], promoted_values["tuner/epochs"]) == (
        1,
        4,
    )
    assert {
        k: v for k, v in promoted_values.items() if not k.startswith("tuner/")
    } == {k: v for k, v in values[better].items() if not k.startswith("tuner/")}
    # Warm-started (the default): from the 2-epoch trial's checkpoint.
    assert promoted_values["tuner/trial_id"] == better
    assert promoted_values["tuner/initial_epoch"] == 2
    oracle.update_trial(
        promoted.trial_id,
        {"val_loss": 0.295, oracle_module.FIT_SECONDS: 0.9},
    )
    promoted.status = "COMPLETED"
    oracle.end_trial(promoted)
    # Within the tolerance, the 2-epoch trial took 1.0 s but stands for
    # 4.0 s at the full 8 epochs; the promoted one trained epochs 3-4 in
    # 0.9 s, so it stands for 3.6 s: it is preferred.
    assert oracle.get_best_trials()[0].trial_id == promoted.trial_id
    # A new configuration starts on the smallest budget again.
    fresh = oracle.create_trial("tuner0").hyperparameters.values
    assert (fresh["tuner/rung"], fresh["tuner/epochs"]) == (0, 2)
