"""keras_batchtune: batch size as a first-class, LR-coupled hyperparameter."""

from keras_batchtune.bayesian import BatchBayesianOptimization
from keras_batchtune.callbacks import DynamicBatchSize
from keras_batchtune.coupling import ScaledLearningRate
from keras_batchtune.coupling import couple_learning_rate
from keras_batchtune.distribute import patch_for_multi_worker
from keras_batchtune.distribute import resolve_distribution
from keras_batchtune.distribute import resolve_strategy
from keras_batchtune.gradients import gradient_noise_scale
from keras_batchtune.hyperband import BatchHyperband
from keras_batchtune.lr_finder import LearningRateFinderResult
from keras_batchtune.lr_finder import find_learning_rate
from keras_batchtune.memory import BatchSizeSearchResult
from keras_batchtune.memory import Probe
from keras_batchtune.memory import find_max_batch_size
from keras_batchtune.noise import NoiseScale
from keras_batchtune.noise import NoiseScaleTracker
from keras_batchtune.noise import estimate_noise_scale
from keras_batchtune.policies import Decision
from keras_batchtune.policies import GoodputPolicy
from keras_batchtune.policies import NoiseScalePolicy
from keras_batchtune.policies import PlateauPolicy
from keras_batchtune.policies import ResizePolicy
from keras_batchtune.policies import SchedulePolicy
from keras_batchtune.policies import get_policy
from keras_batchtune.project_files import ProjectFileError
from keras_batchtune.report import plot_search
from keras_batchtune.resizable_data import ResizableData
from keras_batchtune.resizable_data import resizable
from keras_batchtune.scaling import LR_SCALING_RULES
from keras_batchtune.scaling import scale_learning_rate
from keras_batchtune.space import batch_size_grid
from keras_batchtune.tensorboard import TensorBoard
from keras_batchtune.tuner import BatchTuner

__version__ = "0.1.0"

__all__ = [
    "BatchBayesianOptimization",
    "BatchHyperband",
    "BatchSizeSearchResult",
    "BatchTuner",
    "Decision",
    "DynamicBatchSize",
    "GoodputPolicy",
    "LearningRateFinderResult",
    "NoiseScale",
    "NoiseScalePolicy",
    "NoiseScaleTracker",
    "PlateauPolicy",
    "Probe",
    "ProjectFileError",
    "ResizableData",
    "ResizePolicy",
    "SchedulePolicy",
    "TensorBoard",
    "estimate_noise_scale",
    "find_learning_rate",
    "find_max_batch_size",
    "get_policy",
    "gradient_noise_scale",
    "patch_for_multi_worker",
    "plot_search",
    "resolve_distribution",
    "resolve_strategy",
    "resizable",
    "LR_SCALING_RULES",
    "ScaledLearningRate",
    "batch_size_grid",
    "couple_learning_rate",
    "scale_learning_rate",
]
