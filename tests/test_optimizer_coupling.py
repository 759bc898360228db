"""`lr_scaling="auto"` and `couple_weight_decay`: real searches.

Tiny MLPs on 600 digits, one epoch, on each Keras backend. What the
optimizer holds when each trial's `fit` begins is read by a callback.
"""

import math

import keras
import keras_tuner
import pytest
from conftest import make_mlp
from search_helpers import search
from search_helpers import trials
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata

from keras_batchtune import BatchTuner


class OptimizerLog(keras.callbacks.Callback):
    """Logs the optimizer's class, learning rate and weight decay per fit.

    A class attribute, so that it survives KerasTuner's deep copy of the
    search callbacks.
    """

    log = []

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        OptimizerLog.log.append(
            {
                "optimizer": type(optimizer).__name__,
                "learning_rate": float(
                    keras.ops.convert_to_numpy(optimizer.learning_rate)
                ),
                "weight_decay": optimizer.weight_decay,
            }
        )


@pytest.fixture
def optimizer_log():
    OptimizerLog.log = []
    return OptimizerLog()


OPTIMIZERS = {
    "sgd_momentum": lambda lr, wd: keras.optimizers.SGD(
        lr, momentum=0.9, nesterov=True, weight_decay=wd
    ),
    "adam": lambda lr, wd: keras.optimizers.Adam(lr, weight_decay=wd),
    "adamw": lambda lr, wd: keras.optimizers.AdamW(
        lr, weight_decay=0.004 if wd is None else wd
    ),
}


def hypermodel(name, weight_decay=None):
    def build(hp):
        lr = hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")
        return make_mlp(optimizer=OPTIMIZERS[name](lr, weight_decay))

    return build


def make_tuner(directory, build, **kwargs):
    options = {
        "objective": "val_accuracy",
        "max_trials": 3,
        "seed": 4,
        "min_batch_size": 16,
        "max_batch_size": 256,
        "base_batch_size": 32,
        "directory": directory,
        **kwargs,
    }
    return BatchTuner(build, **options)


@pytest.mark.parametrize(
    "name, rule, exponent",
    [
        ("sgd_momentum", "linear", 1.0),
        ("adam", "sqrt", 0.5),
        ("adamw", "sqrt", 0.5),
    ],
)
def test_auto_picks_the_rule_of_the_optimizer(
    tmp_path, digits, optimizer_log, capsys, name, rule, exponent
):
    tuner = make_tuner(tmp_path, hypermodel(name), lr_scaling="auto")
    assert tuner.learning_rate_multiplier(128) == pytest.approx(4**exponent)
    search(tuner, digits, callbacks=[optimizer_log])
    done = trials(tuner)
    assert len({t.hyperparameters["batch_size"] for t in done}) > 1
    for trial, logged in zip(done, OptimizerLog.log):
        ratio = trial.hyperparameters["batch_size"] / 32
        expected = trial.hyperparameters["learning_rate"] * ratio**exponent
        assert logged["learning_rate"] == pytest.approx(expected, rel=1e-6)
        metrics = trial.metrics
        assert metrics.get_last_value("lr_scaling_exponent") == exponent
        assert (
            metrics.get_last_value("optimizer_lr_scaling_exponent") == exponent
        )
        assert metrics.get_last_value(
            "effective_learning_rate"
        ) == pytest.approx(expected, rel=1e-6)
        assert not metrics.exists("effective_weight_decay")
    tuner.results_summary()
    out = capsys.readouterr().out
    assert out.count(f"lr_scaling_rule: {rule} (auto)") == len(done)
    assert "does not fit the optimizer" not in out


@pytest.mark.parametrize(
    "name, lr_scaling, lr_exponent",
    [
        ("adamw", "auto", 0.5),
        ("adamw", "linear", 1.0),
        ("sgd_momentum", "auto", 1.0),
        ("sgd_momentum", "none", 0.0),
    ],
)
def test_weight_decay_keeps_the_adamw_timescale(
    tmp_path, digits, optimizer_log, name, lr_scaling, lr_exponent
):
    base_weight_decay = 0.01
    tuner = make_tuner(
        tmp_path,
        hypermodel(name, weight_decay=base_weight_decay),
        lr_scaling=lr_scaling,
        couple_weight_decay=True,
    )
    search(tuner, digits, callbacks=[optimizer_log])
    done = trials(tuner)
    timescales = []
    for trial, logged in zip(done, OptimizerLog.log):
        batch_size = trial.hyperparameters["batch_size"]
        ratio = batch_size / 32
        lr = trial.hyperparameters["learning_rate"] * ratio**lr_exponent
        weight_decay = base_weight_decay * ratio / ratio**lr_exponent
        assert logged["learning_rate"] == pytest.approx(lr, rel=1e-6)
        assert logged["weight_decay"] == pytest.approx(weight_decay)
        assert trial.metrics.get_last_value(
            "effective_weight_decay"
        ) == pytest.approx(weight_decay)
        base_lr = trial.hyperparameters["learning_rate"]
        # tau = B / (lr * wd * N), relative to the trial's base at batch 32.
        timescales.append(
            (batch_size / (lr * logged["weight_decay"]))
            / (32 / (base_lr * base_weight_decay))
        )
    assert len({t.hyperparameters["batch_size"] for t in done}) > 1
    assert timescales == pytest.approx([1.0] * len(done))


