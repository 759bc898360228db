"""TensorFlow's `tf.io.gfile`, for remote project files on any backend.

A project directory such as `gs://bucket/runs` is read and written through
`tf.io.gfile`, as KerasTuner does; TensorFlow is imported only when such a
path is used, and its absence is said clearly.
"""

import keras


def gfile(path):
    """Returns `tf.io.gfile`, for a remote `path`.

    Example:

    ```python
    with gfile("gs://bucket/x.json").GFile("gs://bucket/x.json", "w") as f:
        f.write("{}")
    ```

    Args:
        path: The remote path asked for, named in the error.

    Returns:
        The module `tf.io.gfile`.

    Raises:
        ValueError: naming `directory` and `path`, when TensorFlow is not
            installed.
    """
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ValueError(
            f"`directory`: the tuner project file {path} is remote; remote "
            "files (gs://, ...) are read and written through TensorFlow's "
            "`tf.io.gfile`, and TensorFlow is not installed (Keras backend: "
            f"{keras.config.backend()}). Install tensorflow (any Keras "
            "backend can use it for files), or use a local directory."
        ) from error
    return tf.io.gfile
