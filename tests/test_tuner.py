import math
import os

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf
from conftest import LearningRateLog
from conftest import make_mlp

import keras_batchtune
from keras_batchtune import BatchTuner
from keras_batchtune import halving


def build_mlp(hp):
    return make_mlp(hp.Float("learning_rate", 0.01, 0.1, sampling="log"))


def search(tuner, digits, **kwargs):
    x, y, x_val, y_val = digits
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("verbose", 0)
    tuner.search(x, y, validation_data=(x_val, y_val), **kwargs)


def trials(tuner):
    """The trials in the order they started (ids are not zero-padded alike)."""
    return [tuner.oracle.trials[i] for i in tuner.oracle.start_order]


def test_batch_size_is_searched_and_learning_rate_coupled(
    tmp_path, digits, lr_log
):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=4,
        seed=7,
        min_batch_size=16,
        max_batch_size=256,
        directory=tmp_path,
    )
    batch_hp = tuner.oracle.hyperparameters._hps["batch_size"][0]
    assert isinstance(batch_hp, keras_tuner.engine.hyperparameters.Int)
    assert (batch_hp.min_value, batch_hp.max_value) == (16, 256)
    assert (batch_hp.step, batch_hp.sampling) == (2, "log")

    search(tuner, digits, callbacks=[lr_log])
    done = trials(tuner)
    assert len(done) == 4 and all(t.status == "COMPLETED" for t in done)
    assert len({t.hyperparameters["batch_size"] for t in done}) > 1
    for trial, logged in zip(done, LearningRateLog.log):
        batch_size = trial.hyperparameters["batch_size"]
        assert batch_size in (16, 32, 64, 128, 256)
        expected = trial.hyperparameters["learning_rate"] * batch_size / 32
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)
        assert logged["steps"] == int(np.ceil(600 / batch_size))
        metrics = trial.metrics
        assert metrics.get_last_value("effective_learning_rate") == (
            pytest.approx(expected, rel=1e-6)
        )
        assert metrics.get_last_value("examples_per_second") > 0
        assert metrics.get_last_value("fit_seconds") > 0


@pytest.mark.parametrize(
    "rule, multiplier",
    [
        ("sqrt", lambda r: r**0.5),
        ("none", lambda r: 1.0),
        (lambda r: r**0.75, lambda r: r**0.75),
    ],
)
def test_scaling_rules(tmp_path, digits, lr_log, rule, multiplier):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=3,
        lr_scaling=rule,
        base_batch_size=64,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        ratio = trial.hyperparameters["batch_size"] / 64
        expected = trial.hyperparameters["learning_rate"] * multiplier(ratio)
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)


def test_search_batch_size_becomes_the_reference(
    tmp_path, digits, lr_log, capsys
):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=5,
        directory=tmp_path,
    )
    search(tuner, digits, batch_size=64, verbose=1, callbacks=[lr_log])
    notice = [
        line
        for line in capsys.readouterr().out.splitlines()
        if "search(batch_size=64)" in line
    ]
    assert len(notice) == 1
    assert "still searched" in notice[0]
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        ratio = trial.hyperparameters["batch_size"] / 64
        expected = trial.hyperparameters["learning_rate"] * ratio
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)


def test_base_batch_size_wins_over_search_batch_size(tmp_path, digits, lr_log):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=1,
        seed=5,
        base_batch_size=128,
        directory=tmp_path,
    )
    search(tuner, digits, batch_size=64, callbacks=[lr_log])
    trial = trials(tuner)[0]
    expected = (
        trial.hyperparameters["learning_rate"]
        * trial.hyperparameters["batch_size"]
        / 128
    )
    assert LearningRateLog.log[0]["begin"] == pytest.approx(expected, rel=1e-6)


def test_warmup_ramps_to_the_scaled_rate(tmp_path, digits, lr_log):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("batch_size", 128)
    tuner = BatchTuner(
        lambda hp: make_mlp(0.05),
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=hp,
        warmup_epochs=1,
        directory=tmp_path,
    )
    search(tuner, digits, epochs=2, callbacks=[lr_log])
    per_step = LearningRateLog.log[0]["per_step"]
    steps_per_epoch = 5  # ceil(600 / 128)
    assert len(per_step) == 2 * steps_per_epoch
    assert per_step[0] == pytest.approx(0.05)
    assert per_step[1] == pytest.approx(0.05 * (1 + 3 * 1 / 5))
    assert np.all(np.diff(per_step[: steps_per_epoch + 1]) > 0)
    assert per_step[steps_per_epoch:] == pytest.approx([0.2] * 5)
    effective = trials(tuner)[0].metrics.get_last_value(
        "effective_learning_rate"
    )
    assert effective == pytest.approx(0.2)


