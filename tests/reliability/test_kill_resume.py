"""A search process killed with SIGKILL mid-trial, then started again.

`killable_search.py` runs a real BatchTuner search (six trials, batches
above 48 run out of memory through an injected layer) in a process of its
own. The first process is killed with SIGKILL while a trial is running:
that trial writes a marker file at the end of its first epoch and waits, so
the kill always lands mid-trial. The second process reloads the project
(`overwrite=False`) and finishes the search. Runs on every Keras backend.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = pathlib.Path(__file__).with_name("killable_search.py")
MAX_TRIALS = 6


def start(workdir, phase, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEARCH_SEED": "3"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(workdir), phase, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_marker(process, workdir, timeout=600):
    """Waits until a trial reports it is running; returns its trial id.

    The timeout only stops a hang.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        markers = list(pathlib.Path(workdir).glob("running.*"))
        if markers:
            return markers[0].name.split(".", 1)[1]
        if process.poll() is not None:
            raise AssertionError(
                "the search ended before the trial to kill began:\n"
                + process.stdout.read()[-3000:]
            )
        time.sleep(0.05)
    raise AssertionError(f"no trial was running after {timeout} s")


def read_events(workdir):
    with open(pathlib.Path(workdir) / "events.jsonl") as log:
        return [json.loads(line) for line in log]


def test_killed_search_resumes_without_losing_or_repeating_trials(tmp_path):
    first = start(tmp_path, "first", 2)
    second = None
    try:
        killed_trial = wait_for_marker(first, tmp_path)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=120)
        assert first.returncode == -signal.SIGKILL
        before_kill = read_events(tmp_path)
        on_disk = json.loads((tmp_path / "search" / "oracle.json").read_text())

        second = start(tmp_path, "second")
        output, _ = second.communicate(timeout=900)
        assert second.returncode == 0, output[-3000:]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    events = read_events(tmp_path)
    first_run = [e for e in before_kill if e["phase"] == "first"]
    second_run = [e for e in events if e["phase"] == "second"]
    ended_before = {e["trial"]: e for e in first_run if e["kind"] == "end"}

    # The kill landed mid-trial: the trial began and never ended, and the
    # saved oracle still lists it as running.
    assert killed_trial not in ended_before
    assert killed_trial in [
        e["trial"] for e in first_run if e["kind"] == "begin"
    ]
    assert killed_trial in on_disk["ongoing_trials"].values()
    # Before the kill, a trial ran out of memory and set the ceiling.
    ceiling = on_disk["batch_size_ceiling"]
    assert ceiling is not None
    assert any(
        e["status"] == "FAILED"
        and e["message"].startswith("out of memory at batch")
        for e in ended_before.values()
    )

    start_event = second_run[0]
    assert start_event["kind"] == "start"
    assert start_event["ceiling"] == ceiling
    assert set(ended_before) | {killed_trial} == set(start_event["reloaded"])

    done = second_run[-1]
    assert done["kind"] == "done"
    trials = done["trials"]
    # Every trial of max_trials ended, none is still running.
    assert sorted(trials) == [str(i) for i in range(MAX_TRIALS)]
    assert {t["status"] for t in trials.values()} <= {"COMPLETED", "FAILED"}
    # Trials finished before the kill are kept, with their scores, and were
    # not run again; the killed one ran again.
    for trial_id, ended in ended_before.items():
        assert trials[trial_id]["status"] == ended["status"]
        assert trials[trial_id]["score"] == ended["score"]
    begun_again = [e["trial"] for e in second_run if e["kind"] == "begin"]
    assert begun_again[0] == killed_trial
    assert not set(begun_again) & set(ended_before)
    assert len(begun_again) == len(set(begun_again))
    # Each trial that began again trained at most once (on PyTorch, Keras
    # meets an out-of-memory error before `on_train_begin`, so a trial that
    # ran out of memory may log no fit), and each that completed trained.
    fits_again = [e["trial"] for e in second_run if e["kind"] == "fit"]
    assert len(fits_again) == len(set(fits_again))
    assert set(fits_again) <= set(begun_again)
    completed_again = {
        t for t in begun_again if trials[t]["status"] == "COMPLETED"
    }
    assert completed_again <= set(fits_again)
    ended_again = [e["trial"] for e in second_run if e["kind"] == "end"]
    assert sorted(ended_again) == sorted(begun_again)
    assert sorted(ended_again + list(ended_before)) == sorted(trials)
    # The ceiling learnt before the kill held after the resume: no batch at
    # or above it (nor above one learnt since) was proposed.
    for event in second_run:
        if event["kind"] == "begin":
            assert event["batch_size"] < ceiling
            assert event["batch_size"] < (event["ceiling"] or ceiling)
    assert done["ceiling"] <= ceiling
