"""TensorBoard: HParams sessions and per-epoch scalars, read back for real.

A small search writes its logs; a real `tensorboard` server serves them and
its HTTP data API is read, and headless Chromium (where installed) opens the
HParams dashboard. Event files are also read with TensorBoard's own event
loader where a server is not needed.

Every test runs on every backend: the search passes
`keras.callbacks.TensorBoard` as a program written for TensorFlow does. On
JAX and PyTorch each trial writes through the `tensorboard` package's
event writer instead (Keras's callback needs TensorFlow's summary API), and
the server runs without TensorFlow where it is absent ("TensorFlow
installation not found - running with reduced feature set").
"""

import base64
import fcntl
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import keras
import keras_tuner
import pytest
from conftest import free_port
from conftest import make_mlp
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata
from tensorboard.util import tensor_util

import keras_batchtune
from keras_batchtune import tensorboard as batchtune_tensorboard
from keras_batchtune import trial_fit

TRIALS = 3
EPOCHS = 2
ALL_STATUSES = [
    "STATUS_UNKNOWN",
    "STATUS_SUCCESS",
    "STATUS_FAILURE",
    "STATUS_RUNNING",
]


def build_model(hp):
    return make_mlp(
        learning_rate=hp.Float("learning_rate", 0.01, 0.1, sampling="log"),
        units=hp.Choice("units", [16, 32]),
    )


def search(
    digits, directory, logdir, hypermodel=build_model, epochs=EPOCHS, **kwargs
):
    """Runs a BatchTuner search with a TensorBoard callback on `logdir`."""
    x_train, y_train, x_val, y_val = digits
    options = {
        "max_trials": TRIALS,
        "seed": 1,
        "min_batch_size": 16,
        "max_batch_size": 128,
        **kwargs,
    }
    tuner = keras_batchtune.BatchTuner(
        hypermodel,
        objective="val_accuracy",
        directory=directory,
        overwrite=True,
        **options,
    )
    tuner.search(
        x_train,
        y_train,
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=[keras.callbacks.TensorBoard(str(logdir))],
        verbose=0,
    )
    return tuner


def load_run(run_dir):
    """TensorBoard's own loader over one run directory."""
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return accumulator


def read_session(run_dir):
    """(hparams, status, metric tags, group) of the session in `run_dir`."""
    run = load_run(run_dir)
    content = run.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]
    )
    end = metadata.parse_session_end_info_plugin_data(
        content[metadata.SESSION_END_INFO_TAG]
    )
    hparams = {}
    for name, value in start.hparams.items():
        hparams[name] = getattr(value, value.WhichOneof("kind"))
    metric_tags = set(run.Tags()["tensors"]) - set(content)
    return hparams, end.status, metric_tags, start.group_name


def get_json(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def poll(read, ready, timeout=60.0, what="data"):
    """Calls `read()` until `ready(value)`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = read()
        except (urllib.error.URLError, ConnectionError, OSError):
            value = None
        if value is not None and ready(value):
            return value
        time.sleep(0.3)
    pytest.fail(
        f"timed out after {timeout} s waiting for {what}; "
        f"last read: {repr(value)[:2000]}"
    )


@pytest.fixture(scope="module")
def searched(digits, tmp_path_factory):
    """A finished 3-trial search with a TensorBoard callback."""
    root = tmp_path_factory.mktemp("tensorboard_search")
    logdir = root / "logs"
    tuner = search(digits, root / "project", logdir)
    return tuner, logdir


@pytest.fixture(scope="module")
def server(searched):
    """A real `tensorboard` server over the search's logdir, stopped after."""
    _, logdir = searched
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--load_fast=false",
        "--reload_interval",
        "1",
    ]
    log_path = logdir.parent / "tensorboard_server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        poll(
            lambda: get_json(url + "/data/plugins_listing"),
            lambda listing: process.poll() is None and "hparams" in listing,
            what=f"the server (log: {log_path})",
        )
        yield url
    finally:
        process.kill()
        process.wait(timeout=30)


def session_groups(url):
    return get_json(
        url + "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": ALL_STATUSES,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        },
    )["sessionGroups"]


def metric_values(group):
    return {
        (value["name"].get("group", ""), value["name"]["tag"]): value["value"]
        for value in group.get("metricValues", [])
    }


