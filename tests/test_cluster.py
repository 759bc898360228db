"""The chief's leases on running trials, on a real oracle in one process.

The same calls the chief's gRPC server makes for its workers
(`create_trial(tuner_id)`, `update_trial`, `end_trial`), made directly; the
processes and the network are in `tests/reliability/test_killed_worker.py`.

The leases read `cluster.time.monotonic()`. The tests give the module a
clock that moves only when told (`Clock`), so whether a worker has been
silent for longer than `worker_timeout` is decided by the test, never by
how fast a loaded machine runs; the watcher's and the heartbeat's threads
are real, and the tests wait for what they do (a count of heartbeats or of
the watcher's passes, a trial taken back, a thread ended) with timeouts that
only stop a hang.
"""

import threading
import time

import keras_tuner
import pytest

import keras_batchtune
from keras_batchtune import cluster
from keras_batchtune import oracle as oracle_module
from keras_batchtune.backend import keras_tuner_internals

TIMEOUT = 60.0  # worker_timeout, in the seconds of `Clock`
HANG = 600.0  # real seconds; only stops a hang, never judges speed


class Clock:
    """Stands for the `time` module in `keras_batchtune.cluster`.

    `monotonic()` returns seconds that move only on `advance()`; `sleep()`
    (a worker polling an IDLE chief) really sleeps.
    """

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds

    @staticmethod
    def sleep(seconds):
        time.sleep(seconds)


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(cluster, "time", clock)
    return clock


class CountingOracle(oracle_module.BatchSearchOracle):
    """Counts the heartbeats (`get_trial`) and the watcher's passes."""

    def __init__(self, *args, **kwargs):
        self.heartbeats = 0
        self.passes = 0
        super().__init__(*args, **kwargs)

    def get_trial(self, trial_id):
        trial = super().get_trial(trial_id)
        self.heartbeats += 1  # counted once the lease is renewed
        return trial

    def reclaim_silent_trials(self):
        reclaimed = super().reclaim_silent_trials()
        self.passes += 1
        return reclaimed


