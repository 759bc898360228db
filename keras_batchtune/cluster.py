"""A distributed search that survives a worker that dies mid-trial.

In KerasTuner's distributed search the chief hands each worker a trial and
waits, before it exits, until every worker has ended its trial and asked
for another. A worker killed mid-trial never does: KerasTuner's chief keeps
its trial RUNNING and waits forever, and the other workers, once
`max_trials` trials exist, leave without it.

The design here is a lease with a heartbeat:

- a worker that runs a trial calls the chief every `worker_timeout / 4`
  seconds (`LeasedOracleClient`, through KerasTuner's own `GetTrial` call);
- the chief (`WorkerLeases`, a mixin of the oracle; `watch_workers`, a
  thread beside the gRPC server) takes back a trial whose worker has been
  silent for `worker_timeout` seconds: the trial goes to the retry queue
  and is run again, whole, by the next worker that asks; the dead worker
  is forgotten;
- a worker that finds no new trial to run while trials of other workers are
  still running waits (KerasTuner's `IDLE` answer) instead of leaving, so a
  trial taken back always finds a worker to run it;
- a worker restarted under the same `KERASTUNER_TUNER_ID` before the
  timeout gets its trial back (KerasTuner's behaviour); one that was only
  slow and ends a trial that ran again elsewhere is ignored the second
  time (the first result to arrive is kept).

Pure Python and KerasTuner: no TensorFlow import.
"""

import contextlib
import numbers
import os
import threading
import time

import keras_tuner
from keras_tuner.engine import trial as trial_module

from keras_batchtune.backend import keras_tuner_internals

DEFAULT_WORKER_TIMEOUT = 60.0
"""Seconds of silence after which the chief takes a worker's trial back."""

HEARTBEATS_PER_TIMEOUT = 4
"""A worker running a trial calls the chief this often per timeout."""


def is_chief():
    """Whether this process is the chief of a KerasTuner distributed search.

    KerasTuner's rule: `KERASTUNER_ORACLE_IP` is set and the tuner id
    (`KERASTUNER_TUNER_ID`) contains `"chief"`.

    Returns:
        Boolean.
    """
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" in os.environ.get(
        "KERASTUNER_TUNER_ID", ""
    )


def check_worker_timeout(worker_timeout):
    """Validates `worker_timeout`: None, or a finite number of seconds > 0.

    Example:

    ```python
    check_worker_timeout(60)  # 60.0
    ```

    Args:
        worker_timeout: The value to check.

    Returns:
        None or a float.

    Raises:
        ValueError: naming `worker_timeout`, for anything else.
    """
    if worker_timeout is None:
        return None
    if (
        isinstance(worker_timeout, bool)
        or not isinstance(worker_timeout, numbers.Real)
        or not 0 < worker_timeout < float("inf")
    ):
        raise ValueError(
            "`worker_timeout` must be None (wait for every worker forever, "
            "as KerasTuner) or a number of seconds > 0. "
            f"Received: worker_timeout={worker_timeout!r}"
        )
    return float(worker_timeout)


