"""`BatchTuner` and memory: the out-of-memory ceiling, accumulation, probing.

Batches above 100 run out of memory through `conftest.MemoryLimit`: error
injection, where the layer asks the backend's allocator for an impossible
tensor and the allocator raises its real out-of-memory error (TensorFlow's
`ResourceExhaustedError`, JAX's `RESOURCE_EXHAUSTED`, PyTorch's CPU
allocator `RuntimeError`). A NaN loss is had for real too.
"""

import warnings

import keras
import keras_tuner
import pytest
from conftest import LearningRateLog
from conftest import make_mlp
from search_helpers import build_mlp
from search_helpers import memory_limited
from search_helpers import search
from search_helpers import trials

from keras_batchtune import BatchTuner


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
    # The first trial ran out of memory at micro-batches of 256, then 128,
    # and trained at 64; the second trained at 64 directly.
    (retries,) = first.metrics.get_history("out_of_memory_at_micro_batch_size")
    assert retries.value == [256, 128]
    assert not second.metrics.exists("out_of_memory_at_micro_batch_size")
    # Steps per epoch of the fits that began (on PyTorch, Keras meets the
    # out-of-memory error in its symbolic build, before `on_train_begin`).
    steps = [entry["steps"] for entry in LearningRateLog.log]
    assert [s for s in steps if s not in (3, 5)] == [10, 10]
    # The best model's optimizer accumulates as the trial did, its state
    # loaded.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tuner.get_best_models()[0]
    assert not [w for w in caught if "Skipping variable" in str(w.message)]
    assert model.optimizer.gradient_accumulation_steps == 4
    assert int(model.optimizer.iterations) == 10 // 4  # updates, 1 epoch


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
