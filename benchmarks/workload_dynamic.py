"""Benchmark: `DynamicBatchSize` policies on the compute-bound workloads.

On each workload of `workloads.py` at `--scale`, it trains fixed batches
(`--batch-sizes`) at the LR scaled linearly from the workload's base LR at
batch 32, and each resize policy of `dynamic.py` (schedule, plateau,
noise_scale, goodput) from batch 32 up to the largest fixed batch with the
LR coupled by the same rule, all for the workload's epoch budget. Per run:
the wall seconds, epochs and optimizer updates until the validation
accuracy first reaches the workload's target (None if never), the final and
best validation accuracy and the batch size of each epoch. Each
(configuration, seed) runs in a fresh process, one at a time, after an
untimed one-step warm-up fit, so that framework start-up is not timed
(`--quick` runs them all in one fresh process, to stay short).

Summary per workload, medians over seeds (a run that never reaches the
target counts as infinitely slow): the best fixed batch is the one with the
shortest median time to target among those reaching it in every seed; each
policy gets its time ratio to it, its final accuracy difference to it in
points, and a pass mark for issue 16's target: reached in every seed, in at
most 0.75x the best fixed batch's time, with a final accuracy at most 0.5
point below (Smith et al. 2018, arXiv 1711.00489: the same curves in fewer
updates; Seesaw, arXiv 2510.14717: the same loss in ~36% less time).

Usage:

```
python benchmarks/workload_dynamic.py           # both workloads, 3 seeds
python benchmarks/workload_dynamic.py --quick   # smoke test, target 0.0
python benchmarks/workload_dynamic.py --summarize --output RESULT.json
KERAS_BACKEND=jax python benchmarks/workload_dynamic.py --scale 1.0
```
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import keras  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import dynamic  # noqa: E402
import workloads  # noqa: E402

import keras_batchtune  # noqa: E402

RESULTS = HERE / "results"
BASE_BATCH_SIZE = workloads.REFERENCE_BATCH_SIZE
POLICY_NAMES = tuple(dynamic.policies(512, 6))
MAX_TIME_RATIO = 0.75
MAX_ACCURACY_LOSS_POINTS = 0.5
TO_TARGET_KEYS = ("seconds_to_target", "epochs_to_target", "updates_to_target")
# The workloads this process has warmed up on.
WARMED_UP = set()


def environment():
    """This process's backend versions and accelerator (None on CPU)."""
    backend, accelerator = keras.config.backend(), None
    if backend == "jax":
        import jax as framework

        device = framework.devices()[0]
        if device.platform != "cpu":
            accelerator = device.device_kind
    elif backend == "torch":
        import torch as framework

        if framework.cuda.is_available():
            accelerator = framework.cuda.get_device_name()
    else:
        import tensorflow as framework

        for gpu in framework.config.list_physical_devices("GPU")[:1]:
            details = framework.config.experimental.get_device_details(gpu)
            accelerator = details.get("device_name", gpu.name)
    versions = {"keras": keras.__version__, "framework": framework.__version__}
    return {"backend": backend, **versions, "accelerator": accelerator}


def run_task(task):
    """One (workload, configuration, seed) run; an error is recorded."""
    try:
        record = train(**task)
    except Exception as error:  # noqa: BLE001 - the other runs go on
        record = {"error": f"{type(error).__name__}: {error}"}
    return {**task, **record, "environment": environment()}


def train(
    workload, run, seed, scale, epochs, target, max_batch_size, batch_size
):
    """Trains one configuration (`batch_size` None: the policy `run`)."""
    spec = workloads.WORKLOADS[workload]
    x, y, x_val, y_val = spec.make_data(scale)
    if workload not in WARMED_UP:  # Untimed: the framework's start-up.
        WARMED_UP.add(workload)
        size = batch_size or BASE_BATCH_SIZE
        few = dict(x=x[:size], y=y[:size], batch_size=size, verbose=0)
        spec.make_model(spec.base_learning_rate).fit(
            **few, validation_data=(x_val[:size], y_val[:size])
        )
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    clock = dynamic.Clock()
    learning_rate = keras_batchtune.scale_learning_rate(
        spec.base_learning_rate,
        batch_size or BASE_BATCH_SIZE,
        BASE_BATCH_SIZE,
        rule="linear",
    )
    if batch_size is not None:
        inputs, callbacks = (x, y), [clock]
        batching = {"batch_size": batch_size}
    else:
        config = dict(dynamic.policies(max_batch_size, epochs)[run])
        resizer = keras_batchtune.DynamicBatchSize(
            config.pop("policy"),
            min_batch_size=BASE_BATCH_SIZE,
            max_batch_size=max_batch_size,
            lr_scaling="linear",
            seed=seed,
            **config,
        )
        data = keras_batchtune.resizable(
            x, y, batch_size=BASE_BATCH_SIZE, seed=seed
        )
        inputs, batching, callbacks = (data,), {}, [resizer, clock]
    model = spec.make_model(learning_rate)
    history = model.fit(
        *inputs,
        epochs=epochs,
        verbose=0,
        validation_data=(x_val, y_val),
        callbacks=callbacks,
        **batching,
    ).history
    accuracy = [float(value) for value in history["val_accuracy"]]
    reached = next((i for i, a in enumerate(accuracy) if a >= target), None)

    def at_target(values):
        return None if reached is None else values[reached]

    return {
        "learning_rate": learning_rate,
        "seconds_to_target": at_target(clock.seconds),
        "epochs_to_target": at_target(range(1, epochs + 1)),
        "updates_to_target": at_target(clock.updates),
        "final_accuracy": accuracy[-1],
        "best_accuracy": max(accuracy),
        "batch_sizes": [
            int(size)
            for size in history.get("batch_size", [batch_size] * epochs)
        ],
        "val_accuracy": accuracy,
        "epoch_end_seconds": clock.seconds,
    }