def make_oracle(tmp_path, max_trials=2, worker_timeout=TIMEOUT):
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 1000)
    oracle = CountingOracle(
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


def wait_until(condition, what):
    """Waits for `condition()`; the timeout only stops a hang."""
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, f"waited {HANG:g} s for {what}"
        time.sleep(0.01)


def threads_named(name):
    return [t for t in threading.enumerate() if t.name == name]


def test_a_silent_workers_trial_runs_again_elsewhere(tmp_path, clock):
    oracle = make_oracle(tmp_path, max_trials=1)
    lost = oracle.create_trial("tuner1")
    assert lost.status == "RUNNING"
    # No new trial is left, but tuner1's may come back: tuner0 waits.
    assert oracle.create_trial("tuner0").status == "IDLE"
    clock.advance(TIMEOUT)
    assert oracle.reclaim_silent_trials() == []  # silent for exactly TIMEOUT
    clock.advance(1)
    assert oracle.reclaim_silent_trials() == [("tuner1", lost.trial_id)]
    assert "tuner1" not in oracle.tuner_ids
    assert keras_tuner_internals.retry_queue(oracle) == [lost.trial_id]
    again = oracle.create_trial("tuner0")
    assert again.trial_id == lost.trial_id and again.status == "RUNNING"
    finish(oracle, again)
    assert oracle.create_trial("tuner0").status == "STOPPED"
    assert oracle.end_order == [lost.trial_id]
    assert oracle.ongoing_trials == {} and oracle.tuner_ids == set()


def test_heartbeats_and_updates_keep_a_trial(tmp_path, clock):
    oracle = make_oracle(tmp_path)
    trial = oracle.create_trial("tuner1")
    for renew in (oracle.get_trial, oracle.get_trial, oracle.update_trial):
        clock.advance(TIMEOUT - 1)
        if renew == oracle.update_trial:
            renew(trial.trial_id, {"val_loss": 2.0}, step=0)
        else:
            renew(trial.trial_id)  # the worker's heartbeat
        clock.advance(TIMEOUT - 1)  # silent for less than TIMEOUT since
        assert oracle.reclaim_silent_trials() == []
    assert oracle.ongoing_trials["tuner1"].trial_id == trial.trial_id
    clock.advance(2)  # now silent for TIMEOUT + 1
    assert oracle.reclaim_silent_trials() == [("tuner1", trial.trial_id)]


def test_a_late_result_of_a_trial_run_again_is_ignored(tmp_path, clock, capsys):
    oracle = make_oracle(tmp_path, max_trials=1)
    slow = oracle.create_trial("tuner1")
    clock.advance(TIMEOUT + 1)
    assert oracle.reclaim_silent_trials() == [("tuner1", slow.trial_id)]
    again = oracle.create_trial("tuner0")
    assert again.trial_id == slow.trial_id
    # tuner1 was only slow: its result arrives first and is kept.
    finish(oracle, slow, loss=0.5)
    assert keras_tuner_internals.retry_queue(oracle) == []
    finish(oracle, again, loss=0.9)
    assert "this later result is ignored" in capsys.readouterr().out
    assert oracle.end_order == [slow.trial_id]
    assert oracle.trials[slow.trial_id].score == 0.5


def test_without_a_timeout_nothing_is_taken_back(tmp_path, clock):
    oracle = make_oracle(tmp_path, max_trials=1, worker_timeout=None)
    oracle.create_trial("tuner1")
    # KerasTuner's behaviour: the other worker is told to stop.
    assert oracle.create_trial("tuner0").status == "STOPPED"
    clock.advance(1e9)
    assert oracle.reclaim_silent_trials() == []
    assert list(oracle.ongoing_trials) == ["tuner1"]


def test_the_chief_watches_its_workers_in_a_thread(
    tmp_path, clock, monkeypatch
):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    # The watcher wakes every worker_timeout / 4 real seconds.
    oracle = make_oracle(tmp_path, max_trials=1, worker_timeout=0.2)
    trial = oracle.create_trial("tuner1")
    name = "keras_batchtune-watch-workers"
    with cluster.watch_workers(oracle):
        assert len(threads_named(name)) == 1
        wait_until(lambda: oracle.passes >= 3, "three passes of the watcher")
        # The clock has not moved: however long that took, no one is silent.
        assert list(oracle.ongoing_trials) == ["tuner1"]
        clock.advance(1)
        wait_until(lambda: not oracle.ongoing_trials, "the trial taken back")
        assert keras_tuner_internals.retry_queue(oracle) == [trial.trial_id]
    wait_until(lambda: not threads_named(name), "the watcher to end")


def test_not_the_chief_watches_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("KERASTUNER_ORACLE_IP", raising=False)
    oracle = make_oracle(tmp_path, worker_timeout=0.2)
    with cluster.watch_workers(oracle):
        assert threads_named("keras_batchtune-watch-workers") == []


def test_a_worker_heartbeats_while_its_trial_runs(tmp_path, clock):
    # The worker side against the oracle itself (KerasTuner's OracleClient
    # makes these same calls over gRPC); a heartbeat every 0.05 real s.
    oracle = make_oracle(tmp_path, max_trials=1, worker_timeout=0.2)
    worker = cluster.LeasedOracleClient(oracle, worker_timeout=0.2)
    name = "keras_batchtune-heartbeat"
    trial = worker.create_trial("tuner1")
    assert trial.status == "RUNNING"
    wait_until(lambda: oracle.heartbeats >= 3, "three heartbeats")
    # Long silent on the clock, but a heartbeat after that renews the lease.
    clock.advance(10)
    beats = oracle.heartbeats
    # The first heartbeat counted from here may have read the clock before
    # it moved; the second began after the first was counted.
    wait_until(lambda: oracle.heartbeats >= beats + 2, "two more heartbeats")
    assert oracle.reclaim_silent_trials() == []
    # Ending the trial ends the heartbeat.
    worker.update_trial(trial.trial_id, {"val_loss": 1.0})
    trial.status = "COMPLETED"
    worker.end_trial(trial)
    wait_until(lambda: not threads_named(name), "the heartbeat to end")
    assert oracle.end_order == [trial.trial_id]


def test_a_waiting_worker_runs_the_trial_taken_back(tmp_path, clock):
    oracle = make_oracle(tmp_path, max_trials=1, worker_timeout=0.2)
    lost = oracle.create_trial("tuner1")  # tuner1 then dies
    waiting = cluster.LeasedOracleClient(oracle, worker_timeout=0.2)
    got = []
    thread = threading.Thread(
        target=lambda: got.append(waiting.create_trial("tuner0"))
    )
    thread.start()
    try:
        # tuner0 is told IDLE, and asks again, until the trial comes back.
        wait_until(lambda: "tuner0" in oracle.tuner_ids, "tuner0 to ask")
        assert got == []
        clock.advance(1)
        assert oracle.reclaim_silent_trials() == [("tuner1", lost.trial_id)]
        thread.join(HANG)
        assert not thread.is_alive(), "tuner0 never got the trial"
    except BaseException:
        # Let tuner0 go: with no trial running, it is told to stop.
        oracle.ongoing_trials.pop("tuner1", None)
        thread.join(HANG)
        raise
    (again,) = got
    assert again.trial_id == lost.trial_id and again.status == "RUNNING"
    finish(waiting, again)
    assert oracle.end_order == [lost.trial_id]


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
