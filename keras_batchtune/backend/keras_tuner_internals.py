"""Every private KerasTuner name keras_batchtune relies on, one function each.

`BatchTuner` extends `keras_tuner.Tuner` and its oracle extends
`keras_tuner.oracles.RandomSearchOracle`. KerasTuner keeps no public API for
a few things they need: the oracle's retry queue, seed counter and file
names, the tuner's checkpoint and build-config paths, and its two per-trial
callbacks. Each is reached here, and only here, by a function that says what
it returns. The methods the package overrides are named in
`OVERRIDDEN_TUNER_METHODS` and `OVERRIDDEN_ORACLE_METHODS`, with the
parameters KerasTuner calls them with.
`tests/backend/test_keras_tuner_internals.py` checks every function and
every overridden method against the installed KerasTuner and fails naming
the function and KerasTuner's version when a release moves a name.

Example:

```python
from keras_batchtune.backend import keras_tuner_internals

keras_tuner_internals.retry_queue(oracle)  # trial ids waiting for a retry
```
"""

import keras_tuner

KERAS_TUNER_VERSION = keras_tuner.__version__
"""The installed KerasTuner release."""

OVERRIDDEN_TUNER_METHODS = {
    "_populate_initial_space": ("self",),
    "_build_and_fit_model": ("self", "trial", "args", "kwargs"),
    "_try_build": ("self", "hp"),
    "_configure_tensorboard_dir": ("self", "callbacks", "trial", "execution"),
}
"""Private `keras_tuner.Tuner` methods that `BatchTuner` overrides (and the
`HParamsSessions` mixin), with the parameters KerasTuner calls them with:

- `_populate_initial_space`: adds the tuner's `batch_size` entry to the
  search space before the first trial.
- `_build_and_fit_model`: one execution of a trial (build, then fit); the
  tuner sets the batch size, couples the learning rate and retries with
  accumulated micro-batches there.
- `_try_build`: builds a trial's model; the tuner installs its `fit` there.
- `_configure_tensorboard_dir`: where KerasTuner adds its HParams callback.
"""

OVERRIDDEN_ORACLE_METHODS = {
    "_save_trial": ("self", "trial"),
    "_check_consecutive_failures": ("self",),
    "_random_values": ("self",),
}
"""Private `keras_tuner.Oracle` methods that `BatchSearchOracle` overrides:

- `_save_trial`: writes `trial_*/trial.json` (here, whole: write then
  rename).
- `_check_consecutive_failures`: out-of-memory and diverged trials do not
  count toward `max_consecutive_failed_trials`.
- `_random_values`: new random values (random search, the first points of
  Bayesian optimization, Hyperband's new configurations) keep the batch size
  below the out-of-memory ceiling (`BatchSizeOracleMixin`).
"""

OVERRIDDEN_FAMILY_METHODS = {
    "oracles.BayesianOptimizationOracle._get_hp_bounds": ("self",),
    "Hyperband._build_hypermodel": ("self", "hp"),
}
"""Private methods of KerasTuner's Bayesian and Hyperband classes (their
path in `keras_tuner`) that `keras_batchtune.bayesian` and
`keras_batchtune.hyperband` override, with their parameters:

- `oracles.BayesianOptimizationOracle._get_hp_bounds`: the box, in `[0, 1]`
  per hyperparameter, the Gaussian process's acquisition is maximised over;
  the `batch_size` side is cut below the out-of-memory ceiling.
- `Hyperband._build_hypermodel`: builds a trial's model and loads the
  checkpoint of the trial it continues; the override builds it (see
  `build_hypermodel`) and loads the weights keeping the compiled learning
  rate, which the trial then couples to its batch size.
"""


# The tuner.


def is_worker(tuner):
    """Whether this process is a worker of a distributed search.

    Args:
        tuner: A `keras_tuner.Tuner`.

    Returns:
        True when a chief oracle runs elsewhere (`KERASTUNER_ORACLE_IP` set)
        and this process is not it (KerasTuner's `_is_worker`).
    """
    return tuner._is_worker()


def try_build(tuner, hp):
    """Builds a model for `hp` as a trial does (KerasTuner's `_try_build`).

    Clears the Keras session, builds under the tuner's distribution strategy,
    applies the tuner's `optimizer`/`loss`/`metrics` overrides and checks the
    model size.

    Args:
        tuner: A `keras_tuner.Tuner`.
        hp: A `keras_tuner.HyperParameters`.

    Returns:
        The compiled `keras.Model`.
    """
    return tuner._try_build(hp)


def build_hypermodel(tuner, hp):
    """Builds a trial's model with the tuner's hypermodel, nothing loaded.

    `keras_tuner.Tuner`'s own `_build_hypermodel`, which `Hyperband`'s
    extends by loading the checkpoint of the trial a trial continues.

    Args:
        tuner: A `keras_tuner.Tuner`.
        hp: A `keras_tuner.HyperParameters`.

    Returns:
        The compiled `keras.Model`.
    """
    return keras_tuner.Tuner._build_hypermodel(tuner, hp)


def checkpoint_path(tuner, trial_id):
    """The path of a trial's best-epoch weights file.

    Args:
        tuner: A `keras_tuner.Tuner`.
        trial_id: A trial id (a string).

    Returns:
        `<project>/trial_<id>/checkpoint.weights.h5` (KerasTuner's
        `_get_checkpoint_fname`).
    """
    return tuner._get_checkpoint_fname(trial_id)


def build_config_path(tuner, trial_id):
    """The path of the build config KerasTuner saves after a trial's fit.

    Args:
        tuner: A `keras_tuner.Tuner`.
        trial_id: A trial id (a string).

    Returns:
        `<project>/trial_<id>/build_config.json` (KerasTuner's
        `_get_build_config_fname`).
    """
    return tuner._get_build_config_fname(trial_id)


