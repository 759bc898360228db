"""Benchmark: BatchTuner against KerasTuner's tuners on compute-bound work.

On `workloads.py`'s convnet and transformer, every search in a fresh
process: KerasTuner's `RandomSearch`, `BayesianOptimization` and
`Hyperband` (`max_epochs` = the workload's full budget, `factor=3`,
`hyperband_iterations=2`; the batch size sampled in `HyperModel.fit`, the LR
independent) against BatchTuner at the settings the task suite recommends
(`suite_search.py`; by default `batchtune` and `batchtune
successive_halving min_epochs=4`, each also read with `tolerance=0.005`).
Batch sizes 16-1024 (powers of two); the LR range is the decade centred on
the workload's base LR (the LR at batch 32 for BatchTuner, the LR used for
KerasTuner's tuners).

Reported per workload and tuner (medians over seeds): the best validation
accuracy after 4, 8 and 12 trials and of the whole search; the search
seconds and, per seed, their ratio to RandomSearch's and to Hyperband's;
the chosen configuration (`get_best_hyperparameters()`; for `tolerance`,
the fastest within half a point of the best) and its fit seconds: a plain
`model.fit` of it (its batch, the LR it trained with, the full epochs),
timed after the search in the same process, as a ratio to RandomSearch's
chosen one. Issue 16's targets are checked per workload: at equal accuracy
(median best within 0.5 point of RandomSearch's), the chosen configuration
trains in <= 0.5x RandomSearch's chosen one and the whole search takes
<= 0.7x; against Hyperband, a higher median best at equal or lower search
time.

Usage:

```
python benchmarks/workload_search.py --scale 0.25 --seeds 3
KERAS_BACKEND=jax python benchmarks/workload_search.py --scale 1.0
python benchmarks/workload_search.py --scale 0.25 --seeds 3 --resume
python benchmarks/workload_search.py --quick    # smoke test
```

`--resume` keeps the searches already in `--output` (made with the same
scale, epochs and trials) and runs the others, so that a run cut short, or
one spread over several sessions, loses no finished search.
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
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import suite_ranking  # noqa: E402
import suite_search  # noqa: E402
import workloads  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BATCH_RANGE = (16, 1024)
TUNERS = (
    "randomsearch",
    "bayesian",
    "hyperband",
    "batchtune",
    "batchtune successive_halving min_epochs=4",
)
TOLERANCE = 0.005
FIT_TARGET = 0.5
SEARCH_TARGET = 0.7


def chosen_configuration(name, tuner):
    """`(batch size, LR trained with)` of the best trial."""
    best = tuner.oracle.get_best_trials(1)
    if not best:
        return None
    values = best[0].hyperparameters.values
    batch_size = values["batch_size"]
    learning_rate = values["learning_rate"]
    if name not in suite_search.KERAS_TUNER:
        # BatchTuner's learning rate is the one at batch 32, coupled.
        learning_rate *= batch_size / workloads.REFERENCE_BATCH_SIZE
    return batch_size, learning_rate


def timed_fit(workload, configuration, data, epochs):
    """A plain fit of `configuration`: its seconds and best accuracy."""
    import keras

    x, y, x_val, y_val = data
    batch_size, learning_rate = configuration
    keras.utils.set_random_seed(0)
    model = workload.make_model(learning_rate)
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        verbose=0,
    ).history
    seconds = time.perf_counter() - start
    keras.backend.clear_session()
    return {
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "fit_seconds": seconds,
        "val_accuracy": max(history["val_accuracy"]),
    }


def run_search(name, workload_name, seed, scale, epochs, trials):
    """One search in this (fresh) process, and its picks' plain fits."""
    import keras

    workload = workloads.WORKLOADS[workload_name]
    data = workload.make_data(scale)
    x, y = data[:2]
    # Untimed warm-up: a process's first fit pays the framework's start-up.
    workload.make_model(workload.base_learning_rate).fit(
        x[:32], y[:32], batch_size=32, epochs=1, verbose=0
    )
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    seconds, records, picks = suite_search.search_with_picks(
        name,
        workload,
        workload.learning_rate_range,
        seed,
        epochs,
        trials,
        data,
        lambda tuner: chosen_configuration(name, tuner),
        TOLERANCE,
        BATCH_RANGE,
    )
    chosen = {
        pick: timed_fit(workload, configuration, data, epochs)
        for pick, configuration in picks.items()
        if configuration is not None
    }
    return {
        "machine": machine(),
        "backend": keras.config.backend(),
        "keras": keras.__version__,
        "tuner": name,
        "workload": workload_name,
        "seed": seed,
        "search_seconds": seconds,
        "trials": records,
        "chosen": chosen,
    }


