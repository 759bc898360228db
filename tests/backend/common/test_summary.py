"""TensorBoard logs through the `tensorboard` package, on every backend.

`keras_batchtune/backend/common/summary.py` writes what Keras's
`keras.callbacks.TensorBoard` and TensorBoard's hparams API write, without
TensorFlow. Real fits of a small model write the logs; TensorBoard's own
`EventAccumulator` reads them back. Where TensorFlow is installed, the
records are compared with those of Keras's callback over the same fit.
"""

import warnings

import keras
import pytest
from conftest import HAS_TENSORFLOW
from conftest import make_mlp
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata
from tensorboard.util import tensor_util

from keras_batchtune.backend.common import summary

BATCH_SIZE = 100  # 600 examples: 6 steps per epoch


def load_run(run_dir):
    """TensorBoard's own loader over one run directory."""
    run = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    run.Reload()
    return run


def scalars(run, tag):
    """[(step, value)] of a scalar tag."""
    return [
        (event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
        for event in run.Tensors(tag)
    ]


def fit(digits, callbacks, epochs=2):
    x, y, x_val, y_val = digits
    model = make_mlp(learning_rate=0.05)
    history = model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=callbacks,
        verbose=0,
    )
    return model, history.history


def test_epoch_scalars_as_keras_writes_them(digits, tmp_path):
    model, history = fit(digits, [summary.TensorBoard(tmp_path)])
    train = load_run(tmp_path / "train")
    validation = load_run(tmp_path / "validation")
    for name in ("loss", "accuracy"):
        assert scalars(train, f"epoch_{name}") == [
            (epoch, pytest.approx(value, rel=1e-6))
            for epoch, value in enumerate(history[name])
        ]
        assert scalars(validation, f"epoch_{name}") == [
            (epoch, pytest.approx(value, rel=1e-6))
            for epoch, value in enumerate(history[f"val_{name}"])
        ]
        # After each epoch's evaluation, at the optimizer's step count.
        assert [
            s
            for s, _ in scalars(validation, f"evaluation_{name}_vs_iterations")
        ] == [6, 12]
    assert scalars(train, "epoch_learning_rate") == [
        (0, pytest.approx(0.05)),
        (1, pytest.approx(0.05)),
    ]
    assert not any(
        tag.startswith("epoch_val_") for tag in train.Tags()["tensors"]
    )
    # The conceptual graph: the model's JSON config, as Keras writes it.
    assert train.PluginTagToContent(summary.GRAPH_PLUGIN_NAME) == {
        "keras": b"1"
    }
    (graph,) = train.Tensors("keras")
    config = tensor_util.make_ndarray(graph.tensor_proto).item()
    assert keras.models.model_from_json(config.decode()).count_params() == (
        model.count_params()
    )


def test_batch_scalars_histograms_and_steps_per_second(digits, tmp_path):
    callback = summary.TensorBoard(
        tmp_path,
        histogram_freq=2,
        write_graph=False,
        write_steps_per_second=True,
        update_freq=4,
    )
    model, _ = fit(digits, [callback], epochs=3)
    train = load_run(tmp_path / "train")
    tags = set(train.Tags()["tensors"])
    assert "keras" not in tags
    # 6 steps per epoch, 18 in all: every 4th global step.
    assert [s for s, _ in scalars(train, "batch_loss")] == [4, 8, 12, 16]
    assert [s for s, _ in scalars(train, "batch_steps_per_second")] == [
        4,
        8,
        12,
        16,
    ]
    per_second = scalars(train, "epoch_steps_per_second")
    assert [s for s, _ in per_second] == [0, 1, 2]
    assert all(value > 0 for _, value in per_second)
    weights = {w.path.replace(":", "_") + "/histogram" for w in model.weights}
    assert weights <= tags
    for tag in weights:  # epochs 0 and 2, each histogram of every weight
        events = train.Tensors(tag)
        assert [e.step for e in events] == [0, 2]
        buckets = tensor_util.make_ndarray(events[0].tensor_proto)
        assert buckets.shape[1] == 3


@pytest.mark.requires_tensorflow
def test_same_records_as_keras_callback(digits, tmp_path):
    """Both callbacks over one fit write the same runs, tags and values.

    Batch-level scalars at every batch: with `update_freq=N > 1`, Keras's
    callback leaves its epoch and evaluation scalars under a
    `tf.summary.record_if` on the running batch count, so it drops those of
    an epoch whose batch count is not a multiple of N; ours writes them.
    """
    options = {"histogram_freq": 1, "update_freq": "batch"}
    fit(
        digits,
        [
            keras.callbacks.TensorBoard(tmp_path / "keras", **options),
            summary.TensorBoard(tmp_path / "ours", **options),
        ],
    )
    for run_name in ("train", "validation"):
        keras_run = load_run(tmp_path / "keras" / run_name)
        ours = load_run(tmp_path / "ours" / run_name)
        keras_tags = set(keras_run.Tags()["tensors"])
        assert set(ours.Tags()["tensors"]) == keras_tags
        for tag in keras_tags:
            if tag.endswith("/histogram") or tag == "keras":
                assert len(ours.Tensors(tag)) == len(keras_run.Tensors(tag))
                continue
            expected = [
                (step, pytest.approx(value, rel=1e-5))
                for step, value in scalars(keras_run, tag)
            ]
            assert scalars(ours, tag) == expected, tag


