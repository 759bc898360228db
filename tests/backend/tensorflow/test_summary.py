"""TensorBoard on TensorFlow: `tf.summary` sessions, Keras's own callback.

Sessions written with `tf.summary` here and with the `tensorboard`
package's writer on the other backends read back the same through
TensorBoard's own loader.
"""

import keras
from tensorboard.plugins.hparams import api_pb2

from keras_batchtune.backend.common import summary as common_summary
from keras_batchtune.backend.tensorflow import summary
from tests.backend.common.test_summary import read_session


def test_trial_keeps_keras_callback(tmp_path):
    callback = keras.callbacks.TensorBoard(str(tmp_path), write_images=True)
    assert summary.trial_callback(callback) is callback


def test_session_reads_back_as_on_the_other_backends(tmp_path):
    arguments = (
        {"batch_size": 64, "lr_scaling": "linear", "nesterov": False},
        {"val_loss": 0.25, "examples_per_second": 1500.0},
    )
    options = {"group_name": "7", "start_time_secs": 99.0}
    summary.write_session(tmp_path / "tf", *arguments, **options)
    common_summary.write_session(tmp_path / "package", *arguments, **options)
    tf_session = read_session(tmp_path / "tf")
    package_session = read_session(tmp_path / "package")
    assert tf_session[:4] == package_session[:4]
    assert tf_session[2] == api_pb2.STATUS_SUCCESS
    assert tf_session[3] == {
        "val_loss": [(0, 0.25)],
        "examples_per_second": [(0, 1500.0)],
    }
    assert tf_session[4].start_time_secs == 99.0


def test_remove_run(tmp_path):
    run = tmp_path / "0" / "execution0"
    summary.write_session(run, {"units": 8}, {}, failed=True)
    assert any(run.iterdir())
    summary.remove_run(str(run))
    assert not run.exists()
    summary.remove_run(str(run))