class WorkerLeases:
    """Oracle mixin: trials of silent workers are taken back and run again.

    Mixed into `keras_batchtune.oracle.BatchSearchOracle` before
    `keras_tuner.Oracle`. Every call that names a trial (`create_trial`
    handing it out, `get_trial`, `update_trial`) renews its lease;
    `reclaim_silent_trials` sends the trials whose lease is older than
    `worker_timeout` back to the retry queue.

    Example:

    ```python
    class MyOracle(WorkerLeases, keras_tuner.oracles.RandomSearchOracle):
        pass

    oracle = MyOracle(objective="val_loss", max_trials=8, worker_timeout=60)
    ```

    Args:
        worker_timeout: None (KerasTuner's behaviour: wait forever), or the
            seconds of silence after which a trial is taken back.
    """

    def __init__(self, *args, worker_timeout=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.worker_timeout = check_worker_timeout(worker_timeout)
        self._last_contact = {}

    def _renew(self, trial_id):
        self._last_contact[trial_id] = time.monotonic()

    def get_trial(self, trial_id):
        self._renew(trial_id)
        return super().get_trial(trial_id)

    @keras_tuner.synchronized
    def update_trial(self, trial_id, metrics, step=0):
        self._renew(trial_id)
        return super().update_trial(trial_id, metrics, step=step)

    @keras_tuner.synchronized
    def create_trial(self, tuner_id):
        trial = super().create_trial(tuner_id)
        if trial.status == trial_module.TrialStatus.RUNNING:
            self._renew(trial.trial_id)
            return trial
        others_running = any(other != tuner_id for other in self.ongoing_trials)
        if (
            self.worker_timeout is None
            or trial.status != trial_module.TrialStatus.STOPPED
            or not others_running
        ):
            return trial
        # A running trial may come back (its worker may die): wait.
        self.tuner_ids.add(tuner_id)
        return trial_module.Trial(
            self.get_space(), status=trial_module.TrialStatus.IDLE
        )

    @keras_tuner.synchronized
    def end_trial(self, trial):
        if trial.trial_id in self.end_order:
            print(
                f"BatchTuner: trial {trial.trial_id} had already ended (it "
                "was run again after its worker fell silent); this later "
                "result is ignored."
            )
            return
        queue = keras_tuner_internals.retry_queue(self)
        if trial.trial_id in queue:
            # Taken back, but its worker was alive and finished it.
            queue.remove(trial.trial_id)
        self._last_contact.pop(trial.trial_id, None)
        super().end_trial(trial)

    @keras_tuner.synchronized
    def reclaim_silent_trials(self):
        """Takes back the trials whose worker has been silent too long.

        Returns:
            The list of `(tuner_id, trial_id)` taken back.
        """
        if self.worker_timeout is None:
            return []
        now = time.monotonic()
        reclaimed = []
        for tuner_id, trial in list(self.ongoing_trials.items()):
            last = self._last_contact.setdefault(trial.trial_id, now)
            silent = now - last
            if silent <= self.worker_timeout:
                continue
            del self.ongoing_trials[tuner_id]
            self.tuner_ids.discard(tuner_id)
            keras_tuner_internals.retry_queue(self).append(trial.trial_id)
            self._last_contact.pop(trial.trial_id, None)
            reclaimed.append((tuner_id, trial.trial_id))
            print(
                f"BatchTuner: worker {tuner_id} sent nothing for "
                f"{silent:.0f} s (worker_timeout={self.worker_timeout:g}); "
                f"its trial {trial.trial_id} will run again on the next "
                "worker that asks."
            )
        if reclaimed:
            self.save()
        return reclaimed


@contextlib.contextmanager
def watch_workers(oracle):
    """Runs `oracle.reclaim_silent_trials` in a thread, on the chief.

    Only on the chief of a distributed search (`is_chief()`): elsewhere a
    trial runs in this very process and nothing is watched.

    Example:

    ```python
    with watch_workers(tuner.oracle):
        keras_tuner.Tuner.search(tuner, x, y)  # the chief's gRPC server
    ```

    Args:
        oracle: A `WorkerLeases` oracle; with `worker_timeout=None` nothing
            runs.

    Yields:
        None.
    """
    timeout = getattr(oracle, "worker_timeout", None)
    if timeout is None or not is_chief():
        yield
        return
    stop = threading.Event()

    def watch():
        while not stop.wait(timeout / HEARTBEATS_PER_TIMEOUT):
            oracle.reclaim_silent_trials()

    thread = threading.Thread(
        target=watch, name="keras_batchtune-watch-workers", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class LeasedOracleClient:
    """Worker side: waits while the chief says IDLE; renews its trial's lease.

    Wraps KerasTuner's `OracleClient` (every other call goes to it
    unchanged). While a trial runs, a daemon thread calls the chief's
    `get_trial` every `worker_timeout / 4` seconds; `create_trial` answers
    only with a trial to run or the order to stop, polling while the chief
    answers IDLE.

    Example:

    ```python
    tuner.oracle = LeasedOracleClient(tuner.oracle, worker_timeout=60)
    ```

    Args:
        client: A `keras_tuner` `OracleClient`.
        worker_timeout: Seconds (> 0) of the chief's timeout.
    """

    def __init__(self, client, worker_timeout):
        self._client = client
        self._interval = worker_timeout / HEARTBEATS_PER_TIMEOUT
        self._stop_heartbeat = None

    def __getattr__(self, name):
        if name == "_client":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self._client, name)

    def create_trial(self, tuner_id):
        while True:
            trial = self._client.create_trial(tuner_id)
            if trial.status != trial_module.TrialStatus.IDLE:
                break
            time.sleep(min(1.0, self._interval))
        if trial.status == trial_module.TrialStatus.RUNNING:
            self._start_heartbeat(trial.trial_id)
        return trial

    def end_trial(self, trial):
        self._end_heartbeat()
        return self._client.end_trial(trial)

    def _start_heartbeat(self, trial_id):
        self._end_heartbeat()
        stop = threading.Event()

        def beat():
            while not stop.wait(self._interval):
                try:
                    self._client.get_trial(trial_id)
                except Exception as error:  # the chief may be gone
                    print(f"BatchTuner: heartbeat to the chief failed: {error}")

        threading.Thread(
            target=beat, name="keras_batchtune-heartbeat", daemon=True
        ).start()
        self._stop_heartbeat = stop

    def _end_heartbeat(self):
        if self._stop_heartbeat is not None:
            self._stop_heartbeat.set()
            self._stop_heartbeat = None