def test_server_hparams_one_session_per_trial(searched, server):
    tuner, _ = searched
    trials = tuner.oracle.trials

    def complete(groups):
        return len(groups) == TRIALS and all(
            ("", "val_accuracy") in metric_values(g) for g in groups
        )

    groups = poll(
        lambda: session_groups(server), complete, what="HParams sessions"
    )
    assert {g["name"] for g in groups} == set(trials)
    for group in groups:
        trial = trials[group["name"]]
        assert [s["name"] for s in group["sessions"]] == [
            f"{trial.trial_id}/execution0"
        ]
        assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
        hparams = group["hparams"]
        assert set(hparams) == {
            "batch_size",
            "effective_learning_rate",
            "learning_rate",
            "lr_scaling",
            "units",
        }
        values = trial.hyperparameters.values
        assert hparams["batch_size"] == values["batch_size"]
        assert hparams["units"] == values["units"]
        assert hparams["learning_rate"] == pytest.approx(
            values["learning_rate"]
        )
        assert hparams["lr_scaling"] == "linear"
        metrics = trial.metrics
        assert hparams["effective_learning_rate"] == pytest.approx(
            metrics.get_last_value("effective_learning_rate")
        )
        # Linear coupling from the reference batch of 32.
        assert hparams["effective_learning_rate"] == pytest.approx(
            values["learning_rate"] * values["batch_size"] / 32
        )
        found = metric_values(group)
        assert found[("", "val_accuracy")] == pytest.approx(trial.score)
        for name in ("examples_per_second", "fit_seconds"):
            assert found[("", name)] == pytest.approx(
                metrics.get_last_value(name), rel=1e-5
            )
        assert found[("train", "epoch_batch_size")] == values["batch_size"]

    experiment = get_json(
        server + "/data/plugin/hparams/experiment", {"experimentName": ""}
    )
    metric_names = {
        (m["name"].get("group", ""), m["name"]["tag"])
        for m in experiment["metricInfos"]
    }
    assert {
        ("", "val_accuracy"),
        ("", "examples_per_second"),
        ("", "fit_seconds"),
    } <= metric_names


def test_server_scalars_per_epoch(searched, server):
    tuner, _ = searched
    trials = tuner.oracle.trials
    expected_runs = {
        f"{trial_id}/execution0{suffix}"
        for trial_id in trials
        for suffix in ("", "/train", "/validation")
    }
    tags = poll(
        lambda: get_json(server + "/data/plugin/scalars/tags"),
        lambda tags: set(tags) == expected_runs,
        what="scalar runs",
    )
    # No duplicate run and no empty one: each run has scalars.
    runs = get_json(server + "/data/runs")
    assert sorted(runs) == sorted(expected_runs)
    assert all(tags[run] for run in runs)
    for trial_id, trial in trials.items():
        run = f"{trial_id}/execution0/train"
        assert {"epoch_batch_size", "epoch_learning_rate"} <= set(tags[run])
        points = {}
        for tag in ("epoch_batch_size", "epoch_learning_rate"):
            points[tag] = get_json(
                server
                + "/data/plugin/scalars/scalars?"
                + urllib.parse.urlencode({"run": run, "tag": tag})
            )
            assert [step for _, step, _ in points[tag]] == list(range(EPOCHS))
        batch_size = trial.hyperparameters.values["batch_size"]
        assert [v for _, _, v in points["epoch_batch_size"]] == [
            batch_size
        ] * EPOCHS
        effective = trial.metrics.get_last_value("effective_learning_rate")
        assert [v for _, _, v in points["epoch_learning_rate"]] == (
            pytest.approx([effective] * EPOCHS, rel=1e-5)
        )


class OwnFitHyperModel(keras_tuner.HyperModel):
    """Registers `batch_size` in `fit`, which KerasTuner's hparams miss."""

    def build(self, hp):
        return build_model(hp)

    def fit(self, hp, model, *args, **kwargs):
        batch_size = hp.Choice("batch_size", [16, 64])
        return model.fit(*args, batch_size=batch_size, **kwargs)


