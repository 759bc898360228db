"""Benchmark: BatchTuner's defaults and recommendations, chosen on a suite.

Every search of `task_suite.py`'s eight tasks, in both LR regimes, for
KerasTuner's `RandomSearch` and `Hyperband` (batch size sampled in
`HyperModel.fit`, LR independent: the LR the model trains with) and the
BatchTuner variants that are candidate defaults or recommendations (LR at
the reference batch 32, coupled linearly), each search in a fresh process:

- `batchtune`: the defaults (`lr_scaling="linear"`, no halving, no band);
- `batchtune successive_halving min_epochs=4`:
  `successive_halving={"factor": 2, "min_epochs": 4}` (4 and 8 epochs);
- `batchtune lr_band=range_test`: the LR band from a range test at batch 32;
- `batchtune lr_band=trials`: the LR band learned from the trials;
- `batchtune lr_band=range_test successive_halving min_epochs=4`: both;
  added to the wide regime after the first seed's results showed the range
  test matching Hyperband's accuracy at RandomSearch's cost and halving at
  half the cost (the rule and the other variants were fixed before);
- `batch_hyperband`: `keras_batchtune.BatchHyperband` (`factor=3`,
  `hyperband_iterations=1`: 10 trials of 3 or 8 epochs).

`randomsearch` and the BatchTuner variants run 12 trials of 8 epochs;
`hyperband` runs KerasTuner's `Hyperband(max_epochs=8, factor=3,
hyperband_iterations=2)` (20 trials of 3 or 8 epochs, as in
`tuner_family.py`). Batch sizes 16-512 (powers of two); the LR ranges are the
suite's regimes (`drop-in`: the decade centred on the best grid LR at batch
32; `wide`: three decades), derived from the cached grids before any search.
The wide-range levers (the two LR bands, with and without halving, and the
coupled Hyperband) run in the wide regime only; `batchtune lr_scaling=sqrt`
(the square-root rule) in the drop-in regime of the Adam tasks only.

**The default rule's check, also written down before it was run.**
`lr_scaling` is `"linear"` by default; `"sqrt"` is what the literature
suggests for Adam. On the four Adam tasks' drop-in regime,
`batchtune lr_scaling=sqrt` runs beside `batchtune` (same seeds); the default
changes only if `"sqrt"` has the better median rank over those tasks by the
rule below, applied to that pair alone.

**The confirmation, written down before it was run.** The wide regime's
winner was added after the first seed, so it is checked again on seeds 3
and 4 alone, which no choice has seen (`--seeds 5 --resume --only-seeds
3 4`): RandomSearch, Hyperband and it, on every task; and the `lr_scaling`
pair on the Adam tasks. Issue 19's wide-range target is met if it holds
there too; the pair's median rank on those seeds decides the same way.

**The ranking rule, written down before the searches were run.** Per task
and regime, each tuner's score is the median over seeds of the best
objective of its whole search (12 trials; Hyperband's 20, BatchHyperband's
10). Tuner `u` beats tuner `v` on a task if its score is better by more than
the tie margin (half a point, 0.005, of accuracy; 0.5% of the task's
reference optimum for a loss), or if the scores are within the margin and
`u`'s median search time is shorter. A tuner's rank on a task is 1 plus the
number of tuners that beat it; its aggregate rank in a regime is the median
of its ranks over the tasks, ties broken by the median over tasks of its
search-time ratio to RandomSearch (the cheaper first). The recommended
BatchTuner setting for a regime is the BatchTuner variant with the best
aggregate rank; it is stable if it stays the best variant when each task in
turn is left out (leave-one-task-out). A default or recommendation that
this rule does not pick is withdrawn from the docs.

Reported per (task, regime, tuner): the median best after 4, 8 and 12
trials and at the end; the probability (fraction of seeds) of landing within
1 point (0.01; 1% of a loss) of the task's reference optimum (the better of
the grid's best point and the best score any search of the task saw) after
12 trials and at the end; the median search seconds and, per seed, the
ratio to RandomSearch's and to Hyperband's; the chosen configuration's fit
seconds (the grid's median plain-fit time at its batch size) as a ratio to
RandomSearch's chosen one, also with the pick of a `tolerance` of half a
point (the same search reloaded with the keyword).

Searches run two at a time (one per core, each process limited to one
TensorFlow thread), seed-major, so that a run cut short keeps whole seeds;
each finished search is appended to the results file at once, and
`--resume` skips the searches already in it.

Usage:

```
python benchmarks/suite_search.py --seeds 3          # about 80 min, 2 cores
python benchmarks/suite_search.py --seeds 3 --resume # after an interruption
python benchmarks/suite_search.py --summarize        # tables again
python benchmarks/suite_search.py --quick            # smoke test
```
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import suite_ranking  # noqa: E402
import task_suite  # noqa: E402

RESULTS = task_suite.RESULTS
BATCH_RANGE = (16, 512)
TRIALS = 12
BASELINES = ("randomsearch", "hyperband")
# KerasTuner's tuners, with the batch size sampled in `HyperModel.fit`.
KERAS_TUNER = BASELINES + ("bayesian",)
HYPERBAND = {"factor": 3, "hyperband_iterations": 2}
BATCH_HYPERBAND = {"factor": 3, "hyperband_iterations": 1}
# BatchTuner variant -> its keyword arguments.
BATCHTUNE = {
    "batchtune": {},
    "batchtune successive_halving min_epochs=4": {
        "successive_halving": {"factor": 2, "min_epochs": 4}
    },
    "batchtune lr_band=range_test": {"lr_band": "range_test"},
    "batchtune lr_band=trials": {"lr_band": "trials"},
    # Added after the first seed's results (below): the band of the range
    # test with the cost of halving.
    "batchtune lr_band=range_test successive_halving min_epochs=4": {
        "lr_band": "range_test",
        "successive_halving": {"factor": 2, "min_epochs": 4},
    },
    "batchtune lr_scaling=sqrt": {"lr_scaling": "sqrt"},
}
# The default rule's check, on the Adam tasks' drop-in regime only.
ADAM_RULE_CHECK = ("batchtune", "batchtune lr_scaling=sqrt")
REGIME_TUNERS = {
    "drop-in": (
        "randomsearch",
        "batchtune",
        "batchtune successive_halving min_epochs=4",
        "batchtune lr_scaling=sqrt",
    ),
    "wide": BASELINES
    + tuple(name for name in BATCHTUNE if name not in ADAM_RULE_CHECK[1:])
    + ("batch_hyperband",),
}
ALL_TUNERS = tuple(dict.fromkeys(REGIME_TUNERS["wide"] + ADAM_RULE_CHECK))


def objective(task):
    import keras_tuner

    return keras_tuner.Objective(task.objective, direction=task.direction)


def learning_rate_hp(hp, lr_range):
    return hp.Float("learning_rate", lr_range[0], lr_range[1], sampling="log")


def batch_size_hp(hp, batch_range=BATCH_RANGE):
    return hp.Int("batch_size", *batch_range, step=2, sampling="log")


def make_tuner(
    name,
    task,
    lr_range,
    seed,
    epochs,
    trials,
    directory,
    batch_range=BATCH_RANGE,
    **extra,
):
    """The tuner `name` over the (batch, LR) space; `extra`: BatchTuner's
    keywords, and `reload=True` to reload a finished project."""
    import keras_tuner

    import keras_batchtune

    common = dict(
        objective=objective(task),
        seed=seed,
        directory=directory,
        project_name=name.replace(" ", "_").replace("=", "_"),
        overwrite=not extra.pop("reload", False),
    )
    if name in KERAS_TUNER:

        class IndependentHyperModel(keras_tuner.HyperModel):
            def build(self, hp):
                return task.make_model(learning_rate_hp(hp, lr_range))

            def fit(self, hp, model, *args, **kwargs):
                return model.fit(
                    *args, batch_size=batch_size_hp(hp, batch_range), **kwargs
                )

        declared = keras_tuner.HyperParameters()
        batch_size_hp(declared, batch_range)
        learning_rate_hp(declared, lr_range)
        if name == "hyperband":
            return keras_tuner.Hyperband(
                IndependentHyperModel(),
                hyperparameters=declared,
                max_epochs=epochs,
                **HYPERBAND,
                **common,
            )
        tuner_class = {
            "randomsearch": keras_tuner.RandomSearch,
            "bayesian": keras_tuner.BayesianOptimization,
        }[name]
        return tuner_class(
            IndependentHyperModel(),
            hyperparameters=declared,
            max_trials=trials,
            **common,
        )
    coupled = dict(
        min_batch_size=batch_range[0],
        max_batch_size=batch_range[1],
        base_batch_size=task_suite.REFERENCE_BATCH_SIZE,
        lr_scaling="linear",
        **common,
    )
    coupled.update(extra)

    def build(hp):
        return task.make_model(learning_rate_hp(hp, lr_range))

    if name == "batch_hyperband":
        return keras_batchtune.BatchHyperband(
            build, max_epochs=epochs, **BATCH_HYPERBAND, **coupled
        )
    coupled.update(BATCHTUNE[name])
    return keras_batchtune.BatchTuner(build, max_trials=trials, **coupled)


def trial_record(trial):
    values = trial.hyperparameters.values
    score = trial.score
    finite = score is not None and score == score and abs(score) != float("inf")
    return {
        "trial_id": trial.trial_id,
        "status": trial.status,
        "score": float(score) if finite else None,
        "batch_size": values.get("batch_size"),
        "learning_rate": values.get("learning_rate"),
        "epochs": values.get("tuner/epochs"),
    }


def chosen_batch_size(tuner):
    best = tuner.oracle.get_best_trials(1)
    return best[0].hyperparameters.values.get("batch_size") if best else None


def search_with_picks(
    name,
    task,
    lr_range,
    seed,
    epochs,
    trials,
    data,
    pick,
    tolerance,
    batch_range=BATCH_RANGE,
):
    """One timed search in a temporary project.

    Returns:
        `(seconds, trial records, picks)`: `picks["default"]` is
        `pick(tuner)`; for the library's tuners `picks["tolerance"]` is
        `pick` of the same project reloaded with `tolerance` (which only
        reorders the best trials).
    """
    x, y, x_val, y_val = data
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        tuner = make_tuner(
            name, task, lr_range, seed, epochs, trials, directory, batch_range
        )
        tuner.search(
            x, y, epochs=epochs, validation_data=(x_val, y_val), verbose=0
        )
        seconds = time.perf_counter() - start
        records = [
            trial_record(tuner.oracle.trials[trial_id])
            for trial_id in sorted(tuner.oracle.trials, key=_trial_order)
        ]
        picks = {"default": pick(tuner)}
        if name not in KERAS_TUNER:
            reloaded = make_tuner(
                name,
                task,
                lr_range,
                seed,
                epochs,
                trials,
                directory,
                batch_range,
                reload=True,
                tolerance=tolerance,
            )
            picks["tolerance"] = pick(reloaded)
    return seconds, records, picks


def run_search(name, task_name, regime, seed, epochs, trials, scale, grid):
    """One search in this (fresh) process: its trials, time and picks."""
    import keras

    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        # One core per search: two searches run side by side.
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    task = task_suite.TASKS[task_name]
    x, y, x_val, y_val = task.make_data(scale)
    lr_range = tuple(grid["regimes"][regime])
    # Untimed warm-up: a process's first fit pays the framework's start-up.
    task.make_model(lr_range[0]).fit(
        x, y, batch_size=BATCH_RANGE[0], epochs=1, verbose=0
    )
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    seconds, records, chosen = search_with_picks(
        name,
        task,
        lr_range,
        seed,
        epochs,
        trials,
        (x, y, x_val, y_val),
        chosen_batch_size,
        suite_ranking.margin(task, grid["optimum"]["objective"]),
    )
    return {
        "tuner": name,
        "task": task_name,
        "regime": regime,
        "seed": seed,
        "search_seconds": seconds,
        "trials": records,
        "chosen_batch_size": chosen,
    }


def _trial_order(trial_id):
    return int(trial_id) if str(trial_id).isdigit() else trial_id


def jobs(task_names, regimes, tuners, seeds):
    """Seed-major order; the tuners of a (task, regime) rotate with the seed."""
    order = []
    for seed in seeds:
        for task_name in task_names:
            for regime in regimes:
                names = [
                    name
                    for name in REGIME_TUNERS[regime]
                    if name in tuners
                    and (
                        name not in ADAM_RULE_CHECK[1:]
                        or task_suite.TASKS[task_name].optimizer == "adam"
                    )
                ]
                shift = seed % max(1, len(names))
                for name in names[shift:] + names[:shift]:
                    order.append((name, task_name, regime, seed))
    return order


def run_all(order, output, epochs, trials, scale, grids, workers):
    """Runs `order`, two fresh processes at a time, appending each result."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, max_tasks_per_child=1
    ) as pool:
        futures = {
            pool.submit(
                run_search,
                name,
                task_name,
                regime,
                seed,
                epochs,
                trials,
                scale,
                grids[task_name],
            ): (name, task_name, regime, seed)
            for name, task_name, regime, seed in order
        }
        for done, future in enumerate(
            concurrent.futures.as_completed(futures), 1
        ):
            run = future.result()
            with open(output, "a") as stream:
                stream.write(json.dumps(run) + "\n")
            task = task_suite.TASKS[run["task"]]
            print(
                f"[{done}/{len(order)}] {run['task']} / {run['regime']} / "
                f"{run['tuner']} seed {run['seed']}: best "
                f"{suite_ranking.best_after(task, run)} in "
                f"{run['search_seconds']:.1f} s",
                flush=True,
            )


