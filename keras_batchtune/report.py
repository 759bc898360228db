"""Reports of a search: the table of trials, range notices, and the plot."""

import json
import math
import os

import keras_tuner

from keras_batchtune import space
from keras_batchtune import trial_fit
from keras_batchtune.oracle import BatchSearchOracle
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
PLOT_HINT = (
    "Install matplotlib (pip install 'keras-batchtune[demo]') to draw the "
    "report plot."
)


class ProjectError(ValueError):
    """A directory is not a tuner project, or holds no completed trial."""


def _format(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_row(trial):
    """Returns one trial's values for the table, in column order.

    Args:
        trial: A `keras_tuner.engine.trial.Trial`.

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


def _searched_range(oracle, name):
    """The (low, high, is_float) bounds of a hyperparameter, or None."""
    for hp in oracle.hyperparameters.space:
        if hp.name != name:
            continue
        config = hp.get_config()
        if isinstance(config.get("min_value"), float):
            return config["min_value"], config["max_value"], True
        values = space.hyperparameter_values(config)
        if values and len(values) > 1:
            return values[0], values[-1], False
    return None


def range_notices(oracle):
    """Says when the best trial sits at an edge of the searched range.

    The best batch size is at an edge when it equals the smallest or the
    largest searched value; the best (base) learning rate, when it lies in
    the outer 5% (log scale) of a float range or is an end of a choice. The
    effective learning rate is the base one times the scaling rule, so its
    edge follows.

    Example:

    ```python
    for line in range_notices(tuner.oracle):
        print(line)
    ```

    Args:
        oracle: The tuner's oracle.

    Returns:
        A list of one-line notices, each suggesting the wider range.
    """
    best = oracle.get_best_trials(1)
    if not best or best[0].score is None:
        return []
    values = best[0].hyperparameters.values
    notices = []
    for name, widen in ((space.BATCH_SIZE, 4), ("learning_rate", 10)):
        bounds = _searched_range(oracle, name)
        value = values.get(name)
        if bounds is None or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            for v in (value, bounds[0], bounds[1])
        ):
            continue
        low, high, is_float = bounds
        tolerance = (high / low) ** 0.05 if is_float and low > 0 else 1.0
        if value <= low * tolerance:
            edge, suggestion = "lower", f"down to {_format(low / widen)}"
        elif value >= high / tolerance:
            edge, suggestion = "upper", f"up to {_format(high * widen)}"
        else:
            continue
        argument = {
            (space.BATCH_SIZE, "lower"): "min_batch_size",
            (space.BATCH_SIZE, "upper"): "max_batch_size",
        }.get((name, edge), f"the {name} range")
        notices.append(
            f"Note: the best {name}, {_format(value)}, is at the {edge} "
            f"edge of the searched range [{_format(low)}, {_format(high)}]; "
            f"widen it ({argument} {suggestion}) and search again."
        )
    return notices


def _saved_objective(project_dir):
    with open(os.path.join(project_dir, "oracle.json")) as file:
        saved = json.load(file).get("objective")
    if saved:
        return keras_tuner.Objective(saved["name"], saved["direction"])
    return None


def _inferred_objective(oracle):
    """For other tuners' projects: the metric whose best value is the score."""
    for trial in oracle.trials.values():
        if trial.score is None:
            continue
        for name, history in trial.metrics.metrics.items():
            if history.get_best_value() == trial.score:
                return keras_tuner.Objective(name, history.direction)
    return None


def load_project(project_dir):
    """Reads a tuner project directory into an oracle, without the tuner.

    Example:

    ```python
    oracle = load_project("batchtune_runs/digits")
    print(trials_table(oracle))
    ```

    Args:
        project_dir: The tuner's project directory
            (`directory/project_name`).

    Returns:
        A `BatchSearchOracle` holding the project's trials and state.

    Raises:
        ProjectError: if `project_dir` is not a tuner project or holds no
            completed trial.
    """
    project_dir = os.path.normpath(str(project_dir))
    if not os.path.isfile(os.path.join(project_dir, "oracle.json")):
        raise ProjectError(
            f"{project_dir} is not a tuner project directory (it has no "
            "oracle.json); pass the tuner's directory/project_name."
        )
    objective = _saved_objective(project_dir)
    oracle = BatchSearchOracle(objective=objective)
    oracle._set_project_dir(*os.path.split(project_dir))
    oracle.reload()
    if objective is None:
        oracle.objective = _inferred_objective(oracle) or oracle.objective
    if not any(t.status == "COMPLETED" for t in oracle.trials.values()):
        raise ProjectError(f"{project_dir} holds no completed trial yet.")
    return oracle


def plot_search(tuner_or_dir, path):
    """Draws the search as one PNG: objective and throughput vs batch size.

    Left: the objective of each completed trial against its batch size (log
    scale), coloured by effective learning rate, the best trial ringed.
    Right: training examples per second against batch size.

    Example:

    ```python
    keras_batchtune.plot_search(tuner, "report.png")
    keras_batchtune.plot_search("batchtune_runs/digits", "report.png")
    ```

    Args:
        tuner_or_dir: A `BatchTuner` (or any KerasTuner tuner), or a tuner
            project directory.
        path: Where to write the PNG.

    Returns:
        `path`.

    Raises:
        ProjectError: for a directory that is not a tuner project or holds
            no completed trial.
        ImportError: if matplotlib is not installed.
    """
    oracle = getattr(tuner_or_dir, "oracle", None) or load_project(tuner_or_dir)
    return plot_oracle(oracle, path)


def plot_oracle(oracle, path):
    """Draws `plot_search`'s PNG from a tuner's oracle.

    Args:
        oracle: A tuner's oracle with at least one completed trial.
        path: Where to write the PNG.

    Returns:
        `path`.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colors
    from matplotlib import pyplot

    rows = [
        trial_row(trial)
        for trial in oracle.trials.values()
        if trial.score is not None
    ]
    batches = [row[1] for row in rows]
    scores = [row[4] for row in rows]
    rates = [row[3] or math.nan for row in rows]
    speeds = [row[5] or math.nan for row in rows]
    best = oracle.get_best_trials(1)[0]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    finite_rates = [r for r in rates if r == r and r > 0] or [1.0]
    norm = colors.LogNorm(min(finite_rates), max(finite_rates) * 1.0001)
    points = left.scatter(
        batches,
        scores,
        c=rates,
        cmap="viridis",
        norm=norm,
        s=50,
        edgecolors="black",
        linewidths=0.4,
    )
    best_row = trial_row(best)
    left.scatter(
        [best_row[1]],
        [best_row[4]],
        s=260,
        facecolors="none",
        edgecolors="red",
        linewidths=2,
        label="best trial",
    )
    figure.colorbar(points, ax=left, label="effective learning rate")
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size")
    left.set_ylabel(oracle.objective.name)
    left.set_title("objective vs batch size")
    left.legend(loc="lower left")
    right.scatter(
        batches, speeds, color="tab:blue", edgecolors="black", linewidths=0.4
    )
    right.set_xscale("log", base=2)
    right.set_xlabel("batch size")
    right.set_ylabel("training examples / second")
    right.set_title("throughput vs batch size")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path