def test_batch_size_registered_in_fit_is_in_every_session(digits, tmp_path):
    logdir = tmp_path / "logs"
    tuner = search(
        digits,
        tmp_path / "project",
        logdir,
        hypermodel=OwnFitHyperModel(),
        max_trials=2,
        epochs=1,
    )
    assert len(tuner.oracle.trials) == 2
    for trial_id, trial in tuner.oracle.trials.items():
        hparams, status, metric_tags, group = read_session(
            logdir / trial_id / "execution0"
        )
        assert group == trial_id
        assert status == api_pb2.STATUS_SUCCESS
        assert hparams["batch_size"] == trial.hyperparameters["batch_size"]
        assert "effective_learning_rate" in hparams
        assert metric_tags == {
            "val_accuracy",
            "examples_per_second",
            "fit_seconds",
        }


def test_each_execution_is_a_session_of_its_trial(digits, tmp_path):
    logdir = tmp_path / "logs"
    tuner = search(
        digits,
        tmp_path / "project",
        logdir,
        max_trials=1,
        epochs=1,
        executions_per_trial=2,
    )
    (trial,) = tuner.oracle.trials.values()
    assert sorted(p.name for p in (logdir / trial.trial_id).iterdir()) == [
        "execution0",
        "execution1",
    ]
    for execution in ("execution0", "execution1"):
        hparams, status, metric_tags, group = read_session(
            logdir / trial.trial_id / execution
        )
        assert group == trial.trial_id
        assert status == api_pb2.STATUS_SUCCESS
        assert hparams["batch_size"] == trial.hyperparameters["batch_size"]
        assert "val_accuracy" in metric_tags


def test_a_trial_run_again_replaces_its_logs(digits, tmp_path):
    logdir = tmp_path / "logs"
    for _ in range(2):  # the same search again, overwrite=True
        tuner = search(
            digits, tmp_path / "project", logdir, max_trials=1, epochs=1
        )
    (trial,) = tuner.oracle.trials.values()
    session = logdir / trial.trial_id / "execution0"
    assert len(list(session.glob("events.out.tfevents*"))) == 1
    assert len(list((session / "train").glob("events.out.tfevents*"))) == 1
    train = load_run(session / "train")
    assert scalar_values(train, "epoch_batch_size") == [
        trial.hyperparameters["batch_size"]
    ]


def test_failed_trial_session_says_failure(digits, tmp_path):
    def out_of_memory(hp):
        hp.Fixed("batch_size", 32)
        return make_mlp(max_batch_size=8)  # a real allocator error above 8

    logdir = tmp_path / "logs"
    tuner = search(
        digits,
        tmp_path / "project",
        logdir,
        hypermodel=out_of_memory,
        max_trials=1,
        epochs=1,
    )
    (trial,) = tuner.oracle.trials.values()
    assert trial.status == "FAILED"
    assert "out of memory at batch 32" in trial.message
    hparams, status, metric_tags, _ = read_session(
        logdir / trial.trial_id / "execution0"
    )
    assert status == api_pb2.STATUS_FAILURE
    assert hparams["batch_size"] == 32
    assert hparams["lr_scaling"] == "linear"
    assert metric_tags == set()


def scalar_values(run, tag):
    return [
        float(tensor_util.make_ndarray(event.tensor_proto))
        for event in run.Tensors(tag)
    ]


def test_dynamic_batch_size_scalars(digits, tmp_path):
    dynamic = keras_batchtune.DynamicBatchSize(
        "plateau",
        monitor="loss",
        patience=0,
        min_delta=10.0,  # never improves enough: the batch doubles
        min_batch_size=16,
        max_batch_size=256,
        measure_noise_scale=True,
    )
    logdir = tmp_path / "logs"
    tuner = search(
        digits,
        tmp_path / "project",
        logdir,
        hypermodel=lambda hp: make_mlp(),
        max_trials=1,
        epochs=3,
        max_batch_size=32,
        dynamic=dynamic,
    )
    (trial,) = tuner.oracle.trials.values()
    start = trial.hyperparameters["batch_size"]
    train = load_run(logdir / trial.trial_id / "execution0" / "train")
    assert scalar_values(train, "epoch_batch_size") == [
        start,
        start,
        2 * start,
    ]
    learning_rates = scalar_values(train, "epoch_learning_rate")
    assert learning_rates[2] == pytest.approx(2 * learning_rates[1])
    noise_scales = scalar_values(train, "epoch_gradient_noise_scale")
    assert len(noise_scales) == 3 and all(n > 0 for n in noise_scales)
    hparams, status, _, _ = read_session(logdir / trial.trial_id / "execution0")
    assert status == api_pb2.STATUS_SUCCESS
    assert hparams["batch_size"] == start