def adam_rule_check(runs, rule_runs, grids):
    """The default rule's check: `ADAM_RULE_CHECK`'s pair alone, ranked on
    the Adam tasks' drop-in regime; printed and returned."""
    adam = {
        name: grid
        for name, grid in grids.items()
        if task_suite.TASKS[name].optimizer == "adam"
        and any(r["task"] == name for r in rule_runs)
    }
    pair = [
        r
        for r in runs
        if r["tuner"] in ADAM_RULE_CHECK
        and r["regime"] == "drop-in"
        and r["task"] in adam
    ]
    if not rule_runs:
        return None
    table = suite_ranking.aggregate(
        suite_ranking.summarize(pair, adam), "drop-in"
    )
    print(f"\nlr_scaling on the Adam tasks ({', '.join(adam)}), drop-in:")
    for tuner, rank, ratio in table:
        print(f"  {tuner:44} median rank {rank:4.1f}, /RS {ratio:5.2f}")
    return table


def load_runs(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=sorted(task_suite.TASKS),
        default=list(task_suite.TASKS),
    )
    parser.add_argument(
        "--regimes",
        nargs="+",
        choices=sorted(REGIME_TUNERS),
        default=list(REGIME_TUNERS),
    )
    parser.add_argument(
        "--tuners",
        nargs="+",
        choices=ALL_TUNERS,
        default=list(ALL_TUNERS),
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--only-seeds",
        type=int,
        nargs="+",
        default=None,
        help="summarize these seeds alone (a confirmation on fresh seeds)",
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--summarize", action="store_true")
    parser.add_argument(
        "--markdown", action="store_true", help="with --summarize: docs tables"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--output",
        default=None,
        help=f"results (default {RESULTS}/task_suite_search.jsonl, one "
        "search per line, and its summary beside it; with --quick, the "
        "system's temporary folder)",
    )
    args = parser.parse_args()
    epochs, trials, scale = task_suite.EPOCHS, TRIALS, 1.0
    settings = {"epochs": epochs, "batch_sizes": list(task_suite.BATCH_SIZES)}
    grid_path = RESULTS / "task_suite_grid.json"
    if args.quick:
        epochs, trials, scale = 2, 2, 0.05
        # One seed of the wide regime's baselines and coupled pair, on one
        # task unless named: a smoke test of every code path that matters.
        args.tasks = args.tasks[:1] if len(args.tasks) > 2 else args.tasks
        args.seeds, args.regimes = 1, ["wide"]
        if len(args.tuners) == len(ALL_TUNERS):
            args.tuners = list(BASELINES) + ["batchtune", "batch_hyperband"]
        settings = {"epochs": 2, "batch_sizes": [16, 32], "learning_rates": []}
        grid_path = (
            pathlib.Path(tempfile.gettempdir()) / "suite_quick_grid.json"
        )
    output = pathlib.Path(
        args.output
        or (
            pathlib.Path(tempfile.gettempdir()) / "suite_search_quick.jsonl"
            if args.quick
            else RESULTS / "task_suite_search.jsonl"
        )
    )
    grids = {}
    for name in args.tasks:
        task_settings = dict(settings)
        if args.quick:
            task_settings["learning_rates"] = list(
                task_suite.TASKS[name].grid_learning_rates[2:4]
            )
        grids.update(
            task_suite.load_or_compute(grid_path, [name], task_settings, scale)
        )
    if not args.summarize:
        if not args.resume and output.exists():
            output.unlink()
        done = {
            (r["tuner"], r["task"], r["regime"], r["seed"])
            for r in load_runs(output)
        }
        order = [
            job
            for job in jobs(
                args.tasks, args.regimes, args.tuners, range(args.seeds)
            )
            if job not in done
        ]
        print(f"{len(order)} searches ({len(done)} already done)", flush=True)
        run_all(order, output, epochs, trials, scale, grids, args.workers)
    runs = [
        r
        for r in load_runs(output)
        if r["task"] in grids
        and r["tuner"] in args.tuners
        and (args.only_seeds is None or r["seed"] in args.only_seeds)
    ]
    rule_check = [r for r in runs if r["tuner"] in ADAM_RULE_CHECK[1:]]
    summary = suite_ranking.summarize(
        [r for r in runs if r not in rule_check], grids
    )
    if args.markdown:
        print(suite_ranking.markdown(summary))
        return
    suite_ranking.print_tables(summary)
    rule_table = adam_rule_check(runs, rule_check, grids)
    recommendations = {
        regime: suite_ranking.recommendation(summary, regime)
        for regime in args.regimes
    }
    ours = [name for name in REGIME_TUNERS["wide"] if name.startswith("batch")]
    suite_ranking.print_wide_gap(summary, ours)
    wide = {}
    for name in ours:
        checks = suite_ranking.wide_gap(summary, name)
        wide[name] = {
            "per_task": checks,
            "overall": suite_ranking.wide_gap_overall(checks),
        }
    suffix = ".summary.json"
    if args.only_seeds is not None:
        seeds = "_".join(map(str, args.only_seeds))
        suffix = f".seeds_{seeds}.summary.json"
    summary_path = output.with_suffix(suffix)
    summary_path.write_text(
        json.dumps(
            {
                "date": datetime.date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "settings": {
                    "epochs": epochs,
                    "trials": trials,
                    "batch_range": BATCH_RANGE,
                    "hyperband": HYPERBAND,
                    "batch_hyperband": BATCH_HYPERBAND,
                    "scale": scale,
                },
                "summary": summary,
                "aggregate": {
                    regime: suite_ranking.aggregate(summary, regime)
                    for regime in args.regimes
                },
                "recommendations": recommendations,
                "adam_rule_check": rule_table,
                "wide_gap": wide,
            },
            indent=2,
        )
    )
    print(f"\nresults in {output}, summary in {summary_path}")


if __name__ == "__main__":
    main()
