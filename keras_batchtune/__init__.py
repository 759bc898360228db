"""keras_batchtune: batch size as a first-class, LR-coupled hyperparameter."""

from keras_batchtune.coupling import ScaledLearningRate
from keras_batchtune.coupling import couple_learning_rate
from keras_batchtune.memory import BatchSizeSearchResult
from keras_batchtune.memory import Probe
from keras_batchtune.memory import find_max_batch_size
from keras_batchtune.scaling import LR_SCALING_RULES
from keras_batchtune.scaling import scale_learning_rate
from keras_batchtune.space import batch_size_grid
from keras_batchtune.tuner import BatchTuner

__version__ = "0.1.0"

__all__ = [
    "BatchSizeSearchResult",
    "BatchTuner",
    "Probe",
    "find_max_batch_size",
    "LR_SCALING_RULES",
    "ScaledLearningRate",
    "batch_size_grid",
    "couple_learning_rate",
    "scale_learning_rate",
]