def tracing_share(run):
    """The first epoch's extra seconds over a steady epoch (tracing and
    compilation of the train and validation steps) as a share of the time
    to target; None for a policy run (it retraces at each new batch size),
    a run that never reached the target or one of fewer than 3 epochs."""
    seconds = run.get("epoch_end_seconds") or []
    if run.get("batch_size") is None or run.get("seconds_to_target") is None:
        return None
    if len(seconds) < 3:
        return None
    steady = statistics.median(b - a for a, b in zip(seconds[1:], seconds[2:]))
    return max(0.0, seconds[0] - steady) / run["seconds_to_target"]


def median_to_target(values):
    """Median where None (never reached) counts as infinitely slow."""
    value = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(value) else value


def summarize(runs, names, fixed_names, seeds):
    """Per configuration medians, the best fixed batch and the pass marks."""
    rows = {}
    for name in names:
        mine = [r for r in runs if r["run"] == name]
        rows[name] = {
            "reached": sum(r.get("epochs_to_target") is not None for r in mine),
            "errors": sum("error" in r for r in mine),
        }
        for key in TO_TARGET_KEYS:
            rows[name][key] = median_to_target([r.get(key) for r in mine])
        for key in ("final_accuracy", "best_accuracy"):
            rows[name][key] = dynamic.median([r.get(key) for r in mine])
        shares = [tracing_share(r) for r in mine]
        rows[name]["tracing_share"] = dynamic.median(shares)
    always = [n for n in fixed_names if rows[n]["reached"] == seeds]
    best = min(always, key=lambda n: rows[n]["seconds_to_target"], default=None)
    for name, row in rows.items():
        row["time_ratio"] = row["accuracy_delta_points"] = row["passes"] = None
        if best is None:
            continue
        seconds, final = row["seconds_to_target"], row["final_accuracy"]
        if seconds is not None:
            row["time_ratio"] = seconds / rows[best]["seconds_to_target"]
        if final is not None:
            difference = final - rows[best]["final_accuracy"]
            row["accuracy_delta_points"] = 100 * difference
        if name not in fixed_names:
            row["passes"] = (
                row["reached"] == seeds
                and row["time_ratio"] <= MAX_TIME_RATIO
                and row["accuracy_delta_points"] >= -MAX_ACCURACY_LOSS_POINTS
            )
    return {"best_fixed": best, "rows": rows}


def fmt(value, spec):
    """`value` formatted by `spec`, or "-" as wide for None."""
    if value is None:
        return "-".rjust(len(format(0, spec)))
    return format(value, spec)


def print_table(workload, summary, runs, seeds, settings):
    """Prints one workload's summary."""
    print(
        f"\n{workload}: target val_accuracy {settings['target']}, "
        f"{settings['epochs']} epochs, {seeds} seeds; best fixed batch: "
        f"{summary['best_fixed'] or 'none reached the target in every seed'}"
    )
    print(
        f"{'run':<12} {'reached':>7} {'s to target':>11} {'x best':>6} "
        f"{'epochs':>6} {'final acc':>9} {'d points':>8} {'pass':>4} "
        f"{'tracing':>7}  batch sizes (seed 0)"
    )
    for name, row in summary["rows"].items():
        first = next((r for r in runs if r["run"] == name), {})
        sizes = " ".join(map(str, first.get("batch_sizes") or ["error"]))
        passes = {None: "", True: "yes", False: "no"}[row["passes"]]
        print(
            f"{name:<12} {row['reached']:>4}/{seeds:<2} "
            f"{fmt(row['seconds_to_target'], '11.2f')} "
            f"{fmt(row['time_ratio'], '6.2f')} "
            f"{fmt(row['epochs_to_target'], '6.1f')} "
            f"{fmt(row['final_accuracy'], '9.3f')} "
            f"{fmt(row['accuracy_delta_points'], '+8.2f')} {passes:>4} "
            f"{fmt(row.get('tracing_share'), '7.1%')}  {sizes}"
        )