def test_loaded_models_carry_the_coupled_weight_decay(tmp_path, digits):
    base_weight_decay = 0.01
    tuner = make_tuner(
        tmp_path,
        hypermodel("adamw", weight_decay=base_weight_decay),
        lr_scaling="auto",
        couple_weight_decay=True,
    )
    search(tuner, digits)
    done = trials(tuner)
    decays = []
    for trial in done:
        optimizer = tuner.load_model(trial).optimizer
        recorded = trial.metrics.get_last_value("effective_weight_decay")
        ratio = trial.hyperparameters["batch_size"] / 32
        assert recorded == pytest.approx(base_weight_decay * ratio**0.5)
        assert optimizer.weight_decay == pytest.approx(recorded)
        decays.append(optimizer.weight_decay)
    # Trials at other batches than the reference: decays other than the base.
    assert any(d != pytest.approx(base_weight_decay) for d in decays)
    best = tuner.get_best_models(1)[0].optimizer
    best_trial = tuner.oracle.get_best_trials(1)[0]
    assert best.weight_decay == pytest.approx(
        best_trial.metrics.get_last_value("effective_weight_decay")
    )


def read_hparams(run_dir):
    run = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    run.Reload()
    content = run.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]
    )
    return {
        name: getattr(value, value.WhichOneof("kind"))
        for name, value in start.hparams.items()
    }


def test_rule_and_weight_decay_are_in_tensorboard(tmp_path, digits):
    tuner = make_tuner(
        tmp_path / "project",
        hypermodel("adamw", weight_decay=0.004),
        max_trials=2,
        lr_scaling="auto",
        couple_weight_decay=True,
    )
    logdir = tmp_path / "logs"
    search(
        tuner,
        digits,
        callbacks=[keras.callbacks.TensorBoard(str(logdir))],
    )
    for trial in trials(tuner):
        hparams = read_hparams(logdir / trial.trial_id / "execution0")
        ratio = trial.hyperparameters["batch_size"] / 32
        assert hparams["lr_scaling"] == "auto"
        assert hparams["lr_scaling_rule"] == "sqrt"
        assert hparams["effective_weight_decay"] == pytest.approx(
            0.004 * math.sqrt(ratio)
        )
        assert hparams["effective_learning_rate"] == pytest.approx(
            trial.hyperparameters["learning_rate"] * math.sqrt(ratio)
        )


def test_results_summary_notes_a_rule_that_does_not_fit(
    tmp_path, digits, capsys
):
    tuner = make_tuner(
        tmp_path, hypermodel("adam"), max_trials=2, lr_scaling="linear"
    )
    search(tuner, digits)
    done = trials(tuner)
    for trial in done:  # the user's rule is used as given
        ratio = trial.hyperparameters["batch_size"] / 32
        assert trial.metrics.get_last_value(
            "effective_learning_rate"
        ) == pytest.approx(trial.hyperparameters["learning_rate"] * ratio)
    tuner.results_summary()
    out = capsys.readouterr().out
    ids = ", ".join(t.trial_id for t in done)
    assert (
        f"Note: trials {ids} scaled the learning rate with "
        "lr_scaling='linear', which does not fit the optimizer: Adam-like"
    ) in out
    assert "usually want 'sqrt' (Malladi et al. 2022" in out


class NotInTable(keras.optimizers.Optimizer):
    """An optimizer "auto" has no rule for."""

    def update_step(self, gradient, variable, learning_rate):
        variable.assign(variable - learning_rate * gradient)


@pytest.mark.parametrize(
    "optimizer, kwargs, message",
    [
        (
            lambda: keras.optimizers.Adam(1e-3),
            {"couple_weight_decay": True},
            "`couple_weight_decay=True`.*Set `weight_decay` on the optimizer",
        ),
        (
            lambda: keras.optimizers.SGD(0.1, weight_decay=0.0),
            {"couple_weight_decay": True},
            "`couple_weight_decay=True`",
        ),
        (
            lambda: keras.optimizers.AdamW(1e-3),
            {"couple_weight_decay": "yes"},
            "`couple_weight_decay` must be a boolean",
        ),
        (
            lambda: NotInTable(0.1),
            {"lr_scaling": "auto"},
            "`lr_scaling='auto'` has no rule for the optimizer NotInTable",
        ),
        (
            lambda: keras.optimizers.SGD(0.1),
            {"lr_scaling": "automatic"},
            "`lr_scaling` must be one of 'auto', 'linear'",
        ),
    ],
)
def test_bad_input_is_refused_before_writing(
    tmp_path, optimizer, kwargs, message
):
    directory = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        make_tuner(
            directory,
            lambda hp: make_mlp(optimizer=optimizer()),
            **kwargs,
        )
    assert not directory.exists()


def test_tuner_optimizer_argument_is_checked_before_writing(tmp_path):
    directory = tmp_path / "never"
    with pytest.raises(ValueError, match="`couple_weight_decay=True`"):
        make_tuner(
            directory,
            hypermodel("adamw", weight_decay=0.01),
            optimizer="adam",  # KerasTuner's: compiled into every model
            couple_weight_decay=True,
        )
    assert not directory.exists()


class CompilesInFit(keras_tuner.HyperModel):
    """Compiles in `fit`: the optimizer is first seen by the trial."""

    def build(self, hp):
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    def fit(self, hp, model, *args, **kwargs):
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model.fit(*args, **kwargs)


def test_optimizer_seen_only_at_the_trial_stops_the_search(tmp_path, digits):
    tuner = make_tuner(tmp_path, CompilesInFit(), couple_weight_decay=True)
    with pytest.raises(ValueError, match="`couple_weight_decay=True`"):
        search(tuner, digits)
