"""Text reports of a search: the table of trials and the best configuration."""

from keras_batchtune import space
from keras_batchtune import trial_fit
from keras_batchtune.oracle import failure_reason

_COLUMNS = (
    ("trial", 5),
    ("batch", 6),
    ("base LR", 9),
    ("effective LR", 12),
    ("objective", 10),
    ("examples/s", 10),
    ("status", 28),
)


def _format(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_row(trial, objective_name=None):
    """Returns one trial's values for the table, in column order.

    Args:
        trial: A `keras_tuner.engine.trial.Trial`.
        objective_name: Unused; kept for symmetry with `trials_table`.

    Returns:
        A tuple of values (None where unknown).
    """
    values = trial.hyperparameters.values
    metrics = trial.metrics

    def metric(name):
        return metrics.get_last_value(name) if metrics.exists(name) else None

    return (
        trial.trial_id,
        values.get(space.BATCH_SIZE),
        values.get("learning_rate"),
        metric(trial_fit.EFFECTIVE_LEARNING_RATE),
        trial.score,
        metric(trial_fit.EXAMPLES_PER_SECOND),
        failure_reason(trial) or trial.status,
    )


def trials_table(oracle):
    """Formats every trial of a search as a text table, in trial order.

    Example:

    ```python
    print(trials_table(tuner.oracle))
    ```

    Args:
        oracle: The tuner's oracle (`tuner.oracle`).

    Returns:
        The table, a multi-line string.
    """
    header = " ".join(name.rjust(width) for name, width in _COLUMNS)
    lines = [header, "-" * len(header)]
    for trial_id in oracle.start_order:
        row = trial_row(oracle.trials[trial_id])
        lines.append(
            " ".join(
                _format(value).rjust(width)
                for value, (_, width) in zip(row, _COLUMNS)
            )
        )
    return "\n".join(lines)


def best_line(oracle):
    """Describes the best trial in one line.

    Args:
        oracle: The tuner's oracle.

    Returns:
        A string naming the best batch size, learning rates and objective.
    """
    best = oracle.get_best_trials(1)
    if not best or best[0].score is None:
        return "No trial completed."
    trial_id, batch, base_lr, effective_lr, score, speed, _ = trial_row(best[0])
    return (
        f"Best: trial {trial_id}, batch_size={_format(batch)}, "
        f"learning_rate={_format(base_lr)} (effective "
        f"{_format(effective_lr)}), {oracle.objective.name}="
        f"{_format(score)}, {_format(speed)} examples/s"
    )
