"""Distribution on PyTorch: one device per process.

Keras 3 has no multi-device training for PyTorch (`tf.distribute` is
TensorFlow's; `keras.distribution` is implemented for JAX): what needs a
strategy refuses with an error that says what works instead. The rest is
`common/distribute.py`'s.
"""

import logging

from keras_batchtune.backend.common import distribute as common
from keras_batchtune.backend.common.distribute import *  # noqa: F401,F403
from keras_batchtune.backend.common.distribute import refusals

logger = logging.getLogger("keras_batchtune")

INSTEAD = (
    "Keras 3 trains a PyTorch model on one device (`keras.distribution` is "
    "implemented for JAX only). To use several devices or hosts, run "
    "KerasTuner's distributed search (KERASTUNER_TUNER_ID, "
    "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT): one trial per process, "
    "on any backend; or set KERAS_BACKEND=jax (`keras.distribution`) or "
    "KERAS_BACKEND=tensorflow (`tf.distribute`)."
)

resolve_strategy, patch_for_multi_worker = refusals(INSTEAD)


def resolve_distribution(tpu=None, verbose=True):
    """None on PyTorch: Keras 3 trains a PyTorch model on one device.

    The reason is logged (logger `"keras_batchtune"`, level INFO) and, with
    `verbose`, printed, so that a program passing the result as
    `distribution_strategy=` runs unchanged on one device.

    Returns:
        None.

    Raises:
        ValueError: if `tpu` is given (a TPU needs JAX or TensorFlow).
    """
    if tpu is not None:
        raise ValueError(
            "`tpu`: Keras 3 trains on TPUs with the JAX or TensorFlow "
            "backend; the configured Keras backend is 'torch'. Set "
            f"KERAS_BACKEND=jax. Received: tpu={tpu!r}"
        )
    message = (
        "keras_batchtune: no distribution on PyTorch: Keras 3 trains a "
        "PyTorch model on one device (`keras.distribution` is implemented "
        "for JAX); the model trains on one device. For several devices or "
        "hosts run KerasTuner's distributed search (one trial per process), "
        "or use KERAS_BACKEND=jax."
    )
    logger.info(message)
    if verbose:
        print(message)
    return None


def check_tuner_distribution(distribution, distribution_strategy):
    """`BatchTuner`'s distribution arguments on PyTorch (none is usable).

    Returns:
        `(None, distribution_strategy)`.

    Raises:
        ValueError: for a `distribution`, or a `keras.distribution`
            object as `distribution_strategy`.
    """
    return common.check_tuner_distribution(
        distribution, distribution_strategy, INSTEAD
    )
