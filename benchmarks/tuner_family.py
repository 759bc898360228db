"""Benchmark: the KerasTuner family with batch size coupled to the LR.

Three comparisons, each at equal trials, 5 seeds, every search in a fresh
process (as `search_efficiency.py`, whose tasks, grids and records this
script reuses):

(a) Bayesian optimization over raw against coupled coordinates:
    `keras_tuner.BayesianOptimization` samples (batch, LR used) with the
    batch size in `HyperModel.fit`; `keras_batchtune.BatchBayesianOptimization`
    samples (batch, LR at the reference batch 32) and trains at the LR
    scaled linearly with the batch. Same space, same `num_initial_points`
    (4 random trials, then the Gaussian process proposes).
(b) The three drop-ins against their KerasTuner originals: `RandomSearch`
    against `BatchTuner`, (a)'s pair, and `Hyperband` against
    `BatchHyperband` (`max_epochs` = the full budget, `factor=3`,
    `hyperband_iterations=2`: 20 trials, of 3 or 8 epochs, about as many
    epochs in all as the 12 full trials of the others).
(c) The coupling rule on an Adam-trained workload (digits, the same MLP,
    `keras.optimizers.Adam`): `BatchTuner` with `lr_scaling="linear"`,
    `"sqrt"` and `"auto"` (which picks `"sqrt"` for Adam), against
    `RandomSearch`.

Tasks: `digits` and `synthetic` (SGD with momentum 0.9, as in
`search_efficiency.py`), and `digits_adam`; regimes `drop-in` (the decade
known to work at batch 32: SGD 0.01-0.1, Adam 0.0003-0.003) and `wide`
(three decades: SGD 0.001-1.0, Adam 0.0001-0.1). Batch sizes 16-512, 8
epochs, objective `val_accuracy`.

Reported per (task, regime, tuner): the median best objective after 4, 8
and 12 trials and at the end of the search, the probability (fraction of
seeds) of being within 1 point of the task's reference optimum (the larger
of its exhaustive (batch x LR) grid's best and the best seen in any
search) after 12 trials and at the end, and of the grid's optimum alone at
the end, the median search seconds; and per
pair, per seed, at equal trials (the whole search: both sides of a pair run
as many trials), ours minus the original (median, and wins / ties /
losses, a tie within 0.5 point) and the search-time ratio.

Grids: `digits` and `synthetic` reuse `search_efficiency_grid.json`; the
Adam grid (LR 0.0001-0.3) is cached in `tuner_family_grid.json`.

Usage:

```
python benchmarks/tuner_family.py            # full run (about an hour)
python benchmarks/tuner_family.py --quick    # smoke test
python benchmarks/tuner_family.py --comparisons adam --seeds 2
python benchmarks/tuner_family.py --summarize RESULTS.json  # tables again
python benchmarks/tuner_family.py --markdown RESULTS.json   # docs table
```
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import keras_tuner  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import search_efficiency as se  # noqa: E402

import keras_batchtune  # noqa: E402

RESULTS = se.RESULTS
ADAM_REGIMES = {"drop-in": (0.0003, 0.003), "wide": (0.0001, 0.1)}
ADAM_GRID_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3)
NUM_INITIAL_POINTS = 4
HYPERBAND = {"factor": 3, "hyperband_iterations": 2}
TIE = 0.005
# Comparison -> (tasks, tuners); the first tuner of a pair is KerasTuner's.
COMPARISONS = {
    "family": (
        ("digits", "synthetic"),
        (
            "randomsearch",
            "batchtune",
            "bayesian",
            "batch_bayesian",
            "hyperband",
            "batch_hyperband",
        ),
    ),
    "adam": (
        ("digits_adam",),
        ("randomsearch", "batchtune", "batchtune sqrt", "batchtune auto"),
    ),
}
PAIRS = {
    "batchtune": "randomsearch",
    "batch_bayesian": "bayesian",
    "batch_hyperband": "hyperband",
    "batchtune sqrt": "batchtune",
    "batchtune auto": "batchtune",
}
RULES = {"batchtune sqrt": "sqrt", "batchtune auto": "auto"}


def digits_adam_task():
    (data, _) = se.digits_task()

    def build(learning_rate):
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(
            keras.optimizers.Adam(learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    return data, build


TASKS = {**se.TASKS, "digits_adam": digits_adam_task}


def regimes(task_name):
    return ADAM_REGIMES if task_name.endswith("_adam") else se.REGIMES


def make_tuner(name, build, lr_range, batch_range, seed, trials, epochs, path):
    """The tuner `name` over the shared (batch, LR) space."""
    common = dict(
        objective=se.OBJECTIVE,
        seed=seed,
        directory=path,
        project_name=name.replace(" ", "_"),
        overwrite=True,
    )
    if name in ("hyperband", "batch_hyperband"):
        common.update(max_epochs=epochs, **HYPERBAND)
    else:
        common["max_trials"] = trials
    if name in ("bayesian", "batch_bayesian"):
        common["num_initial_points"] = NUM_INITIAL_POINTS
    if name in ("randomsearch", "bayesian", "hyperband"):
        declared = keras_tuner.HyperParameters()
        se.batch_size_hp(declared, batch_range)
        se.learning_rate_hp(declared, lr_range)
        tuner_class = {
            "randomsearch": keras_tuner.RandomSearch,
            "bayesian": keras_tuner.BayesianOptimization,
            "hyperband": keras_tuner.Hyperband,
        }[name]
        return tuner_class(
            se.IndependentHyperModel(build, lr_range, batch_range),
            hyperparameters=declared,
            **common,
        )
    tuner_class = {
        "batch_bayesian": keras_batchtune.BatchBayesianOptimization,
        "batch_hyperband": keras_batchtune.BatchHyperband,
    }.get(name, keras_batchtune.BatchTuner)
    return tuner_class(
        lambda hp: build(se.learning_rate_hp(hp, lr_range)),
        min_batch_size=batch_range[0],
        max_batch_size=batch_range[1],
        base_batch_size=se.BASE_BATCH_SIZE,
        lr_scaling=RULES.get(name, "linear"),
        **common,
    )


def run_search(name, task_name, regime, batch_range, seed, trials, epochs):
    """One search in this process: its trial records and seconds."""
    (x, y, x_val, y_val), build = TASKS[task_name]()
    se.warm_up(((x, y, x_val, y_val), build), batch_range)
    keras.utils.set_random_seed(seed)
    with tempfile.TemporaryDirectory() as path:
        start = time.perf_counter()
        tuner = make_tuner(
            name,
            build,
            regimes(task_name)[regime],
            batch_range,
            seed,
            trials,
            epochs,
            path,
        )
        tuner.search(
            x, y, epochs=epochs, validation_data=(x_val, y_val), verbose=0
        )
        seconds = time.perf_counter() - start
        records = [
            se.trial_record(tuner.oracle.trials[trial_id])
            for trial_id in sorted(tuner.oracle.trials)
        ]
    return {"total_seconds": seconds, "trials": records}


def run_in_new_process(*args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_search, args)


def load_grids(task_names, batch_sizes, epochs, quick, output):
    """Each task's grid: SGD tasks from search_efficiency's cache."""
    grids = {}
    for task_name in task_names:
        adam = task_name.endswith("_adam")
        rates = ADAM_GRID_LEARNING_RATES if adam else se.GRID_LEARNING_RATES
        if quick:
            rates = rates[2:4]
            path = output.with_name(output.stem + "_grid.json")
        elif adam:
            path = RESULTS / "tuner_family_grid.json"
        else:
            path = RESULTS / "search_efficiency_grid.json"
        settings = {
            "epochs": epochs,
            "batch_sizes": batch_sizes,
            "learning_rates": list(rates),
        }
        grids.update(
            se.load_or_compute_grids(
                path, {task_name: TASKS[task_name]()}, settings, False
            )
        )
    return grids


def summarize(runs, grids, checkpoints):
    """Medians per (task, regime, tuner) and the paired differences."""
    summary = {}
    for task_name, grid in grids.items():
        seen = [
            t["score"]
            for run in runs
            if run["task"] == task_name
            for t in run["trials"]
            if t["score"] is not None
        ]
        grid_best = max(p["objective"] for p in grid["points"])
        reference = max([grid_best] + seen)
        for regime in sorted({r["regime"] for r in runs}):
            group = [
                r
                for r in runs
                if r["task"] == task_name and r["regime"] == regime
            ]
            if not group:
                continue
            rows = {}
            for tuner in dict.fromkeys(r["tuner"] for r in group):
                mine = {r["seed"]: r for r in group if r["tuner"] == tuner}
                row = {
                    "seeds": len(mine),
                    "trials": statistics.median(
                        len(r["trials"]) for r in mine.values()
                    ),
                }
                for n in checkpoints:
                    bests = [
                        se.best_after(r["trials"], n) for r in mine.values()
                    ]
                    row[f"best_after_{n}"] = statistics.median(bests)
                    row[f"p_within_1pt_after_{n}"] = sum(
                        b >= reference - se.ONE_POINT - se.ROUNDING
                        for b in bests
                    ) / len(bests)
                finals = [best_final(r) for r in mine.values()]
                row["best_final"] = statistics.median(finals)
                row["p_within_1pt_final"] = sum(
                    b >= reference - se.ONE_POINT - se.ROUNDING for b in finals
                ) / len(finals)
                row["p_within_1pt_of_grid_final"] = sum(
                    b >= grid_best - se.ONE_POINT - se.ROUNDING for b in finals
                ) / len(finals)
                row["search_seconds"] = statistics.median(
                    r["total_seconds"] for r in mine.values()
                )
                original = PAIRS.get(tuner)
                theirs = {r["seed"]: r for r in group if r["tuner"] == original}
                if theirs:
                    row["against"] = original
                    row.update(paired(mine, theirs))
                rows[tuner] = row
            summary[f"{task_name} / {regime}"] = {
                "task": task_name,
                "regime": regime,
                "learning_rate_range": regimes(task_name)[regime],
                "reference_optimum": reference,
                "grid_optimum": grid_best,
                "tuners": rows,
            }
    return summary


def best_final(run):
    return se.best_after(run["trials"], len(run["trials"]))


def paired(mine, theirs):
    """Per seed, whole searches: ours minus theirs, and the time ratio."""
    seeds = sorted(set(mine) & set(theirs))
    differences = [best_final(mine[s]) - best_final(theirs[s]) for s in seeds]
    return {
        "difference_final": statistics.median(differences),
        "wins": sum(d > TIE for d in differences),
        "ties": sum(abs(d) <= TIE for d in differences),
        "losses": sum(d < -TIE for d in differences),
        "search_ratio": statistics.median(
            mine[s]["total_seconds"] / theirs[s]["total_seconds"] for s in seeds
        ),
    }


def print_tables(summary, checkpoints):
    final = max(checkpoints)
    for title, block in summary.items():
        low, high = block["learning_rate_range"]
        print(
            f"\n== {title} (LR {low}-{high}; reference optimum "
            f"{block['reference_optimum']:.4f}, grid optimum "
            f"{block['grid_optimum']:.4f}) =="
        )
        head = " ".join(f"{f'best@{n}':>7}" for n in checkpoints)
        print(
            f"{'tuner':<16} {'trials':>6} {head} {'at end':>7} "
            f"{f'P1@{final}':>6} {'P1 end':>6} {'P1 grid':>7} "
            f"{'search s':>8}  "
            f"against: {'diff':>6} {'W/T/L':>6} {'x time':>6}"
        )
        for tuner, row in block["tuners"].items():
            cells = " ".join(
                f"{row[f'best_after_{n}']:7.4f}" for n in checkpoints
            )
            line = (
                f"{tuner:<16} {row['trials']:6.0f} {cells} "
                f"{row['best_final']:7.4f} "
                f"{row[f'p_within_1pt_after_{final}']:6.2f} "
                f"{row['p_within_1pt_final']:6.2f} "
                f"{row['p_within_1pt_of_grid_final']:7.2f} "
                f"{row['search_seconds']:8.1f}"
            )
            if "against" in row:
                line += (
                    f"  {row['against']:<12} "
                    f"{row['difference_final']:+6.3f} "
                    f"{row['wins']}/{row['ties']}/{row['losses']:<2} "
                    f"{row['search_ratio']:6.2f}"
                )
            print(line)


def markdown(result):
    """The table of docs/benchmarks.md, from a results JSON."""
    checkpoints = result["settings"]["checkpoints"]
    final = max(checkpoints)
    lines = [
        f"| task, LR range | tuner | trials | median best after "
        f"{' / '.join(map(str, checkpoints))} / all trials | P(within 1 pt) "
        f"after {final} / all | same, of the grid optimum, all | against "
        "| median difference, whole search | wins / ties / losses "
        "| search time x |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for block in result["summary"].values():
        low, high = block["learning_rate_range"]
        where = f"{block['task']}, {block['regime']} {low}-{high}"
        for tuner, row in block["tuners"].items():
            bests = " / ".join(
                f"{row[f'best_after_{n}']:.3f}" for n in checkpoints
            )
            against = ["", "", "", ""]
            if "against" in row:
                against = [
                    row["against"],
                    f"{row['difference_final']:+.3f}",
                    f"{row['wins']} / {row['ties']} / {row['losses']}",
                    f"{row['search_ratio']:.2f}",
                ]
            lines.append(
                f"| {where} | {tuner} | {row['trials']:.0f} | {bests} / "
                f"{row['best_final']:.3f} | "
                f"{row[f'p_within_1pt_after_{final}']:.1f} / "
                f"{row['p_within_1pt_final']:.1f} | "
                f"{row['p_within_1pt_of_grid_final']:.1f} | "
                + " | ".join(against)
                + " |"
            )
    return "\n".join(lines)


def resummarize(path):
    """Recomputes the summary of a results JSON from its runs (in place)."""
    result = json.loads(path.read_text())
    settings = result["settings"]
    tasks = list(dict.fromkeys(run["task"] for run in result["runs"]))
    grids = load_grids(
        tasks, settings["batch_sizes"], settings["epochs"], False, path
    )
    result["summary"] = summarize(
        result["runs"], grids, settings["checkpoints"]
    )
    path.write_text(json.dumps(result, indent=2))
    print_tables(result["summary"], settings["checkpoints"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--comparisons",
        nargs="+",
        choices=list(COMPARISONS),
        default=list(COMPARISONS),
    )
    parser.add_argument(
        "--regimes", nargs="+", choices=["drop-in", "wide"], default=None
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--output",
        default=None,
        help=f"JSON output path (default {RESULTS}/tuner_family.json; with "
        "--quick, the system's temporary folder)",
    )
    parser.add_argument(
        "--markdown", help="print the docs table of a results JSON"
    )
    parser.add_argument(
        "--summarize", help="recompute and print the summary of a results JSON"
    )
    args = parser.parse_args()
    if args.summarize:
        resummarize(pathlib.Path(args.summarize))
        return
    if args.markdown:
        print(markdown(json.loads(pathlib.Path(args.markdown).read_text())))
        return
    output = pathlib.Path(
        args.output
        or (
            pathlib.Path(tempfile.gettempdir()) / "tuner_family_quick.json"
            if args.quick
            else RESULTS / "tuner_family.json"
        )
    )
    batch_range = (16, 512)
    if args.quick:
        args.seeds, args.trials, args.epochs = 1, 3, 2
        args.regimes = args.regimes or ["wide"]
        batch_range = (32, 128)
    args.regimes = args.regimes or ["drop-in", "wide"]
    checkpoints = [n for n in (4, 8, 12) if n < args.trials] + [args.trials]
    batch_sizes = []
    batch_size = batch_range[0]
    while batch_size <= batch_range[1]:
        batch_sizes.append(batch_size)
        batch_size *= 2
    plan = [
        (task_name, tuners)
        for comparison in args.comparisons
        for task_name, tuners in [
            (t, COMPARISONS[comparison][1]) for t in COMPARISONS[comparison][0]
        ]
    ]
    if args.quick:
        # The smoke test's time: one task per comparison, and of the tuners
        # the three of this library that no other smoke test runs.
        quick_tuners = ("batch_bayesian", "batch_hyperband", "batchtune auto")
        plan = [
            (task, tuple(t for t in tuners if t in quick_tuners))
            for task, tuners in plan
            if "digits" in task
        ]
    grids = load_grids(
        [task for task, _ in plan], batch_sizes, args.epochs, args.quick, output
    )
    runs = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        for task_name, tuners in plan:
            for regime in args.regimes:
                # The order rotates with the seed: machine noise spreads.
                shift = seed % len(tuners)
                for name in tuners[shift:] + tuners[:shift]:
                    search = run_search if args.quick else run_in_new_process
                    result = search(
                        name,
                        task_name,
                        regime,
                        batch_range,
                        seed,
                        args.trials,
                        args.epochs,
                    )
                    result.update(
                        tuner=name, task=task_name, regime=regime, seed=seed
                    )
                    runs.append(result)
                    print(
                        f"seed {seed} {task_name} {regime} {name}: "
                        f"{result['total_seconds']:.1f} s, "
                        f"{len(result['trials'])} trials "
                        f"({time.perf_counter() - started:.0f} s elapsed)",
                        flush=True,
                    )
        summary = summarize(runs, grids, checkpoints)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(
            json.dumps(
                {
                    "date": datetime.date.today().isoformat(),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "backend": keras.config.backend(),
                    "command": " ".join(sys.argv),
                    "seeds_done": seed + 1,
                    "settings": {
                        "trials": args.trials,
                        "epochs": args.epochs,
                        "batch_sizes": batch_sizes,
                        "checkpoints": checkpoints,
                        "num_initial_points": NUM_INITIAL_POINTS,
                        "hyperband": HYPERBAND,
                    },
                    "summary": summary,
                    "runs": runs,
                },
                indent=2,
            )
        )
    print_tables(summary, checkpoints)
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