def test_learning_rate_schedule_is_scaled(tmp_path, digits, lr_log):
    def build(hp):
        schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 5, 0.5)
        return make_mlp(optimizer=keras.optimizers.SGD(schedule))

    hp = keras_tuner.HyperParameters()
    hp.Fixed("batch_size", 64)
    tuner = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=hp,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    per_step = LearningRateLog.log[0]["per_step"]
    assert per_step[0] == pytest.approx(0.2)
    assert per_step[5] == pytest.approx(0.1)  # decayed by half at step 5


def test_best_models_carry_the_effective_learning_rate(tmp_path, digits):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=3,
        seed=11,
        directory=tmp_path,
    )
    search(tuner, digits)
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_model = tuner.get_best_models(1)[0]
    effective = best_trial.metrics.get_last_value("effective_learning_rate")
    assert float(best_model.optimizer.learning_rate) == pytest.approx(
        effective, rel=1e-6
    )
    hp = best_trial.hyperparameters
    assert effective == pytest.approx(
        hp["learning_rate"] * hp["batch_size"] / 32, rel=1e-6
    )
    x, y, x_val, y_val = digits
    score = best_model.evaluate(x_val, y_val, verbose=0)[1]
    assert score == pytest.approx(best_trial.score)


def test_results_summary_shows_the_records(tmp_path, digits, capsys):
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=2,
        directory=tmp_path,
    )
    search(tuner, digits)
    capsys.readouterr()
    tuner.results_summary()
    out = capsys.readouterr().out
    for name in (
        "batch_size:",
        "learning_rate:",
        "effective_learning_rate:",
        "examples_per_second:",
        "fit_seconds:",
        "Score:",
    ):
        assert out.count(name) >= 2, name


def test_user_batch_size_in_hyperparameters_is_used(tmp_path, digits, lr_log):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [20, 40])
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=3,
        seed=1,
        hyperparameters=hp,
        directory=tmp_path,
    )
    batch_hps = tuner.oracle.hyperparameters._hps["batch_size"]
    assert len(batch_hps) == 1
    assert isinstance(batch_hps[0], keras_tuner.engine.hyperparameters.Choice)
    search(tuner, digits, callbacks=[lr_log])
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert trial.hyperparameters["batch_size"] in (20, 40)
        assert logged["steps"] == int(
            np.ceil(600 / trial.hyperparameters["batch_size"])
        )


def test_user_batch_size_in_build_is_used(tmp_path, digits, lr_log):
    def build(hp):
        hp.Choice("batch_size", [24, 48])
        return build_mlp(hp)

    tuner = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=3,
        seed=1,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert trial.hyperparameters["batch_size"] in (24, 48)
        assert logged["steps"] == int(
            np.ceil(600 / trial.hyperparameters["batch_size"])
        )


class FitRegistersBatchSize(keras_tuner.HyperModel):
    def build(self, hp):
        return build_mlp(hp)

    def fit(self, hp, model, *args, **kwargs):
        batch_size = hp.Choice("batch_size", [20, 40, 80])
        return model.fit(*args, batch_size=batch_size, **kwargs)


def test_user_batch_size_in_hypermodel_fit_is_used(tmp_path, digits, lr_log):
    tuner = BatchTuner(
        FitRegistersBatchSize(),
        objective="val_accuracy",
        max_trials=4,
        seed=4,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    batch_hps = tuner.oracle.hyperparameters._hps["batch_size"]
    assert len(batch_hps) == 1
    assert batch_hps[0].values == [20, 40, 80]
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        batch_size = trial.hyperparameters["batch_size"]
        assert batch_size in (20, 40, 80)
        # Coupled to the batch the user's fit chose.
        expected = trial.hyperparameters["learning_rate"] * batch_size / 32
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)


class FitPassesKwargs(keras_tuner.HyperModel):
    def build(self, hp):
        return build_mlp(hp)

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, shuffle=hp.Boolean("shuffle"), **kwargs)


