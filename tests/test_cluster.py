"""The chief's leases on running trials, on a real oracle in one process.

The same calls the chief's gRPC server makes for its workers
(`create_trial(tuner_id)`, `update_trial`, `end_trial`), made directly; the
processes and the network are in `tests/reliability/test_killed_worker.py`.
"""

import time

import keras_tuner
import pytest

import keras_batchtune
from keras_batchtune import cluster
from keras_batchtune import oracle as oracle_module

TIMEOUT = 0.2


def make_oracle(tmp_path, max_trials=2, worker_timeout=TIMEOUT):
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 1000)
    oracle = oracle_module.BatchSearchOracle(
        objective="val_loss",
        max_trials=max_trials,
        hyperparameters=hp,
        worker_timeout=worker_timeout,
    )
    oracle._set_project_dir(str(tmp_path), "search")
    return oracle


def finish(oracle, trial, loss=1.0):
    oracle.update_trial(trial.trial_id, {"val_loss": loss})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)


def test_a_silent_workers_trial_runs_again_elsewhere(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=1)
    lost = oracle.create_trial("tuner1")
    assert lost.status == "RUNNING"
    # No new trial is left, but tuner1's may come back: tuner0 waits.
    assert oracle.create_trial("tuner0").status == "IDLE"
    assert oracle.reclaim_silent_trials() == []  # tuner1 is not silent yet
    time.sleep(2 * TIMEOUT)
    assert oracle.reclaim_silent_trials() == [("tuner1", lost.trial_id)]
    assert "tuner1" not in oracle.tuner_ids
    again = oracle.create_trial("tuner0")
    assert again.trial_id == lost.trial_id and again.status == "RUNNING"
    finish(oracle, again)
    assert oracle.create_trial("tuner0").status == "STOPPED"
    assert oracle.end_order == [lost.trial_id]
    assert oracle.ongoing_trials == {} and oracle.tuner_ids == set()


def test_heartbeats_keep_a_trial(tmp_path):
    oracle = make_oracle(tmp_path)
    trial = oracle.create_trial("tuner1")
    for _ in range(4):
        time.sleep(TIMEOUT / 2)
        oracle.get_trial(trial.trial_id)  # the worker's heartbeat
        assert oracle.reclaim_silent_trials() == []
    assert oracle.ongoing_trials["tuner1"].trial_id == trial.trial_id


def test_a_late_result_of_a_trial_run_again_is_ignored(tmp_path, capsys):
    oracle = make_oracle(tmp_path, max_trials=1)
    slow = oracle.create_trial("tuner1")
    time.sleep(2 * TIMEOUT)
    oracle.reclaim_silent_trials()
    again = oracle.create_trial("tuner0")
    # tuner1 was only slow: its result arrives first and is kept.
    finish(oracle, slow, loss=0.5)
    finish(oracle, again, loss=0.9)
    assert "this later result is ignored" in capsys.readouterr().out
    assert oracle.end_order == [slow.trial_id]
    assert oracle.trials[slow.trial_id].score == 0.5


def test_without_a_timeout_nothing_is_taken_back(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=1, worker_timeout=None)
    oracle.create_trial("tuner1")
    # KerasTuner's behaviour: the other worker is told to stop.
    assert oracle.create_trial("tuner0").status == "STOPPED"
    time.sleep(2 * TIMEOUT)
    assert oracle.reclaim_silent_trials() == []
    assert list(oracle.ongoing_trials) == ["tuner1"]


@pytest.mark.parametrize("bad", [0, -1, float("inf"), "60", True])
def test_bad_worker_timeout_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="worker_timeout"):
        keras_batchtune.BatchTuner(
            lambda hp: None,
            objective="val_loss",
            worker_timeout=bad,
            directory=str(tmp_path),
        )
    assert list(tmp_path.iterdir()) == []
    assert cluster.check_worker_timeout(None) is None