def tuner_state_path(tuner):
    """The path of the tuner's own state file.

    Args:
        tuner: A `keras_tuner.Tuner`.

    Returns:
        `<project>/<tuner_id>.json` (KerasTuner's `_get_tuner_fname`).
    """
    return tuner._get_tuner_fname()


def tensorboard_dir(tuner, log_dir, trial_id, execution):
    """Where an execution of a trial writes its TensorBoard logs.

    Args:
        tuner: A `keras_tuner.Tuner`.
        log_dir: The `log_dir` of the `TensorBoard` callback given to
            `search`.
        trial_id: A trial id (a string).
        execution: The execution's index (0 to `executions_per_trial - 1`).

    Returns:
        `<log_dir>/<trial_id>/execution<k>` (KerasTuner's
        `_get_tensorboard_dir`).
    """
    return tuner._get_tensorboard_dir(log_dir, trial_id, execution)


# KerasTuner's per-trial callbacks (classes it does not export).


def _tuner_utils():
    from keras_tuner.src.engine import tuner_utils

    return tuner_utils


def is_save_best_epoch(callback):
    """Whether `callback` is KerasTuner's best-epoch checkpoint callback.

    Args:
        callback: A Keras callback.

    Returns:
        True for KerasTuner's `SaveBestEpoch` (which has `objective`,
        `filepath` and `best_value`).
    """
    return isinstance(callback, _tuner_utils().SaveBestEpoch)


def is_tuner_callback(callback):
    """Whether `callback` is KerasTuner's per-trial `TunerCallback`.

    Args:
        callback: A Keras callback.

    Returns:
        True for the callback that forwards `fit`'s hooks to
        `Tuner.on_epoch_begin/end` and `on_batch_begin/end`.
    """
    return isinstance(callback, _tuner_utils().TunerCallback)


def write_best_epoch_checkpoint(save_best_epoch):
    """Writes the model's current weights with `SaveBestEpoch`'s own writer.

    The writer takes care of multi-worker `tf.distribute` strategies (only
    the chief writes the real file).

    Args:
        save_best_epoch: KerasTuner's `SaveBestEpoch`, with its model set.
    """
    save_best_epoch._save_model()


# The oracle.


def retry_queue(oracle):
    """The trials waiting to run again, as KerasTuner's oracle keeps them.

    Args:
        oracle: A `keras_tuner.Oracle`.

    Returns:
        The oracle's own list of trial ids (`_retry_queue`); changing it
        changes the oracle.
    """
    return oracle._retry_queue


def save_trial(oracle, trial):
    """Writes a trial's `trial.json` through the oracle (`_save_trial`).

    Args:
        oracle: A `keras_tuner.Oracle`.
        trial: A `keras_tuner.engine.trial.Trial` of it.
    """
    oracle._save_trial(trial)


def values_hash(oracle, values):
    """The hash KerasTuner's oracle identifies a set of values by.

    Args:
        oracle: A `keras_tuner.Oracle`.
        values: A dict of hyperparameter values.

    Returns:
        A string (`_compute_values_hash`).
    """
    return oracle._compute_values_hash(values)


def is_duplicate(oracle, values):
    """Whether a trial with these values was already tried (`_duplicate`).

    Args:
        oracle: A `keras_tuner.Oracle`.
        values: A dict of hyperparameter values.

    Returns:
        Boolean.
    """
    return oracle._duplicate(values)


def max_collisions(oracle):
    """How many duplicate samples the oracle draws before it stops.

    Args:
        oracle: A `keras_tuner.Oracle`.

    Returns:
        An integer (`_max_collisions`).
    """
    return oracle._max_collisions


def take_seed(oracle):
    """Returns the oracle's next random seed and advances its counter.

    KerasTuner's oracle draws each random value with its own seed
    (`_seed_state`, saved with the oracle), so a resumed search continues
    the same sequence.

    Args:
        oracle: A `keras_tuner.Oracle`.

    Returns:
        An integer seed.
    """
    seed = oracle._seed_state
    oracle._seed_state += 1
    return seed


def oracle_state_path(oracle):
    """The path of `oracle.json`.

    Args:
        oracle: A `keras_tuner.Oracle` with its project directory set.

    Returns:
        A path (`_get_oracle_fname`).
    """
    return oracle._get_oracle_fname()


def trial_dir(oracle, trial_id):
    """A trial's directory, created if missing (`_get_trial_dir`).

    Args:
        oracle: A `keras_tuner.Oracle` with its project directory set.
        trial_id: A trial id (a string).

    Returns:
        `<project>/trial_<id>`.
    """
    return oracle._get_trial_dir(trial_id)


def project_dir(oracle):
    """The oracle's project directory, created if missing (`_project_dir`).

    Args:
        oracle: A `keras_tuner.Oracle` with its project directory set.

    Returns:
        `<directory>/<project_name>`.
    """
    return oracle._project_dir


def set_project_dir(oracle, directory, project_name):
    """Points an oracle at a project directory (`_set_project_dir`).

    Args:
        oracle: A `keras_tuner.Oracle`.
        directory: The tuner's `directory`.
        project_name: The tuner's `project_name`.
    """
    oracle._set_project_dir(directory, project_name)


def set_progress_oracle(oracle, view):
    """Makes the oracle's progress lines read the best trials from `view`.

    KerasTuner's `Display` prints "Best ... So Far" from its `oracle`'s
    `get_best_trials`; `view` can rank differently from `oracle`.

    Args:
        oracle: A `keras_tuner.Oracle`.
        view: An object with `get_best_trials(num_trials)`.
    """
    oracle._display.oracle = view