def test_hypermodel_with_own_fit_gets_the_batch_size(tmp_path, digits, lr_log):
    tuner = BatchTuner(
        FitPassesKwargs(),
        objective="val_accuracy",
        max_trials=4,
        seed=9,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    done = trials(tuner)
    # The first trial shows the user's fit leaves the batch to the tuner; it
    # runs at the reference batch, and the batch size is searched after it.
    assert done[0].hyperparameters["batch_size"] == 32
    assert LearningRateLog.log[0]["steps"] == int(np.ceil(600 / 32))
    assert "batch_size" in tuner.oracle.get_space()
    assert "shuffle" in tuner.oracle.get_space()
    for trial, logged in zip(done, LearningRateLog.log):
        batch_size = trial.hyperparameters["batch_size"]
        assert logged["steps"] == int(np.ceil(600 / batch_size))


def test_tune_new_entries_false_trains_at_the_reference(
    tmp_path, digits, lr_log
):
    hp = keras_tuner.HyperParameters()
    hp.Float("learning_rate", 0.01, 0.1, sampling="log")
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=1,
        hyperparameters=hp,
        tune_new_entries=False,
        directory=tmp_path,
    )
    assert [p.name for p in tuner.oracle.hyperparameters.space] == [
        "learning_rate"
    ]
    search(tuner, digits, callbacks=[lr_log])
    assert [p.name for p in tuner.oracle.hyperparameters.space] == [
        "learning_rate"
    ]
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert logged["steps"] == int(np.ceil(600 / 32))
        assert logged["begin"] == pytest.approx(
            trial.hyperparameters["learning_rate"]
        )


def test_tf_data_inputs(tmp_path, digits, lr_log):
    x, y, x_val, y_val = digits
    train = tf.data.Dataset.from_tensor_slices((x, y))
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val))
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        seed=3,
        directory=tmp_path / "unbatched",
    )
    tuner.search(
        train,
        validation_data=validation,
        epochs=1,
        verbose=0,
        callbacks=[lr_log],
    )
    for trial, logged in zip(trials(tuner), LearningRateLog.log):
        assert trial.status == "COMPLETED"
        batch_size = trial.hyperparameters["batch_size"]
        assert logged["steps"] == int(np.ceil(600 / batch_size))

    # A batched dataset is re-batched, with one warning line, and its batch
    # size is the reference batch of the coupling.
    LearningRateLog.log = []
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=1,
        seed=3,
        directory=tmp_path / "batched",
    )
    with pytest.warns(UserWarning, match="already batched \\(batch size 50\\)"):
        tuner.search(
            train.batch(50),
            validation_data=validation.batch(50),
            epochs=1,
            verbose=0,
            callbacks=[lr_log],
        )
    trial = trials(tuner)[0]
    batch_size = trial.hyperparameters["batch_size"]
    assert LearningRateLog.log[0]["steps"] == int(np.ceil(600 / batch_size))
    assert LearningRateLog.log[0]["begin"] == pytest.approx(
        trial.hyperparameters["learning_rate"] * batch_size / 50, rel=1e-6
    )


def test_inputs_with_fixed_batches_are_refused(tmp_path, digits):
    x, y, _, _ = digits

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return x[:10], y[:10]

    tuner = BatchTuner(
        build_mlp, objective="accuracy", max_trials=1, directory=tmp_path
    )
    with pytest.raises(ValueError, match="unbatched `tf.data.Dataset`"):
        tuner.search(Batches(), epochs=1, verbose=0)
    assert tuner.oracle.trials == {}


