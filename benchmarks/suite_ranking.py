"""The task suite's summaries, its pre-written ranking rule and its tables.

Used by `suite_search.py` (whose docstring states the rule); no framework
import, so a results file can be summarized anywhere.
"""

import statistics

import task_suite

CHECKPOINTS = (4, 8, 12)
HALF_POINT = 0.005
SEARCH_TARGET = 0.7


def margin(task, optimum):
    """Half the suite's 1-point rule, in the objective's units."""
    if task.direction == "min":
        return HALF_POINT * abs(optimum)
    return HALF_POINT


def better(task, a, b):
    """`a` - `b` in the better direction (positive: `a` is better)."""
    if a is None:
        return float("-inf")
    if b is None:
        return float("inf")
    return b - a if task.direction == "min" else a - b


def best_after(task, run, n=None):
    scores = [t["score"] for t in run["trials"][:n] if t["score"] is not None]
    if not scores:
        return None
    return min(scores) if task.direction == "min" else max(scores)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fit_seconds_by_batch(grid):
    """The grid's median plain-fit seconds at each batch size."""
    by_batch = {}
    for point in grid["points"]:
        by_batch.setdefault(point["batch_size"], []).append(
            point["fit_seconds"]
        )
    return {batch: statistics.median(s) for batch, s in by_batch.items()}


def reference_optimum(task, grid, runs):
    """The better of the grid's best point and the best any search saw."""
    candidates = [grid["optimum"]["objective"]] + [
        best_after(task, run) for run in runs if run["task"] == task.name
    ]
    candidates = [c for c in candidates if c is not None]
    return min(candidates) if task.direction == "min" else max(candidates)


def _per_seed_ratio(mine, theirs, value, their_value=None):
    """The median over common seeds of `value(mine) / value(theirs)`."""
    their_value = their_value or value
    ratios = []
    for seed in sorted(set(mine) & set(theirs)):
        numerator, denominator = value(mine[seed]), their_value(theirs[seed])
        if numerator and denominator:
            ratios.append(numerator / denominator)
    return median(ratios)


def summarize(runs, grids):
    """`{(task, regime): block}` with one row per tuner."""
    summary = {}
    for task_name, grid in grids.items():
        task = task_suite.TASKS[task_name]
        reference = reference_optimum(task, grid, runs)
        fit_seconds = fit_seconds_by_batch(grid)
        for regime in grid["regimes"]:
            group = [
                r
                for r in runs
                if r["task"] == task_name and r["regime"] == regime
            ]
            if not group:
                continue
            by_tuner = {}
            for run in group:
                by_tuner.setdefault(run["tuner"], {})[run["seed"]] = run

            def within(value):
                return task.within_one_point(value, reference)

            def chosen_fit(run, pick):
                picks = run["chosen_batch_size"]
                return fit_seconds.get(picks.get(pick, picks["default"]))

            rows = {}
            for tuner, seeds in by_tuner.items():
                row = {"seeds": len(seeds)}
                for n in CHECKPOINTS:
                    row[f"best_after_{n}"] = median(
                        best_after(task, run, n) for run in seeds.values()
                    )
                finals = [best_after(task, run) for run in seeds.values()]
                row["best_final"] = median(finals)
                row["trials"] = median(len(r["trials"]) for r in seeds.values())
                row["p_within_1pt_after_12"] = statistics.mean(
                    within(best_after(task, r, 12)) for r in seeds.values()
                )
                row["p_within_1pt_final"] = statistics.mean(
                    within(value) for value in finals
                )
                row["search_seconds"] = median(
                    r["search_seconds"] for r in seeds.values()
                )
                for baseline, key in (
                    ("randomsearch", "search_ratio_to_randomsearch"),
                    ("hyperband", "search_ratio_to_hyperband"),
                ):
                    row[key] = _per_seed_ratio(
                        seeds,
                        by_tuner.get(baseline, {}),
                        lambda r: r["search_seconds"],
                    )
                for pick in ("default", "tolerance"):
                    row[f"chosen_fit_ratio_{pick}"] = _per_seed_ratio(
                        seeds,
                        by_tuner.get("randomsearch", {}),
                        lambda r, pick=pick: chosen_fit(r, pick),
                        lambda r: chosen_fit(r, "default"),
                    )
                rows[tuner] = row
            summary[f"{task_name} / {regime}"] = {
                "task": task_name,
                "regime": regime,
                "learning_rate_range": grid["regimes"][regime],
                "reference_optimum": reference,
                "grid_optimum": grid["optimum"]["objective"],
                "tuners": rows,
            }
    return summary