@pytest.mark.skipif(HAS_TENSORFLOW, reason="TensorFlow is installed here")
def test_keras_callback_needs_tensorflow(digits, tmp_path):
    """Why the replacement: Keras's callback cannot write without it.

    When a Keras release writes without TensorFlow, this fails, and
    `trial_callback` may keep Keras's callback on every backend.
    """
    with pytest.raises(ModuleNotFoundError, match="tensorflow"):
        fit(digits, [keras.callbacks.TensorBoard(str(tmp_path))], epochs=1)


def test_trial_callback_takes_the_keras_callbacks_options(tmp_path):
    keras_callback = keras.callbacks.TensorBoard(
        str(tmp_path),
        histogram_freq=2,
        write_graph=False,
        write_steps_per_second=True,
        update_freq="batch",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replacement = summary.trial_callback(keras_callback)
    assert type(replacement) is summary.TensorBoard
    assert type(replacement).__name__ == "TensorBoard"  # KerasTuner's test
    assert replacement.log_dir == str(tmp_path)
    assert replacement.histogram_freq == 2
    assert replacement.write_graph is False
    assert replacement.write_steps_per_second is True
    assert replacement.update_freq == 1
    assert summary.trial_callback(replacement) is replacement
    with pytest.warns(UserWarning, match="write_images not written"):
        summary.trial_callback(
            keras.callbacks.TensorBoard(str(tmp_path), write_images=True)
        )


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"histogram_freq": -1}, "histogram_freq"),
        ({"histogram_freq": 1.5}, "histogram_freq"),
        ({"update_freq": 0}, "update_freq"),
        ({"update_freq": "step"}, "update_freq"),
        ({"update_freq": True}, "update_freq"),
    ],
)
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}` must be"):
        summary.TensorBoard(**kwargs)


def read_session(run_dir):
    """(hparams, group, status, {metric: value}) of the session there."""
    run = load_run(run_dir)
    content = run.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG]
    )
    end = metadata.parse_session_end_info_plugin_data(
        content[metadata.SESSION_END_INFO_TAG]
    )
    hparams = {
        name: getattr(value, value.WhichOneof("kind"))
        for name, value in start.hparams.items()
    }
    metrics = {
        tag: scalars(run, tag)
        for tag in set(run.Tags()["tensors"]) - set(content)
    }
    return hparams, start.group_name, end.status, metrics, start


@pytest.mark.parametrize("failed", [False, True])
def test_write_session(tmp_path, failed):
    summary.write_session(
        tmp_path,
        {"batch_size": 64, "lr_scaling": "sqrt", "nesterov": True},
        {} if failed else {"val_accuracy": 0.875, "fit_seconds": 2.5},
        group_name="03",
        start_time_secs=1234.5,
        failed=failed,
    )
    hparams, group, status, metrics, start = read_session(tmp_path)
    assert hparams == {"batch_size": 64, "lr_scaling": "sqrt", "nesterov": True}
    assert group == "03"
    assert start.start_time_secs == 1234.5
    if failed:
        assert status == api_pb2.STATUS_FAILURE
        assert metrics == {}
    else:
        assert status == api_pb2.STATUS_SUCCESS
        assert metrics == {
            "val_accuracy": [(0, 0.875)],
            "fit_seconds": [(0, 2.5)],
        }


def test_remove_run(tmp_path):
    run = tmp_path / "0" / "execution0"
    summary.write_session(run / "train", {"units": 8}, {})
    summary.remove_run(run)
    assert not run.exists()
    summary.remove_run(run)  # nothing there: nothing to do
    assert (tmp_path / "0").is_dir()


def test_fit_failing_in_its_first_step_opens_no_writer(digits, tmp_path):
    """An out-of-memory trial leaves no open event file (nor its thread)."""
    x, y, _, _ = digits
    model = make_mlp(max_batch_size=8)  # the allocator's real error above 8
    callback = summary.TensorBoard(tmp_path)
    # TensorFlow "OOM when allocating", JAX "Out of memory allocating",
    # PyTorch "DefaultCPUAllocator: can't allocate memory".
    with pytest.raises(Exception, match="(?i)allocat"):
        model.fit(x, y, batch_size=32, epochs=1, callbacks=[callback])
    # EventFileWriter creates its directory when it opens.
    assert not (tmp_path / "train").exists()