def test_out_of_memory_trials_set_a_ceiling_and_the_search_goes_on(
    tmp_path, digits
):
    def build(hp):
        return make_mlp(
            hp.Float("learning_rate", 0.01, 0.1, sampling="log"),
            max_batch_size=100,
        )

    def make_tuner(max_trials):
        return BatchTuner(
            build,
            objective="val_accuracy",
            max_trials=max_trials,
            seed=0,
            max_consecutive_failed_trials=1,
            directory=tmp_path,
        )

    tuner = make_tuner(8)
    search(tuner, digits)
    done = trials(tuner)
    assert len(done) == 8
    out_of_memory = [t for t in done if t.status == "FAILED"]
    assert out_of_memory, "no trial reached the injected memory limit"
    for trial in out_of_memory:
        batch_size = trial.hyperparameters["batch_size"]
        assert batch_size > 100
        assert trial.message == f"out of memory at batch {batch_size}"
    ceiling = tuner.oracle.batch_size_ceiling
    assert ceiling == min(
        t.hyperparameters["batch_size"] for t in out_of_memory
    )
    # No trial is proposed at or above a batch size that already failed.
    known_ceiling = None
    for trial in done:
        batch_size = trial.hyperparameters["batch_size"]
        if known_ceiling is not None:
            assert batch_size < known_ceiling
        if trial.status == "FAILED":
            known_ceiling = batch_size
        else:
            assert trial.status == "COMPLETED"

    # The ceiling is saved with the oracle and survives a resumed search.
    resumed = make_tuner(12)
    assert resumed.oracle.batch_size_ceiling == ceiling
    search(resumed, digits)
    new = trials(resumed)[8:]
    assert len(new) == 4
    assert all(t.hyperparameters["batch_size"] < ceiling for t in new)