class SetsBatchSize(keras.callbacks.Callback):
    """Stands in for a dynamic batch size callback: it logs its batch."""

    def on_epoch_end(self, epoch, logs=None):
        logs["batch_size"] = 7


TENSORBOARD_CALLBACKS = [
    # Keras's own writes with tf.summary: the TensorFlow backend.
    pytest.param(
        keras.callbacks.TensorBoard,
        id="keras",
        marks=pytest.mark.tensorflow_backend,
    ),
    # Ours writes through the tensorboard package: every backend.
    pytest.param(batchtune_tensorboard.TensorBoard, id="batchtune"),
]


@pytest.mark.parametrize("tensorboard_class", TENSORBOARD_CALLBACKS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_epoch_logs_batch_size_and_learning_rate(
    digits, tmp_path, dynamic, tensorboard_class
):
    x, y, _, _ = digits
    model = make_mlp(learning_rate=0.05)
    trial_fit.TrialFit(batch_size=64, reference_batch_size=32).install(model)
    # The dynamic callback comes after TensorBoard in the list: the trial's
    # fit moves TensorBoard last, so it still records the callback's value.
    callbacks = [tensorboard_class(str(tmp_path))]
    callbacks += [SetsBatchSize()] if dynamic else []
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=callbacks)
    expected = 7 if dynamic else 64
    assert history.history["batch_size"] == [expected] * 2
    assert history.history["learning_rate"] == pytest.approx([0.1] * 2)
    train = load_run(tmp_path / "train")
    assert scalar_values(train, "epoch_batch_size") == [expected] * 2
    assert scalar_values(train, "epoch_learning_rate") == pytest.approx(
        [0.1] * 2
    )


def test_session_hparams_and_metrics():
    hp = keras_tuner.HyperParameters()
    hp.Int("batch_size", 16, 64, step=2, sampling="log")
    hp.Choice("optimizer", ["sgd", "adam"])
    with hp.conditional_scope("optimizer", ["adam"]):
        hp.Float("beta_1", 0.8, 0.99)
    hparams = batchtune_tensorboard.session_hparams(
        hp,
        batch_size=999,
        effective_learning_rate=0.2,
        lr_scaling=lambda r: r**0.5,
    )
    # Inactive entries are left out; the hypermodel's batch size wins.
    assert hparams == {
        "batch_size": 16,
        "optimizer": "sgd",
        "effective_learning_rate": 0.2,
        "lr_scaling": "<lambda>",
    }
    objective = keras_tuner.Objective("val_loss", "min")
    history = keras.callbacks.History()
    history.history = {
        "val_loss": [0.5, 0.2, 0.3],
        "examples_per_second": [100.0] * 3,
        "fit_seconds": [2.0] * 3,
        "batch_size": [16, 32, 64],
    }
    logs = batchtune_tensorboard.best_epoch_logs(history, objective)
    assert logs["batch_size"] == 32
    assert batchtune_tensorboard.session_metrics(logs, objective) == {
        "val_loss": 0.2,
        "examples_per_second": 100.0,
        "fit_seconds": 2.0,
    }
    assert batchtune_tensorboard.best_epoch_logs(0.7, objective) == {
        "val_loss": 0.7
    }


# --- The HParams dashboard in headless Chromium -----------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def chromium():
    """The path of a Chromium that runs, or the test is skipped."""
    found = [path for path in map(shutil.which, BROWSERS) if path]
    if not found:
        pytest.skip(
            "Chromium is not installed (none of "
            f"{', '.join(BROWSERS)} on PATH); `.ci/run` installs "
            "Debian's chromium"
        )
    try:
        check = subprocess.run(
            [found[0], "--headless", "--no-sandbox", "--version"],
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"{found[0]} does not run: {error}")
    if check.returncode != 0:
        # E.g. Ubuntu's chromium-browser, a stub for a snap not installed.
        message = check.stdout.decode(errors="replace").strip()
        message += check.stderr.decode(errors="replace").strip()
        pytest.skip(f"{found[0]} does not run: {message[-300:]}")
    return found[0]