def ranks(task, rows, optimum):
    """The pre-written rule on one task: 1 + the number of tuners that beat
    each (better by more than the margin, or within it and faster)."""
    tie = margin(task, optimum)

    def beats(u, v):
        gap = better(task, rows[u]["best_final"], rows[v]["best_final"])
        if gap > tie:
            return True
        faster = rows[u]["search_seconds"] < rows[v]["search_seconds"]
        return abs(gap) <= tie and faster

    return {v: 1 + sum(beats(u, v) for u in rows if u != v) for v in rows}


def aggregate(summary, regime, leave_out=None):
    """`[(tuner, median rank, median search ratio to RandomSearch)]`, best
    first, over the tasks of `regime` (but `leave_out`)."""
    per_tuner = {}
    for block in summary.values():
        if block["regime"] != regime or block["task"] == leave_out:
            continue
        task = task_suite.TASKS[block["task"]]
        task_ranks = ranks(task, block["tuners"], block["reference_optimum"])
        for tuner, rank in task_ranks.items():
            ratio = block["tuners"][tuner]["search_ratio_to_randomsearch"]
            per_tuner.setdefault(tuner, ([], []))
            per_tuner[tuner][0].append(rank)
            per_tuner[tuner][1].append(ratio)
    table = [
        (tuner, statistics.median(r), median(q) or 0.0)
        for tuner, (r, q) in per_tuner.items()
    ]
    return sorted(table, key=lambda row: (row[1], row[2]))


def recommendation(summary, regime):
    """The best BatchTuner variant of `regime`, and its leave-one-task-out
    winners (`{left-out task: winner}`)."""

    def winner(leave_out=None):
        table = aggregate(summary, regime, leave_out)
        ours = [row[0] for row in table if row[0].startswith("batch")]
        return ours[0] if ours else None

    tasks = sorted(
        {b["task"] for b in summary.values() if b["regime"] == regime}
    )
    return winner(), {task: winner(task) for task in tasks}


def wide_gap(summary, variant):
    """Issue 19's three wide-range conditions for `variant`, per task."""
    checks = {}
    for block in summary.values():
        rows = block["tuners"]
        if block["regime"] != "wide" or variant not in rows:
            continue
        if "hyperband" not in rows:
            continue
        task = task_suite.TASKS[block["task"]]
        mine, theirs = rows[variant], rows["hyperband"]
        ratio = mine["search_ratio_to_randomsearch"]
        checks[block["task"]] = {
            "best_after_12_minus_hyperband": better(
                task, mine["best_after_12"], theirs["best_final"]
            ),
            "at_least_hyperband": better(
                task, mine["best_after_12"], theirs["best_final"]
            )
            >= -1e-9,
            "search_ratio_to_randomsearch": ratio,
            "within_time": ratio is not None and ratio <= SEARCH_TARGET,
            "p_within_1pt": mine["p_within_1pt_after_12"],
            "hyperband_p_within_1pt": theirs["p_within_1pt_final"],
            "as_often_within_1pt": mine["p_within_1pt_after_12"]
            >= theirs["p_within_1pt_final"],
        }
    return checks


def wide_gap_overall(checks):
    """The three conditions over the suite: the median over tasks of the
    difference to Hyperband (>= 0), the median search ratio (<= 0.7), and
    the seeds within 1 point summed over tasks (>= Hyperband's)."""
    if not checks:
        return None
    rows = list(checks.values())
    difference = median(r["best_after_12_minus_hyperband"] for r in rows)
    ratio = median(r["search_ratio_to_randomsearch"] for r in rows)
    mine = sum(r["p_within_1pt"] for r in rows)
    theirs = sum(r["hyperband_p_within_1pt"] for r in rows)
    return {
        "tasks_meeting_all_three": sum(
            r["at_least_hyperband"]
            and r["within_time"]
            and r["as_often_within_1pt"]
            for r in rows
        ),
        "tasks": len(rows),
        "median_difference_to_hyperband": difference,
        "median_search_ratio_to_randomsearch": ratio,
        "within_1pt_share": mine / len(rows),
        "hyperband_within_1pt_share": theirs / len(rows),
        "met": difference >= -1e-9
        and ratio is not None
        and ratio <= SEARCH_TARGET
        and mine >= theirs - 1e-9,
    }


def print_wide_gap(summary, variants):
    """Issue 19's wide-range target, per variant, over the suite."""
    print("\nwide regime against Hyperband (best after 12 trials; tasks")
    print("meeting all three / median difference / median time /RS /")
    print("share of seeds within 1 point, ours against Hyperband's):")
    for variant in variants:
        overall = wide_gap_overall(wide_gap(summary, variant))
        if overall:
            print(
                f"  {variant:44} {overall['tasks_meeting_all_three']}/"
                f"{overall['tasks']} "
                f"{overall['median_difference_to_hyperband']:+.4f} "
                f"{overall['median_search_ratio_to_randomsearch']:.2f} "
                f"{overall['within_1pt_share']:.2f} vs "
                f"{overall['hyperband_within_1pt_share']:.2f} "
                f"{'MET' if overall['met'] else 'missed'}"
            )


