"""TensorBoard for a batch-size search: one HParams session per execution.

KerasTuner rewrites the `log_dir` of a `keras.callbacks.TensorBoard` callback
given to `search()` to `<log_dir>/<trial_id>/execution<k>` and adds
TensorBoard's hparams callback, which writes the trial's hyperparameters
before `fit` starts. Before `fit` a batch-size trial does not know yet what
it will record: the effective learning rate, a `batch_size` registered in
`HyperModel.fit`, the throughput. `HParamsSessions` keeps KerasTuner's
layout and writes each execution's session when the execution ends, with
TensorBoard's hparams summary API:

- hparams: every active hyperparameter of the trial under its own name
  (`batch_size` among them), `effective_learning_rate` and `lr_scaling`;
  with `lr_scaling="auto"`, `lr_scaling_rule` (the rule the trial trained
  with, `"linear"` or `"sqrt"`); with `couple_weight_decay=True`,
  `effective_weight_decay`;
- metrics, as scalars at step 0 of the session's own run: the objective
  (its best-epoch value, as the oracle scores it), `examples_per_second`
  and `fit_seconds`;
- the session's status: success, or failure when the trial failed (out of
  memory, diverged, an error), then without metrics.

An execution directory left by an earlier run of the same trial (a resumed
search, a retry, a search started again with `overwrite=True`) is emptied
first, so that each trial shows once.

The per-epoch scalars (`epoch_batch_size`, `epoch_learning_rate`, and
`epoch_gradient_noise_scale` under a dynamic batch size) are written by the
`TensorBoard` callback from the epoch logs, in the `train` run of the
session.

Every backend writes the same logs. On TensorFlow, sessions are written
with `tf.summary` and the user's `keras.callbacks.TensorBoard` writes the
scalars. On JAX and PyTorch, where Keras's callback needs TensorFlow's
summary API, sessions go through the `tensorboard` package's own event
writer, and each trial runs `keras_batchtune.tensorboard.TensorBoard` (the
same scalars, through that writer) in place of the user's callback
(`keras_batchtune/backend/common/summary.py`).
"""

import dataclasses
import numbers
import time
import warnings

import keras

from keras_batchtune import backend
from keras_batchtune import optimizer_rules
from keras_batchtune import space
from keras_batchtune import trial_fit
from keras_batchtune.backend import keras_tuner_internals

EFFECTIVE_LEARNING_RATE = trial_fit.EFFECTIVE_LEARNING_RATE
EFFECTIVE_WEIGHT_DECAY = trial_fit.EFFECTIVE_WEIGHT_DECAY
LR_SCALING = "lr_scaling"
LR_SCALING_RULE = "lr_scaling_rule"
SESSION_METRICS = (trial_fit.EXAMPLES_PER_SECOND, trial_fit.FIT_SECONDS)

TensorBoard = backend.summary.TensorBoard
"""The scalars of `keras.callbacks.TensorBoard` without TensorFlow.

A Keras callback writing `epoch_<name>` scalars (the learning rate among
them) under `<log_dir>/train` and `<log_dir>/validation` with the
`tensorboard` package's event writer; it runs on every backend. See
`keras_batchtune/backend/common/tensorboard_callback.py`.
"""


def is_tensorboard_callback(callback):
    """Tells whether a callback is a `TensorBoard` callback.

    Recognised by class name, as KerasTuner does, so that the callbacks of
    `keras.callbacks` and of `tf.keras.callbacks` both count.

    Args:
        callback: A Keras callback.

    Returns:
        A boolean.
    """
    return type(callback).__name__ == "TensorBoard"


@dataclasses.dataclass
class _Execution:
    """The session directories of one execution, and when it started."""

    logdirs: list
    start_time_secs: float


