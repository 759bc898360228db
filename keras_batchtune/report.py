"""Reports of a search: the table of trials, notices, the Pareto front, plot."""

import json
import math
import os

import keras_tuner

from keras_batchtune import ranking
from keras_batchtune import space
from keras_batchtune import trial_fit
from keras_batchtune.backend import keras_tuner_internals
from keras_batchtune.oracle import BatchSearchOracle
from keras_batchtune.oracle import failure_reason
from keras_batchtune.oracle import fit_seconds

_COLUMNS = (
    ("trial", 5),
    ("batch", 6),
    ("base LR", 9),
    ("effective LR", 12),
    ("objective", 10),
    ("examples/s", 10),
    ("fit s", 7),
    ("front", 5),
    ("status", 28),
)
FRONT_MARK = "*"
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
        A tuple of values (None where unknown); the "front" column is left
        None (see `trials_table`).
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
        fit_seconds(trial),
        None,
        failure_reason(trial) or trial.status,
    )


def trials_table(oracle):
    """Formats every trial of a search as a text table, in trial order.

    The "front" column marks with `*` the trials on the Pareto front of the
    objective vs `fit_seconds` (see `pareto_front`).

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
    front = {trial.trial_id for trial in pareto_front(oracle)}
    for trial_id in oracle.start_order:
        row = list(trial_row(oracle.trials[trial_id]))
        row[-2] = FRONT_MARK if trial_id in front else ""
        lines.append(
            " ".join(
                _format(value).rjust(width)
                for value, (_, width) in zip(row, _COLUMNS)
            )
        )
    return "\n".join(lines)


def _by_objective(oracle):
    """The completed trials, best score first, whatever the tolerance."""
    return [
        trial
        for trial in keras_tuner.Oracle.get_best_trials(
            oracle, len(oracle.trials)
        )
        if trial.status == "COMPLETED" and trial.score is not None
    ]


def best_line(oracle):
    """Describes the trial with the best objective in one line.

    Args:
        oracle: The tuner's oracle.

    Returns:
        A string naming the best batch size, learning rates and objective.
    """
    best = _by_objective(oracle)
    if not best:
        return "No trial completed."
    trial_id, batch, base_lr, effective_lr, score, speed, seconds, *_ = (
        trial_row(best[0])
    )
    return (
        f"Best: trial {trial_id}, batch_size={_format(batch)}, "
        f"learning_rate={_format(base_lr)} (effective "
        f"{_format(effective_lr)}), {oracle.objective.name}="
        f"{_format(score)}, {_format(speed)} examples/s, "
        f"{_seconds(seconds)}"
    )


def _seconds(seconds):
    return "fit time unknown" if seconds is None else f"fit {seconds:.3g} s"


def pareto_front(oracle):
    """The completed trials on the Pareto front of objective vs fit seconds.

    A trial is on the front when no other trial has a score at least as
    good in no more `fit_seconds`, and is strictly better on one of the two.
    Trials without `fit_seconds` are left out.

    Example:

    ```python
    for trial in pareto_front(tuner.oracle):
        print(trial.trial_id, trial.score)
    ```

    Args:
        oracle: The tuner's oracle.

    Returns:
        A list of `Trial`s, fastest (lowest score) first.
    """
    trials = _by_objective(oracle)
    entries = [(trial.score, fit_seconds(trial)) for trial in trials]
    front = ranking.pareto_front(entries, oracle.objective.direction)
    return [trials[index] for index in front]


def front_line(oracle):
    """Lists the Pareto front of objective vs fit seconds in one line.

    Args:
        oracle: The tuner's oracle.

    Returns:
        A string, e.g. `"Pareto front (val_accuracy vs fit seconds): trial 3
        (batch 256, 0.978, 1.3 s), trial 1 (batch 16, 0.981, 4.7 s)"`.
    """
    front = pareto_front(oracle)
    if not front:
        return "Pareto front: no trial recorded fit_seconds."
    members = ", ".join(
        f"trial {trial.trial_id} (batch "
        f"{_format(trial.hyperparameters.values.get(space.BATCH_SIZE))}, "
        f"{_format(trial.score)}, {fit_seconds(trial):.3g} s)"
        for trial in front
    )
    return f"Pareto front ({oracle.objective.name} vs fit seconds): {members}"


def preferred_line(oracle):
    """Says which trial a `tolerance` prefers, and why, in one line.

    Example:

    ```python
    preferred_line(tuner.oracle)
    # "Preferred (tolerance 0.005): trial 3, batch_size=256,
    #  val_accuracy=0.978 in 1.3 s, the fastest of 4 trials within 0.005
    #  of the best (trial 1, 0.981 in 4.7 s, 3.6x slower)."
    ```

    Args:
        oracle: The tuner's oracle.

    Returns:
        The line, or None when the search has no tolerance or no completed
        trial.
    """
    tolerance = getattr(oracle, "tolerance", None)
    by_objective = _by_objective(oracle)
    if tolerance is None or not by_objective:
        return None
    best = by_objective[0]
    preferred = oracle.get_best_trials(1)[0]
    within = [
        trial
        for trial in by_objective
        if ranking.within_tolerance(
            trial.score, best.score, tolerance, oracle.objective.direction
        )
    ]
    name = oracle.objective.name
    head = f"Preferred (tolerance {tolerance:g}): trial {preferred.trial_id}"
    if any(fit_seconds(trial) is None for trial in within):
        return (
            f"{head}, the best {name} ({_format(best.score)}); a trial within "
            "the tolerance has no fit_seconds, so costs were not compared."
        )
    count = f"{len(within)} trial{'s' if len(within) > 1 else ''}"
    if preferred.trial_id == best.trial_id:
        return (
            f"{head}, the best {name} ({_format(best.score)}), is also the "
            f"fastest of the {count} within {tolerance:g} of it "
            f"({fit_seconds(best):.3g} s)."
        )
    batch = preferred.hyperparameters.values.get(space.BATCH_SIZE)
    speedup = fit_seconds(best) / max(fit_seconds(preferred), 1e-12)
    return (
        f"{head}, batch_size={_format(batch)}, {name}="
        f"{_format(preferred.score)} in {fit_seconds(preferred):.3g} s, the "
        f"fastest of the {count} within {tolerance:g} of the best (trial "
        f"{best.trial_id}, {_format(best.score)} in "
        f"{fit_seconds(best):.3g} s, {speedup:.2g}x slower)."
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

    The best trial is the first of `oracle.get_best_trials`: with a
    `tolerance`, the preferred (fastest) one.

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


def _saved_tolerance(project_dir):
    path = os.path.join(project_dir, "oracle.json")
    with open(path) as file:
        tolerance = json.load(file).get("tolerance")
    try:
        return ranking.check_tolerance(tolerance)
    except ValueError as error:
        raise ProjectError(f"{path}: {error}") from None


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
    oracle = BatchSearchOracle(
        objective=objective, tolerance=_saved_tolerance(project_dir)
    )
    keras_tuner_internals.set_project_dir(oracle, *os.path.split(project_dir))
    oracle.reload()
    if objective is None:
        oracle.objective = _inferred_objective(oracle) or oracle.objective
    if not any(t.status == "COMPLETED" for t in oracle.trials.values()):
        raise ProjectError(f"{project_dir} holds no completed trial yet.")
    return oracle


def plot_search(tuner_or_dir, path):
    """Draws the search as one PNG: objective, throughput and cost.

    Left: the objective of each completed trial against its batch size (log
    scale), coloured by effective learning rate, the best trial ringed.
    Middle: training examples per second against batch size. Right: the
    objective against `fit_seconds`, the Pareto front drawn as a line and,
    with a `tolerance`, its band and the preferred trial ringed.

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
    best = _by_objective(oracle)[0]
    figure, (left, right, cost) = pyplot.subplots(1, 3, figsize=(16, 4.2))
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
    _plot_cost(cost, oracle, rows, rates, norm)
    for axis in (left, right, cost):
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _plot_cost(axis, oracle, rows, rates, norm):
    """Objective vs fit seconds, the Pareto front and the tolerance band."""
    seconds = [math.nan if row[6] is None else row[6] for row in rows]
    axis.scatter(
        seconds,
        [row[4] for row in rows],
        c=rates,
        cmap="viridis",
        norm=norm,
        s=50,
        edgecolors="black",
        linewidths=0.4,
    )
    front = pareto_front(oracle)
    if front:
        axis.plot(
            [fit_seconds(trial) for trial in front],
            [trial.score for trial in front],
            color="black",
            drawstyle="steps-post",
            linewidth=1.2,
            label="Pareto front",
        )
    tolerance = getattr(oracle, "tolerance", None)
    if tolerance is not None:
        best_score = _by_objective(oracle)[0].score
        worse = -1 if oracle.objective.direction == "max" else 1
        axis.axhspan(
            best_score,
            best_score + worse * tolerance,
            color="tab:orange",
            alpha=0.15,
            label=f"within tolerance {tolerance:g}",
        )
        preferred = oracle.get_best_trials(1)[0]
        if fit_seconds(preferred) is not None:
            axis.scatter(
                [fit_seconds(preferred)],
                [preferred.score],
                s=260,
                facecolors="none",
                edgecolors="tab:orange",
                linewidths=2,
                label="preferred trial",
            )
    axis.set_xlabel("fit seconds")
    axis.set_ylabel(oracle.objective.name)
    axis.set_title("objective vs training time")
    if front or tolerance is not None:
        axis.legend(loc="best")