def summarize(runs):
    """Medians per (workload, tuner), per-seed ratios and the targets."""
    summary = {}
    for workload_name in dict.fromkeys(r["workload"] for r in runs):
        workload = workloads.WORKLOADS[workload_name]
        by_tuner = {}
        for run in runs:
            if run["workload"] == workload_name:
                by_tuner.setdefault(run["tuner"], {})[run["seed"]] = run
        rows = {}
        for tuner, seeds in by_tuner.items():
            for pick in ("default", "tolerance"):
                mine = {s: r for s, r in seeds.items() if pick in r["chosen"]}
                if not mine:
                    continue
                row = _row(workload, mine, by_tuner, pick)
                rows[tuner if pick == "default" else f"{tuner} {pick}"] = row
        for row in rows.values():
            _check_targets(row, rows)
        summary[workload_name] = rows
    return summary


def _row(workload, seeds, by_tuner, pick):
    median = suite_ranking.median
    row = {"seeds": len(seeds)}
    for n in suite_ranking.CHECKPOINTS:
        row[f"best_after_{n}"] = median(
            suite_ranking.best_after(workload, r, n) for r in seeds.values()
        )
    row["best_final"] = median(
        suite_ranking.best_after(workload, r) for r in seeds.values()
    )
    row["search_seconds"] = median(r["search_seconds"] for r in seeds.values())
    row["chosen_fit_seconds"] = median(
        r["chosen"][pick]["fit_seconds"] for r in seeds.values()
    )
    row["chosen_val_accuracy"] = median(
        r["chosen"][pick]["val_accuracy"] for r in seeds.values()
    )
    row["chosen_batch_size"] = statistics.median_low(
        r["chosen"][pick]["batch_size"] for r in seeds.values()
    )
    for baseline in ("randomsearch", "hyperband"):
        theirs = by_tuner.get(baseline, {})
        row[f"search_ratio_to_{baseline}"] = suite_ranking._per_seed_ratio(
            seeds, theirs, lambda r: r["search_seconds"]
        )
    row["chosen_fit_ratio_to_randomsearch"] = suite_ranking._per_seed_ratio(
        seeds,
        by_tuner.get("randomsearch", {}),
        lambda r: r["chosen"][pick]["fit_seconds"],
        lambda r: r["chosen"]["default"]["fit_seconds"],
    )
    return row


def _check_targets(row, rows):
    baseline = rows.get("randomsearch")
    hyperband = rows.get("hyperband")
    if baseline:
        row["equal_accuracy"] = (
            row["best_final"]
            >= baseline["best_final"] - suite_ranking.HALF_POINT - 1e-6
        )
        fit, search = (
            row["chosen_fit_ratio_to_randomsearch"],
            row["search_ratio_to_randomsearch"],
        )
        row["fit_target_met"] = bool(
            row["equal_accuracy"] and fit is not None and fit <= FIT_TARGET
        )
        row["search_target_met"] = bool(
            row["equal_accuracy"]
            and search is not None
            and search <= SEARCH_TARGET
        )
    if hyperband:
        ratio = row["search_ratio_to_hyperband"]
        row["beats_hyperband"] = bool(
            row["best_final"] > hyperband["best_final"]
            and ratio is not None
            and ratio <= 1.0
        )


def print_tables(summary):
    fmt = suite_ranking.fmt
    for workload_name, rows in summary.items():
        print(f"\n{workload_name}:")
        print(
            f"{'tuner':52} {'best 4/8/12/end':>23} {'s':>7} {'/RS':>5} "
            f"{'/HB':>5} {'batch':>5} {'fit s':>6} {'fit/RS':>6} targets"
        )
        for tuner, row in rows.items():
            bests = suite_ranking.best_columns(row, "/")
            marks = " ".join(
                f"{key}={'yes' if row[key] else 'no'}"
                for key in ("fit_target_met", "search_target_met")
                if key in row
            )
            if "beats_hyperband" in row:
                marks += f" >HB={'yes' if row['beats_hyperband'] else 'no'}"
            print(
                f"{tuner:52} {bests:>23} {row['search_seconds']:7.1f} "
                f"{fmt(row['search_ratio_to_randomsearch'], '5.2f')} "
                f"{fmt(row['search_ratio_to_hyperband'], '5.2f')} "
                f"{row['chosen_batch_size']:>5} "
                f"{row['chosen_fit_seconds']:6.1f} "
                f"{fmt(row['chosen_fit_ratio_to_randomsearch'], '6.2f')} "
                f"{marks}"
            )