class HParamsSessions:
    """Tuner mixin: one complete HParams session per trial execution.

    Put it before `keras_tuner.Tuner` in the bases of a tuner. With a
    `keras.callbacks.TensorBoard` callback passed to `search()`, each
    execution of each trial logs under `<log_dir>/<trial_id>/execution<k>`
    (KerasTuner's layout): the Keras callback writes the per-epoch scalars
    to `train/` and `validation/`, and when the execution ends this mixin
    writes, in the directory itself, the session's hparams, its metrics and
    its status (see the module docstring). Sessions of one trial share the
    trial id as their group name. TensorBoard's hparams callback, which
    KerasTuner would add, is not added: it would write the hyperparameters
    a second time, without the ones known only after `fit`.

    Every backend writes these logs (KerasTuner writes them on TensorFlow
    only). On JAX and PyTorch, `keras.callbacks.TensorBoard` cannot write
    without TensorFlow's summary API, so each trial replaces it by
    `keras_batchtune.tensorboard.TensorBoard`, which writes the same
    scalars in the same layout through the `tensorboard` package's event
    writer (the user's `log_dir`, `histogram_freq`, `write_graph`,
    `write_steps_per_second` and `update_freq` are kept; images,
    embeddings and profiling are not written there), and sessions are
    written through that writer too.

    Example:

    ```python
    class MyTuner(HParamsSessions, keras_tuner.Tuner):
        lr_scaling = "linear"

    tuner = MyTuner(oracle, build_model, directory="runs")
    tuner.search(x, y, callbacks=[keras.callbacks.TensorBoard("logs")])
    ```
    """

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        logdirs = []
        for index, callback in enumerate(callbacks):
            if is_tensorboard_callback(callback):
                # Keras's callback where the backend can run it, else ours.
                callback = backend.summary.trial_callback(callback)
                callbacks[index] = callback
                logdir = keras_tuner_internals.tensorboard_dir(
                    self, callback.log_dir, trial.trial_id, execution
                )
                _clear(logdir)
                callback.log_dir = logdir
                logdirs.append(logdir)
        if logdirs:
            executions = getattr(self, "_tensorboard_executions", None)
            if executions is None:
                executions = self._tensorboard_executions = []
            executions.append(_Execution(logdirs, time.time()))

    def run_trial(self, trial, *args, **kwargs):
        self._tensorboard_executions = []
        try:
            results = super().run_trial(trial, *args, **kwargs)
        except Exception:
            for execution in self._tensorboard_executions:
                try:
                    self._write_session(trial, execution, None)
                except Exception as error:  # keep the trial's own error
                    warnings.warn(
                        "Could not write the TensorBoard session of trial "
                        f"{trial.trial_id}: {error}"
                    )
            raise
        finally:
            executions, self._tensorboard_executions = (
                self._tensorboard_executions,
                None,
            )
        per_execution = results if isinstance(results, list) else [results]
        for execution, result in zip(executions, per_execution):
            self._write_session(trial, execution, result)
        return results

    def _write_session(self, trial, execution, result):
        """Writes one execution's session; `result` None means it failed."""
        objective = self.oracle.objective
        row = None if result is None else best_epoch_logs(result, objective)
        lr_scaling = getattr(self, "lr_scaling", None)
        rule = None
        if lr_scaling == optimizer_rules.AUTO:
            rule = optimizer_rules.rule_from_exponent(
                (row or {}).get(trial_fit.LR_SCALING_EXPONENT)
            )
        hparams = session_hparams(
            trial.hyperparameters,
            batch_size=(row or {}).get(trial_fit.BATCH_SIZE_LOG),
            effective_learning_rate=(row or {}).get(EFFECTIVE_LEARNING_RATE),
            lr_scaling=lr_scaling,
            lr_scaling_rule=rule,
            effective_weight_decay=(row or {}).get(EFFECTIVE_WEIGHT_DECAY),
        )
        metrics = {} if row is None else session_metrics(row, objective)
        for logdir in execution.logdirs:
            write_session(
                logdir,
                hparams,
                metrics,
                group_name=trial.trial_id,
                start_time_secs=execution.start_time_secs,
                failed=result is None,
            )


def _clear(logdir):
    """Empties a session directory that an earlier run of the trial left.

    A trial runs again when a killed search resumes, when it is retried, or
    when a search starts again with `overwrite=True` on the same log
    directory; its old events would otherwise double its curves and
    sessions.
    """
    backend.summary.remove_run(logdir)


def lr_scaling_name(lr_scaling):
    """Names a learning-rate scaling rule, for the `lr_scaling` hparam.

    Args:
        lr_scaling: `"linear"`, `"sqrt"`, `"none"` or a callable.

    Returns:
        The rule's name: the string itself, or the callable's `__name__`
        (`"<lambda>"` for a lambda), else its `repr`.
    """
    if isinstance(lr_scaling, str):
        return lr_scaling
    return getattr(lr_scaling, "__name__", None) or repr(lr_scaling)