# Collects the text of the page, shadow roots included (TensorBoard's
# dashboards are web components, whose content `--dump-dom` leaves out).
PAGE_TEXT = """
(() => {
  const out = [];
  const walk = (node) => {
    if (node.nodeType === Node.TEXT_NODE) {
      const text = node.textContent.trim();
      if (text) out.push(text);
      return;
    }
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) walk(child);
  };
  walk(document);
  return out;
})()
"""


FD_TRAMPOLINE = (
    "import os, sys; "
    "os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


class DevTools:
    """Headless Chromium driven over the DevTools protocol, through a pipe.

    `--remote-debugging-pipe` reads commands on file descriptor 3 and
    writes replies on 4, as NUL-terminated JSON; no extra package needed.
    """

    def __init__(self, executable, profile_dir, width=1400, height=900):
        to_browser = os.pipe()
        from_browser = os.pipe()
        # Out of the way of 3 and 4, where the browser expects its pipe.
        read_end = fcntl.fcntl(to_browser[0], fcntl.F_DUPFD, 10)
        write_end = fcntl.fcntl(from_browser[1], fcntl.F_DUPFD, 10)
        command = [
            executable,
            "--headless",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-sandbox",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile_dir}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # A tiny Python trampoline puts the pipe on 3 and 4, then becomes
        # the browser (`preexec_fn` is unsafe in a process with threads).
        self.process = subprocess.Popen(
            [sys.executable, "-c", FD_TRAMPOLINE, str(read_end)]
            + [str(write_end)]
            + command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(read_end, write_end),
            start_new_session=True,  # its own group, with its helpers
        )
        for fd in (to_browser[0], from_browser[1], read_end, write_end):
            os.close(fd)
        self._out = to_browser[1]
        self._in = from_browser[0]
        self._buffer = b""
        self._next_id = 0
        self.session_id = None

    def send(self, method, params=None, timeout=30.0, session=True):
        self._next_id += 1
        message = {"id": self._next_id, "method": method}
        message["params"] = params or {}
        if session and self.session_id:
            message["sessionId"] = self.session_id
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _receive(self, deadline):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._in], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url):
        target = self.send("Target.createTarget", {"url": url}, session=False)
        attached = self.send(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self.session_id = attached["sessionId"]

    def evaluate(self, expression):
        """The expression's value, or None while the page cannot say."""
        try:
            result = self.send(
                "Runtime.evaluate",
                {"expression": expression, "returnByValue": True},
            )
        except RuntimeError:  # e.g. no execution context mid-navigation
            return None
        return result["result"].get("value")

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as file:
            file.write(base64.b64decode(data))

    def close(self):
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def _numbers(texts):
    numbers = []
    for text in texts:
        try:
            numbers.append(float(text))
        except ValueError:
            pass
    return numbers


def test_browser_hparams_dashboard_shows_the_trials(
    chromium, searched, server, tmp_path
):
    tuner, _ = searched
    trials = tuner.oracle.trials
    # The server must have the sessions before the page asks for them.
    poll(
        lambda: session_groups(server),
        lambda groups: len(groups) == TRIALS,
        what="HParams sessions",
    )
    expected = {
        trial_id: trial.metrics.get_last_value("effective_learning_rate")
        for trial_id, trial in trials.items()
    }

    def shows_trials(texts):
        numbers = _numbers(texts)
        return "effective_learning_rate" in texts and all(
            any(math.isclose(n, lr, rel_tol=1e-3) for n in numbers)
            for lr in expected.values()
        )

    browser = DevTools(chromium, tmp_path / "profile")
    try:
        browser.open(server + "/#hparams")
        texts = poll(
            lambda: browser.evaluate(PAGE_TEXT),
            shows_trials,
            what="the trial table in the HParams dashboard",
        )
        screenshot = tmp_path / "hparams_dashboard.png"
        browser.screenshot(screenshot)
    finally:
        browser.close()
    assert "batch_size" in texts
    # Each trial's row: its id in the "Trial ID" column, its batch size.
    for trial_id, trial in trials.items():
        assert trial_id in texts
        assert trial.hyperparameters["batch_size"] in _numbers(texts)
    with open(screenshot, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
