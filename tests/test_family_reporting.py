"""TensorBoard sessions, the report and the plot of `BatchBayesianOptimization`
and `BatchHyperband` searches, as for `BatchTuner`.

A real search per tuner on the current Keras backend with Keras's own
`keras.callbacks.TensorBoard` (on JAX and PyTorch each trial writes through
the `tensorboard` package instead, as for `BatchTuner`); the event files are
read back with TensorBoard's own loader (`test_tensorboard.read_session`;
the server and the dashboard are tested there, on `BatchTuner`'s sessions,
which these tuners write with the same code).
"""

import keras
import pytest
from test_tensorboard import build_model
from test_tensorboard import read_session

import keras_batchtune
from keras_batchtune import report

TUNERS = {
    "bayesian": lambda **kwargs: keras_batchtune.BatchBayesianOptimization(
        max_trials=3, num_initial_points=2, **kwargs
    ),
    "hyperband": lambda **kwargs: keras_batchtune.BatchHyperband(
        max_epochs=2, factor=2, **kwargs
    ),
}


@pytest.mark.parametrize("name", sorted(TUNERS))
def test_sessions_report_and_plot(digits, tmp_path, name):
    x, y, x_val, y_val = digits
    logdir = tmp_path / "logs"
    tuner = TUNERS[name](
        hypermodel=build_model,
        objective="val_accuracy",
        seed=1,
        min_batch_size=16,
        max_batch_size=128,
        directory=tmp_path / "project",
    )
    tuner.search(
        x,
        y,
        epochs=2,
        validation_data=(x_val, y_val),
        callbacks=[keras.callbacks.TensorBoard(str(logdir))],
        verbose=0,
    )
    trials = tuner.oracle.trials
    assert len(trials) == {"bayesian": 3, "hyperband": 5}[name]

    # One HParams session per trial, with the searched batch size and the
    # coupled learning rate.
    for trial in trials.values():
        hparams, status, metric_tags, group = read_session(
            logdir / trial.trial_id / "execution0"
        )
        assert group == trial.trial_id
        assert status == 1  # STATUS_SUCCESS
        values = trial.hyperparameters.values
        assert hparams["batch_size"] == values["batch_size"]
        assert hparams["lr_scaling"] == "linear"
        assert hparams["effective_learning_rate"] == pytest.approx(
            values["learning_rate"] * values["batch_size"] / 32
        )
        assert {"val_accuracy", "fit_seconds"} <= metric_tags

    # The report's line and the plot, from the tuner and from its directory.
    best = tuner.oracle.get_best_trials(1)[0]
    assert report.best_line(tuner.oracle).startswith(
        f"Best: trial {best.trial_id}, "
    )
    for source in (tuner, tuner.project_dir):
        path = tmp_path / "plot.png"
        assert keras_batchtune.plot_search(source, path) == path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        path.unlink()