def parse_args():
    """The command line; `--quick` sets the smoke-test sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=sorted(workloads.WORKLOADS),
        default=list(workloads.WORKLOADS),
    )
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, help="default: the workload's")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512]
    )
    parser.add_argument(
        "--policies", nargs="+", choices=POLICY_NAMES, default=POLICY_NAMES
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, help="default: the workload's")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: scale 0.01, 2 epochs, batches 32 64, 1 seed, "
        "target 0.0, all runs in one worker process",
    )
    parser.add_argument(
        "--output",
        help=f"JSON path (default {RESULTS}/workload_dynamic.json; with "
        "--quick, workload_dynamic_quick.json in the temporary folder)",
    )
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="no training: the summary and tables again from --output",
    )
    args = parser.parse_args()
    if args.quick:
        args.scale, args.epochs, args.seeds, args.target = 0.01, 2, 1, 0.0
        args.batch_sizes = [32, 64]
        temporary = pathlib.Path(tempfile.gettempdir())
        args.output = args.output or temporary / "workload_dynamic_quick.json"
    args.output = pathlib.Path(
        args.output or RESULTS / "workload_dynamic.json"
    ).resolve()
    if args.quick and RESULTS in args.output.parents:
        parser.error("--quick never writes into benchmarks/results/")
    return args


def run_all(tasks, one_task_per_process):
    """Runs the tasks one at a time in spawned processes; their records."""
    runs = []
    with concurrent.futures.ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        max_tasks_per_child=1 if one_task_per_process else None,
    ) as pool:
        for done, record in enumerate(pool.map(run_task, tasks), 1):
            runs.append(record)
            seconds = record.get("seconds_to_target")
            reached = "never" if seconds is None else f"at {seconds:.2f} s"
            outcome = record.get("error") or (
                f"target {reached}, final {record['final_accuracy']:.3f}"
            )
            print(
                f"[{done}/{len(tasks)}] {record['workload']} {record['run']} "
                f"seed {record['seed']}: {outcome}",
                flush=True,
            )
    return runs


def resummarize(path):
    """Recomputes the summary of a recorded JSON, prints and rewrites it."""
    result = json.loads(path.read_text())
    settings = result["settings"]
    fixed_names = [f"fixed {size}" for size in settings["batch_sizes"]]
    names = fixed_names + list(settings["policies"])
    for workload, values in settings["per_workload"].items():
        mine = [run for run in result["runs"] if run["workload"] == workload]
        summary = summarize(mine, names, fixed_names, settings["seeds"])
        result["summary"][workload] = summary
        print_table(workload, summary, mine, settings["seeds"], values)
    path.write_text(json.dumps(result, indent=2))
    print(f"\nrewritten: {path}")


def main():
    """Runs every (workload, configuration, seed); prints and writes."""
    args = parse_args()
    if args.summarize:
        return resummarize(args.output)
    max_batch_size = max(args.batch_sizes)
    fixed = {f"fixed {size}": size for size in args.batch_sizes}
    configurations = {**fixed, **dict.fromkeys(args.policies)}
    settings, tasks = {}, []
    for workload in args.workloads:
        spec = workloads.WORKLOADS[workload]
        epochs = args.epochs or spec.epochs
        target = spec.target if args.target is None else args.target
        policies = dynamic.policies(max_batch_size, epochs)
        settings[workload] = {
            "epochs": epochs,
            "target": target,
            "policies": {name: policies[name] for name in args.policies},
        }
        common = {"workload": workload, "scale": args.scale, "epochs": epochs}
        common.update(target=target, max_batch_size=max_batch_size)
        tasks += [
            {**common, "run": run, "seed": seed, "batch_size": size}
            for seed in range(args.seeds)
            for run, size in configurations.items()
        ]
    runs = run_all(tasks, one_task_per_process=not args.quick)
    first = [run.pop("environment") for run in runs][0]
    summaries = {}
    for workload, values in settings.items():
        mine = [run for run in runs if run["workload"] == workload]
        summaries[workload] = summarize(
            mine, list(configurations), list(fixed), args.seeds
        )
        print_table(workload, summaries[workload], mine, args.seeds, values)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "accelerator": first["accelerator"],
        },
        "backend": {
            key: first[key] for key in ("backend", "keras", "framework")
        },
        "command": " ".join(sys.argv),
        "settings": {
            **vars(args),
            "output": str(args.output),
            "base_batch_size": BASE_BATCH_SIZE,
            "max_batch_size": max_batch_size,
            "lr_scaling": "linear",
            "one_task_per_process": not args.quick,
            "max_time_ratio": MAX_TIME_RATIO,
            "max_accuracy_loss_points": MAX_ACCURACY_LOSS_POINTS,
            "per_workload": settings,
        },
        "summary": summaries,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.output}")
    failed = [f"{r['workload']} {r['run']}" for r in runs if "error" in r]
    if failed:
        sys.exit(f"{len(failed)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