def test_diverged_trials_are_marked_and_the_search_goes_on(tmp_path, digits):
    hp = keras_tuner.HyperParameters()
    hp.Choice("learning_rate", [1e30, 0.05])

    def build(hp):
        # Logits, so that a huge learning rate gives a real NaN loss (a
        # softmax output with clipped cross-entropy would stay finite).
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        model.compile(
            keras.optimizers.SGD(hp["learning_rate"], momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    tuner = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=6,
        seed=0,
        hyperparameters=hp,
        max_consecutive_failed_trials=1,
        directory=tmp_path,
    )
    search(tuner, digits, epochs=3)
    done = trials(tuner)
    diverged = [t for t in done if t.hyperparameters["learning_rate"] == 1e30]
    healthy = [t for t in done if t.hyperparameters["learning_rate"] == 0.05]
    assert len(diverged) >= 2 and healthy
    for trial in diverged:
        assert trial.status == "FAILED"
        assert trial.message in ("diverged at epoch 1", "diverged at epoch 2")
        assert trial.score is None
    assert all(t.status == "COMPLETED" for t in healthy)


def test_resume_keeps_finished_trials_and_runs_none_twice(tmp_path, digits):
    def make_tuner(max_trials):
        return BatchTuner(
            build_mlp,
            objective="val_accuracy",
            max_trials=max_trials,
            seed=21,
            directory=tmp_path,
            project_name="resume",
        )

    first = make_tuner(2)
    search(first, digits)
    before = {
        t.trial_id: (t.hyperparameters.values, t.score) for t in trials(first)
    }
    resumed = make_tuner(4)
    search(resumed, digits)
    after = {
        t.trial_id: (t.hyperparameters.values, t.score) for t in trials(resumed)
    }
    assert len(after) == 4
    for trial_id, record in before.items():
        assert after[trial_id] == record


def test_killed_search_resumes_without_losing_or_repeating(tmp_path):
    import subprocess
    import sys
    import textwrap
    import time

    script = tmp_path / "search.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
        import os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import numpy as np
        from sklearn.datasets import load_digits
        import keras_batchtune
        from test_tuner import build_mlp
        d = load_digits()
        x, y = (d.data / 16).astype("float32"), d.target
        tuner = keras_batchtune.BatchTuner(
            build_mlp, objective="val_accuracy", max_trials=3, seed=4,
            directory={str(tmp_path)!r}, project_name="killed")
        tuner.search(x[:600], y[:600], validation_data=(x[600:800], y[600:800]),
                     epochs=int(sys.argv[1]), verbose=0)
    """)
    )
    process = subprocess.Popen([sys.executable, str(script), "300"])
    first_trial = tmp_path / "killed" / "trial_0" / "trial.json"
    second_trial = tmp_path / "killed" / "trial_1" / "trial.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if (
                second_trial.exists()
                and '"COMPLETED"' in first_trial.read_text()
            ):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the search did not reach its second trial")
    finally:
        process.kill()
        process.wait()
    finished = first_trial.read_text()

    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=3,
        seed=4,
        directory=tmp_path,
        project_name="killed",
    )
    assert tuner.oracle.trials["0"].status == "COMPLETED"
    x_y = pytest.importorskip("sklearn.datasets").load_digits()
    x, y = (x_y.data / 16).astype("float32"), x_y.target
    tuner.search(
        x[:600],
        y[:600],
        validation_data=(x[600:800], y[600:800]),
        epochs=1,
        verbose=0,
    )
    assert tuner.oracle.start_order == ["0", "1", "2"]
    assert all(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    assert first_trial.read_text() == finished  # not run again
    assert tuner.oracle.end_order.count("0") == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"min_batch_size": 0}, "min_batch_size"),
        ({"min_batch_size": 8.5}, "min_batch_size"),
        ({"max_batch_size": -4}, "max_batch_size"),
        ({"max_batch_size": "64"}, "max_batch_size"),
        ({"min_batch_size": 128, "max_batch_size": 64}, "min_batch_size"),
        ({"base_batch_size": 0}, "base_batch_size"),
        ({"base_batch_size": 1.5}, "base_batch_size"),
        ({"lr_scaling": "quadratic"}, "lr_scaling"),
        ({"lr_scaling": lambda r: 0.0}, "lr_scaling"),
        ({"lr_scaling": lambda r: 1.0 - r}, "lr_scaling"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": "2"}, "warmup_epochs"),
    ],
)
def test_bad_input_is_refused_before_writing(tmp_path, kwargs, name):
    directory = tmp_path / "never"
    with pytest.raises(ValueError, match=f"`{name}`"):
        BatchTuner(
            build_mlp, objective="val_accuracy", directory=directory, **kwargs
        )
    assert not directory.exists()


def test_bad_search_batch_size_is_refused(tmp_path, digits):
    tuner = BatchTuner(
        build_mlp, objective="val_accuracy", max_trials=1, directory=tmp_path
    )
    with pytest.raises(ValueError, match="`batch_size`"):
        search(tuner, digits, batch_size=0)


def test_optimizer_without_settable_learning_rate_stops_the_search(
    tmp_path, digits
):
    def build(hp):
        hp.Float("units", 1, 2)
        return make_mlp(optimizer=keras.optimizers.SGD(lambda: 0.01))

    tuner = BatchTuner(
        build, objective="val_accuracy", max_trials=3, directory=tmp_path
    )
    with pytest.raises(ValueError, match="plain callable"):
        search(tuner, digits)
    assert len(tuner.oracle.trials) == 1


def test_scale_learning_rate_is_public():
    assert keras_batchtune.scale_learning_rate(0.1, 128, 32) == (
        pytest.approx(0.4)
    )


def memory_limited(hp):
    return make_mlp(
        hp.Float("learning_rate", 0.01, 0.1, sampling="log"),
        max_batch_size=100,
    )


def test_accumulate_retries_out_of_memory_trials(tmp_path, digits, lr_log):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [256])
    tuner = BatchTuner(
        memory_limited,
        objective="val_accuracy",
        max_trials=2,
        seed=1,
        hyperparameters=hp,
        accumulate=True,
        directory=tmp_path,
    )
    search(tuner, digits, callbacks=[lr_log])
    first, second = trials(tuner)
    for trial in (first, second):
        assert trial.status == "COMPLETED"
        assert trial.metrics.get_last_value("micro_batch_size") == 64
        assert trial.metrics.get_last_value("accumulation_steps") == 4
        expected = trial.hyperparameters["learning_rate"] * 256 / 32
        assert trial.metrics.get_last_value(
            "effective_learning_rate"
        ) == pytest.approx(expected, rel=1e-6)
    # The first trial learnt the ceiling (256 and 128 did not fit); the
    # second started at micro-batches of 64 directly.
    assert tuner.oracle.batch_size_ceiling == 128
    # Steps per epoch of each attempt: micro-batches of 256 (out of memory),
    # 128 (out of memory), 64; then the second trial at 64 directly.
    steps = [entry["steps"] for entry in LearningRateLog.log]
    assert steps == [3, 5, 10, 10]


def test_probe_memory_caps_the_searched_batch(tmp_path, digits, capsys):
    tuner = BatchTuner(
        memory_limited,
        objective="val_accuracy",
        max_trials=4,
        seed=3,
        probe_memory=True,
        directory=tmp_path,
    )
    search(tuner, digits, verbose=1)
    assert "batches of up to 100 fit" in capsys.readouterr().out
    assert tuner.oracle.batch_size_ceiling == 101
    for trial in trials(tuner):
        assert trial.status == "COMPLETED"
        assert trial.hyperparameters["batch_size"] <= 64


def test_accumulate_splits_nothing_without_a_memory_ceiling(tmp_path, digits):
    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", [2048])  # above max_batch_size, but it fits
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=1,
        hyperparameters=hp,
        accumulate=True,
        directory=tmp_path,
    )
    search(tuner, digits)
    trial = trials(tuner)[0]
    assert trial.metrics.get_last_value("micro_batch_size") == 2048
    assert trial.metrics.get_last_value("accumulation_steps") == 1


def test_dynamic_batch_size_in_every_trial(tmp_path, digits):
    dynamic = keras_batchtune.DynamicBatchSize(
        "plateau",
        monitor="loss",
        patience=0,
        min_delta=10.0,
        min_batch_size=16,
        max_batch_size=256,
    )
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=2,
        min_batch_size=16,
        max_batch_size=32,
        dynamic=dynamic,
        seed=3,
        directory=tmp_path,
    )
    search(tuner, digits, epochs=3)
    for trial in trials(tuner):
        start = trial.hyperparameters["batch_size"]
        history = trial.metrics.get_history("dynamic_batch_size")
        # The first epoch sets the best loss; then the batch doubles.
        assert [entry.value[0] for entry in history] == [
            start,
            start,
            2 * start,
        ]
    # The template itself never trains.
    assert dynamic.batch_size is None


def test_dynamic_must_be_a_callback_covering_the_range(tmp_path):
    with pytest.raises(ValueError, match="`dynamic`"):
        BatchTuner(
            build_mlp,
            objective="val_accuracy",
            dynamic="plateau",
            directory=tmp_path,
        )
    small = keras_batchtune.DynamicBatchSize(
        "plateau", min_batch_size=16, max_batch_size=64
    )
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchTuner(
            build_mlp,
            objective="val_accuracy",
            max_batch_size=128,
            dynamic=small,
            directory=tmp_path,
        )


def test_tolerance_prefers_the_fastest_configuration(tmp_path, digits, capsys):
    hp = keras_tuner.HyperParameters()
    # 600 updates of batch 1 (slow, accurate) vs 2 of batch 512 (fast,
    # poor); seed 1 runs batch 1 first, so it also bears the first fit's
    # one-time costs.
    hp.Choice("batch_size", [1, 512])
    hp.Fixed("learning_rate", 0.01)

    def make_tuner(**kwargs):
        return BatchTuner(
            lambda hp: make_mlp(hp["learning_rate"]),
            objective="val_accuracy",
            max_trials=2,
            seed=1,
            hyperparameters=hp,
            lr_scaling="none",
            directory=tmp_path,
            project_name="cost",
            **kwargs,
        )

    def seconds(trial):
        return trial.metrics.get_last_value("fit_seconds")

    tuner = make_tuner(tolerance=1.0)  # every accuracy is within 1.0
    search(tuner, digits)
    done = trials(tuner)
    fastest = min(done, key=seconds)
    most_accurate = max(done, key=lambda t: t.score)
    assert fastest is not most_accurate, [
        (t.hyperparameters["batch_size"], t.score, seconds(t)) for t in done
    ]
    preferred = tuner.get_best_hyperparameters(2)
    assert preferred[0].values == fastest.hyperparameters.values
    assert preferred[1].values == most_accurate.hyperparameters.values
    x, y, x_val, y_val = digits
    model = tuner.get_best_models()[0]
    score = model.evaluate(x_val, y_val, verbose=0)[1]
    assert score == pytest.approx(fastest.score)
    capsys.readouterr()
    tuner.results_summary()
    out = capsys.readouterr().out
    assert f"Preferred (tolerance 1): trial {fastest.trial_id}" in out
    assert out.index(f"Trial {fastest.trial_id} summary") < out.index(
        f"Trial {most_accurate.trial_id} summary"
    )
    # Reloaded without a tolerance: KerasTuner's ranking, by score alone.
    for tolerance in (None, 0.0):
        again = make_tuner(tolerance=tolerance, overwrite=False)
        best = again.get_best_hyperparameters()[0]
        assert best.values == most_accurate.hyperparameters.values


@pytest.mark.parametrize("tolerance", [-0.01, "0.005", True, float("inf")])
def test_bad_tolerance_is_refused_before_writing(tmp_path, tolerance):
    directory = tmp_path / "never"
    with pytest.raises(ValueError, match="`tolerance` must be None"):
        BatchTuner(
            build_mlp,
            objective="val_accuracy",
            directory=directory,
            tolerance=tolerance,
        )
    assert not directory.exists()


def build_wide_lr_mlp(hp):
    return make_mlp(hp.Float("learning_rate", 1e-4, 1.0, sampling="log"))


def test_lr_band_both_runs_a_range_test_then_fits_the_trials(
    tmp_path, digits, capsys, lr_log
):
    tuner = BatchTuner(
        build_wide_lr_mlp,
        objective="val_accuracy",
        max_trials=7,
        seed=5,
        min_batch_size=16,
        max_batch_size=128,
        lr_band="both",
        directory=tmp_path,
    )
    search(tuner, digits, verbose=1, callbacks=[lr_log])
    out = capsys.readouterr().out
    assert "BatchTuner: range test at batch 32 suggests learning_rate=" in out
    oracle = tuner.oracle
    suggestion = oracle.range_test_learning_rate
    assert 0.01 < suggestion < 1.0  # the good band of this MLP on digits
    done = trials(tuner)
    assert len(done) == 7 and all(t.status == "COMPLETED" for t in done)
    fitted = oracle.fitted_band()
    assert fitted is not None and 0.0 <= fitted.slope <= 1.2
    # Coupling still applies to the sampled (base) learning rate.
    for trial, logged in zip(done, LearningRateLog.log):
        values = trial.hyperparameters.values
        expected = values["learning_rate"] * values["batch_size"] / 32
        assert logged["begin"] == pytest.approx(expected, rel=1e-6)
    # The range-test result is saved: a resumed search does not rerun it.
    again = BatchTuner(
        build_wide_lr_mlp,
        objective="val_accuracy",
        max_trials=7,
        seed=5,
        min_batch_size=16,
        max_batch_size=128,
        lr_band="both",
        directory=tmp_path,
        overwrite=False,
    )
    assert again.oracle.range_test_learning_rate == suggestion
    search(again, digits, verbose=1)
    assert "range test" not in capsys.readouterr().out


def test_lr_band_without_a_learning_rate_hyperparameter_says_so(
    tmp_path, digits, capsys
):
    def build(hp):
        return make_mlp(hp.Float("step", 0.01, 0.1, sampling="log"))

    tuner = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=1,
        lr_band="trials",
        directory=tmp_path,
    )
    search(tuner, digits, verbose=1)
    assert "lr_band='trials' has no effect" in capsys.readouterr().out
    named = BatchTuner(
        build,
        objective="val_accuracy",
        max_trials=1,
        lr_band="trials",
        lr_hyperparameter="step",
        directory=tmp_path,
        project_name="named",
    )
    assert named.oracle.learning_rate_hyperparameter().name == "step"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr_band": "auto"}, "lr_band"),
        ({"lr_band": True}, "lr_band"),
        ({"lr_hyperparameter": ""}, "lr_hyperparameter"),
        ({"lr_hyperparameter": 3}, "lr_hyperparameter"),
    ],
)
def test_bad_lr_band_is_refused_before_writing(tmp_path, kwargs, name):
    directory = tmp_path / "never"
    with pytest.raises(ValueError, match=f"`{name}` must be None"):
        BatchTuner(
            build_mlp, objective="val_accuracy", directory=directory, **kwargs
        )
    assert not directory.exists()


def _configuration(values):
    """A trial's values without the successive-halving ones, as a key."""
    return tuple(
        sorted(
            (name, value)
            for name, value in values.items()
            if not name.startswith("tuner/")
        )
    )


def _replay_successive_halving(tuner_trials, budgets, factor):
    """Checks each trial's rung against the rule applied to those before."""
    ended = []
    for trial in tuner_trials:
        values = trial.hyperparameters.values
        rungs = [{} for _ in budgets]
        for earlier in ended:
            earlier_values = earlier.hyperparameters.values
            score = earlier.score if earlier.status == "COMPLETED" else None
            rungs[earlier_values["tuner/rung"]][
                _configuration(earlier_values)
            ] = score
        expected = halving.promotion(rungs, factor, "max")
        rung = values["tuner/rung"]
        assert values["tuner/epochs"] == budgets[rung]
        if expected is None:
            assert rung == 0
        else:
            key, expected_rung = expected
            assert rung == expected_rung
            assert key == _configuration(values)
        ended.append(trial)


def test_successive_halving_promotes_the_best_with_more_epochs(
    tmp_path, digits, lr_log
):
    def make_tuner(max_trials):
        return BatchTuner(
            build_mlp,
            objective="val_accuracy",
            max_trials=max_trials,
            seed=3,
            min_batch_size=32,
            max_batch_size=256,
            successive_halving={"factor": 2, "min_epochs": 1},
            directory=tmp_path,
            project_name="asha",
        )

    search(make_tuner(6), digits, epochs=4, callbacks=[lr_log])
    # Resumed with more trials: the rungs are read back from the trials.
    tuner = make_tuner(10)
    search(tuner, digits, epochs=4, callbacks=[lr_log])
    started = trials(tuner)
    assert len(started) == 10
    # Budgets 1, 2, 4 epochs; every trial trained for its own budget.
    assert [entry["epochs"] for entry in lr_log.log] == [
        trial.hyperparameters.values["tuner/epochs"] for trial in started
    ]
    rungs = [t.hyperparameters.values["tuner/rung"] for t in started]
    assert max(rungs) == 2 and rungs.count(0) >= 4
    _replay_successive_halving(started, (1, 2, 4), factor=2)
    best = tuner.get_best_hyperparameters()[0]
    assert best.values["tuner/epochs"] >= 2


class TrainingStartLog(keras.callbacks.Callback):
    """Logs, per fit, the weights and optimizer step it starts from and the
    epochs it runs (a class attribute: KerasTuner deep-copies callbacks)."""

    log = []

    def on_train_begin(self, logs=None):
        TrainingStartLog.log.append(
            {
                "weights": self.model.get_weights(),
                "iterations": int(self.model.optimizer.iterations),
                "epochs": [],
            }
        )

    def on_epoch_begin(self, epoch, logs=None):
        TrainingStartLog.log[-1]["epochs"].append(epoch)


@pytest.mark.parametrize("warm_start", [True, False])
def test_successive_halving_promotion_continues_the_lower_trial(
    tmp_path, digits, warm_start
):
    TrainingStartLog.log = []
    tuner = BatchTuner(
        build_mlp,
        objective="val_accuracy",
        max_trials=3,
        seed=5,
        min_batch_size=64,
        max_batch_size=64,
        successive_halving={
            "factor": 2,
            "min_epochs": 1,
            "warm_start": warm_start,
        },
        directory=tmp_path,
    )
    search(tuner, digits, epochs=2, callbacks=[TrainingStartLog()])
    first, second, promoted = trials(tuner)
    values = promoted.hyperparameters.values
    assert (values["tuner/rung"], values["tuner/epochs"]) == (1, 2)
    lower = max((first, second), key=lambda trial: trial.score)
    steps_per_epoch = math.ceil(len(digits[0]) / 64)
    log = TrainingStartLog.log
    # New configurations start from scratch.
    assert log[0]["iterations"] == log[1]["iterations"] == 0
    assert log[0]["epochs"] == log[1]["epochs"] == [0]
    if not warm_start:
        assert "tuner/trial_id" not in values
        assert log[2]["iterations"] == 0 and log[2]["epochs"] == [0, 1]
        return
    assert values["tuner/trial_id"] == lower.trial_id
    assert values["tuner/initial_epoch"] == 1
    # It starts where the lower trial's checkpoint left off (weights and
    # optimizer state) and trains only its second epoch.
    checkpointed = tuner.load_model(lower).get_weights()
    for started, saved in zip(log[2]["weights"], checkpointed):
        np.testing.assert_array_equal(started, saved)
    assert log[2]["iterations"] == steps_per_epoch
    assert log[2]["epochs"] == [1]


def test_successive_halving_is_checked(tmp_path):
    with pytest.raises(ValueError, match="successive_halving"):
        BatchTuner(
            build_mlp,
            objective="val_accuracy",
            successive_halving={"factor": 1},
            directory=tmp_path,
        )
    assert not os.listdir(tmp_path)
