"""TensorBoard logs on PyTorch: the `tensorboard` package's writer.

`keras.callbacks.TensorBoard` needs TensorFlow's summary API; see
`common/summary.py`.
"""

from keras_batchtune.backend.common.summary import *  # noqa: F401,F403