def best_columns(row, separator):
    """A row's median bests after 4, 8 and 12 trials and at the end."""
    keys = ("best_after_4", "best_after_8", "best_after_12", "best_final")
    return separator.join(fmt(row[key], ".3f") for key in keys)


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_tables(summary):
    for title, block in summary.items():
        low, high = block["learning_rate_range"]
        task = task_suite.TASKS[block["task"]]
        task_ranks = ranks(task, block["tuners"], block["reference_optimum"])
        print(
            f"\n{title}: LR {low:.2g}-{high:.2g}, reference optimum "
            f"{block['reference_optimum']:.4f} ({task.objective})"
        )
        print(
            f"{'tuner':44} {'rank':>4} {'best 4/8/12/end':>27} "
            f"{'P1pt12':>6} {'P1pt':>5} {'s':>6} {'/RS':>5} {'/HB':>5} "
            f"{'fit/RS':>6} {'tol':>5}"
        )
        for tuner, row in block["tuners"].items():
            bests = best_columns(row, "/")
            print(
                f"{tuner:44} {task_ranks[tuner]:>4} {bests:>27} "
                f"{row['p_within_1pt_after_12']:6.2f} "
                f"{row['p_within_1pt_final']:5.2f} "
                f"{row['search_seconds']:6.1f} "
                f"{fmt(row['search_ratio_to_randomsearch'], '5.2f')} "
                f"{fmt(row['search_ratio_to_hyperband'], '5.2f')} "
                f"{fmt(row['chosen_fit_ratio_default'], '6.2f')} "
                f"{fmt(row['chosen_fit_ratio_tolerance'], '5.2f')}"
            )
    for regime in ("drop-in", "wide"):
        table = aggregate(summary, regime)
        if not table:
            continue
        print(f"\naggregate, {regime} (median rank over tasks, /RS):")
        for tuner, rank, ratio in table:
            print(f"  {tuner:44} {rank:5.1f} {ratio:5.2f}")
        chosen, left_out = recommendation(summary, regime)
        stable = sum(w == chosen for w in left_out.values())
        print(
            f"  recommended BatchTuner setting: {chosen}; leave-one-task-out "
            f"{stable}/{len(left_out)} ({left_out})"
        )


def markdown(summary):
    """The per-task tables and the aggregates, as Markdown for the docs."""
    lines = []
    for regime in ("drop-in", "wide"):
        lines += [
            f"### {regime.capitalize()} regime, per task",
            "",
            "| task | tuner | rank | best after 4 / 8 / 12 / end | "
            "P(1 pt) after 12 / end | search s | /RS | /HB | "
            "chosen fit /RS (tolerance) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for block in summary.values():
            if block["regime"] != regime:
                continue
            task = task_suite.TASKS[block["task"]]
            task_ranks = ranks(
                task, block["tuners"], block["reference_optimum"]
            )
            low, high = block["learning_rate_range"]
            title = (
                f"{block['task']} ({low:.2g}-{high:.2g}; "
                f"ref. {block['reference_optimum']:.3f})"
            )
            order = sorted(block["tuners"], key=task_ranks.get)
            for tuner in order:
                row = block["tuners"][tuner]
                bests = best_columns(row, " / ")
                lines.append(
                    f"| {title} | {tuner} | {task_ranks[tuner]} | {bests} | "
                    f"{row['p_within_1pt_after_12']:.2f} / "
                    f"{row['p_within_1pt_final']:.2f} | "
                    f"{row['search_seconds']:.1f} | "
                    f"{fmt(row['search_ratio_to_randomsearch'], '.2f')} | "
                    f"{fmt(row['search_ratio_to_hyperband'], '.2f')} | "
                    f"{fmt(row['chosen_fit_ratio_default'], '.2f')} "
                    f"({fmt(row['chosen_fit_ratio_tolerance'], '.2f')}) |"
                )
                title = ""
        lines += ["", f"### {regime.capitalize()} regime, aggregate", ""]
        lines += [
            "| tuner | median rank | median search /RS |",
            "|---|---|---|",
        ]
        for tuner, rank, ratio in aggregate(summary, regime):
            lines.append(f"| {tuner} | {rank:g} | {ratio:.2f} |")
        chosen, left_out = recommendation(summary, regime)
        stable = sum(winner == chosen for winner in left_out.values())
        others = sorted({w for w in left_out.values() if w != chosen})
        lines += [
            "",
            f"Best of the library's variants: **{chosen}**; leave-one-task-"
            f"out: {stable} of {len(left_out)}"
            + (f" (otherwise {', '.join(others)})" if others else "")
            + ".",
            "",
        ]
    return "\n".join(lines)