def cpu_model():
    """The CPU's model name (Linux's `/proc/cpuinfo`), else the architecture."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def machine():
    """The CPU and, where one is used, the accelerator."""
    import keras

    description = f"{cpu_model()}, {os.cpu_count()} CPUs"
    if keras.config.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            description += f", {device.device_kind}"
    elif keras.config.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            description += f", {torch.cuda.get_device_name()}"
    return description


def write(output, args, runs):
    """Writes the runs so far and their summary (a run cut short keeps
    every finished search); returns the summary. The machine is described
    by the search processes: this one never touches an accelerator."""
    summary = summarize(runs)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "date": datetime.date.today().isoformat(),
                "machine": runs[0]["machine"],
                "backend": runs[0]["backend"],
                "keras": runs[0]["keras"],
                "settings": {
                    "scale": args.scale,
                    "epochs": args.epochs,
                    "trials": args.trials,
                    "seeds": args.seeds,
                    "batch_range": BATCH_RANGE,
                    "workers": args.workers,
                },
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
    )
    return summary


def recorded_runs(output, args):
    """The searches already in `output`, if it was made with these settings.

    Raises:
        SystemExit: if `output` holds searches of another scale, epoch
            budget or trial count, which cannot be summarized together.
    """
    if not output.exists():
        return []
    recorded = json.loads(output.read_text())
    for key in ("scale", "epochs", "trials"):
        if recorded["settings"][key] != getattr(args, key):
            sys.exit(
                f"--resume: {output} was made with {key}="
                f"{recorded['settings'][key]!r}, not {getattr(args, key)!r}"
            )
    return recorded["runs"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=sorted(workloads.WORKLOADS),
        default=list(workloads.WORKLOADS),
    )
    parser.add_argument("--tuners", nargs="+", default=list(TUNERS))
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the searches already in --output, run the others",
    )
    args = parser.parse_args()
    if args.quick:
        args.scale, args.epochs, args.trials, args.seeds = 0.01, 2, 2, 1
        # The cheapest workload, one KerasTuner tuner and BatchTuner (with
        # its tolerance pick): every code path of a search and a summary.
        args.workloads = ["transformer"]
        if args.tuners == list(TUNERS):
            args.tuners = ["randomsearch", "batchtune"]
    output = pathlib.Path(
        args.output
        or (
            pathlib.Path(tempfile.gettempdir()) / "workload_search_quick.json"
            if args.quick
            else RESULTS / "workload_search.json"
        )
    )
    runs = recorded_runs(output, args) if args.resume else []
    done = {(r["tuner"], r["workload"], r["seed"]) for r in runs}
    order = [
        (name, workload_name, seed)
        for seed in range(args.seeds)
        for workload_name in args.workloads
        for name in args.tuners[seed % len(args.tuners) :]
        + args.tuners[: seed % len(args.tuners)]
        if (name, workload_name, seed) not in done
    ]
    print(f"{len(order)} searches ({len(done)} already done)", flush=True)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        args.workers, mp_context=context, max_tasks_per_child=1
    ) as pool:
        futures = [
            pool.submit(
                run_search,
                name,
                workload_name,
                seed,
                args.scale,
                args.epochs or workloads.WORKLOADS[workload_name].epochs,
                args.trials,
            )
            for name, workload_name, seed in order
        ]
        for finished, future in enumerate(
            concurrent.futures.as_completed(futures), 1
        ):
            run = future.result()
            runs.append(run)
            write(output, args, runs)
            print(
                f"[{finished}/{len(order)}] {run['workload']} / {run['tuner']} "
                f"seed {run['seed']}: {run['search_seconds']:.1f} s",
                flush=True,
            )
    print_tables(write(output, args, runs))
    print(f"\nresults in {output}")


if __name__ == "__main__":
    main()