def session_hparams(
    hyperparameters,
    batch_size=None,
    effective_learning_rate=None,
    lr_scaling=None,
    lr_scaling_rule=None,
    effective_weight_decay=None,
):
    """The hparams of a session: the trial's values and the coupling's.

    Example:

    ```python
    hp = keras_tuner.HyperParameters()
    hp.Fixed("batch_size", 64)
    session_hparams(hp, effective_learning_rate=0.2, lr_scaling="linear")
    # {"batch_size": 64, "effective_learning_rate": 0.2,
    #  "lr_scaling": "linear"}
    ```

    Args:
        hyperparameters: The trial's `keras_tuner.HyperParameters`; its
            active entries are taken under their own names.
        batch_size: The batch size the trial trained at, used when the
            hyperparameters hold no `batch_size`; None to leave it out.
        effective_learning_rate: The learning rate after scaling, or None.
        lr_scaling: The scaling rule (see `lr_scaling_name`), or None.
        lr_scaling_rule: The rule `lr_scaling="auto"` picked for the
            trial's optimizer (`"linear"` or `"sqrt"`), or None.
        effective_weight_decay: The coupled weight decay, or None.

    Returns:
        A dict from names to bool, int, float or str values. A hypermodel's
        own entry of one of these names is kept.
    """
    hparams = {}
    for hp in hyperparameters.space:
        if not hyperparameters.is_active(hp):
            continue
        value = hyperparameters.values.get(hp.name)
        if isinstance(value, (bool, numbers.Real, str)):
            hparams[hp.name] = value
    extra = {
        space.BATCH_SIZE: batch_size,
        EFFECTIVE_LEARNING_RATE: effective_learning_rate,
        LR_SCALING: None if lr_scaling is None else lr_scaling_name(lr_scaling),
        LR_SCALING_RULE: lr_scaling_rule,
        EFFECTIVE_WEIGHT_DECAY: effective_weight_decay,
    }
    for name, value in extra.items():
        if value is not None and name not in hparams:
            hparams[name] = value
    return hparams


def _objective_names(objective):
    objectives = getattr(objective, "objectives", None) or [objective]
    return [o.name for o in objectives]


def best_epoch_logs(result, objective):
    """The logs of the epoch the oracle scores a trial's result by.

    Example:

    ```python
    history = model.fit(x, y, validation_data=(xv, yv), epochs=3)
    best_epoch_logs(history, keras_tuner.Objective("val_loss", "min"))
    # {"loss": ..., "val_loss": ..., ...} of the epoch with the least val_loss
    ```

    Args:
        result: What one execution returned: a `keras.callbacks.History`, a
            dict of metrics, or a number (the objective).
        objective: The oracle's `keras_tuner.Objective`.

    Returns:
        A dict from metric names to values: for a `History`, the epoch
        with the best objective (the last epoch if none has it).
    """
    if isinstance(result, keras.callbacks.History):
        history = result.history
        epochs = max((len(values) for values in history.values()), default=0)
        rows = [
            {k: v[i] for k, v in history.items() if i < len(v)}
            for i in range(epochs)
        ]
        best = None
        for row in rows:
            if not objective.has_value(row):
                continue
            if best is None or objective.better_than(
                objective.get_value(row), objective.get_value(best)
            ):
                best = row
        return best or (rows[-1] if rows else {})
    if isinstance(result, dict):
        return dict(result)
    if isinstance(result, numbers.Real):
        return {_objective_names(objective)[0]: float(result)}
    return {}


def session_metrics(logs, objective):
    """The metrics of a session: the objective, throughput and fit time.

    Args:
        logs: The best epoch's logs (see `best_epoch_logs`), with the trial
            records `examples_per_second` and `fit_seconds`.
        objective: The oracle's `keras_tuner.Objective` (each objective of
            a multi-objective is written under its own name).

    Returns:
        A dict from metric names to floats, for those present in `logs`.
    """
    metrics = {}
    for name in _objective_names(objective) + list(SESSION_METRICS):
        value = logs.get(name)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            metrics[name] = float(value)
    return metrics


def write_session(
    logdir,
    hparams,
    metrics,
    group_name=None,
    start_time_secs=None,
    failed=False,
):
    """Writes one HParams session into a run directory.

    The session start (hyperparameter values, from TensorBoard's hparams
    summary API), one scalar at step 0 per metric, and the session end with
    its status: with `tf.summary` on TensorFlow, with the `tensorboard`
    package's event writer on JAX and PyTorch (no TensorFlow needed).

    Example:

    ```python
    write_session(
        "logs/0/execution0",
        {"batch_size": 64, "effective_learning_rate": 0.2},
        {"val_accuracy": 0.95, "examples_per_second": 12000.0},
        group_name="0",
    )
    ```

    Args:
        logdir: The session's run directory.
        hparams: Dict from names to bool, int, float or str values.
        metrics: Dict from metric names to numbers.
        group_name: The session group (sessions of one trial share it), or
            None for one derived from the hparams.
        start_time_secs: When the session started, in seconds since the
            epoch; None for now.
        failed: Whether the session ended in failure.
    """
    backend.summary.write_session(
        logdir,
        hparams,
        metrics,
        group_name=group_name,
        start_time_secs=start_time_secs,
        failed=failed,
    )
