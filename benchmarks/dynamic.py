"""Benchmark: `DynamicBatchSize` policies against the best fixed batch.

On digits (scikit-learn's bundled data; MLP 64-128-10, SGD momentum 0.9,
LR 0.03 at batch 32, linear rule), for each fixed batch size and each resize
policy (all starting at batch 32), it measures the wall time and the
optimizer updates until the validation accuracy first reaches `--target`,
and the final accuracy; medians over `--seeds` seeds. The best fixed batch is
the one with the shortest median time to target. It also measures the cost
of the noise-scale measurement: seconds per epoch with and without it at a
fixed batch, as a ratio measured in the same run.

Usage:

```
python benchmarks/dynamic.py            # 3 seeds, 15 epochs, target 0.95
python benchmarks/dynamic.py --quick    # smoke test, no timing assertions
```
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras_batchtune  # noqa: E402
from keras_batchtune import demo  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BASE_BATCH_SIZE = 32
BASE_LEARNING_RATE = 0.03


class Clock(keras.callbacks.Callback):
    """Records the wall time and optimizer updates at each epoch end."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.seconds, self.updates = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        self.updates.append(int(self.model.optimizer.iterations))


def build_model(learning_rate):
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def policies(max_batch_size, epochs):
    third = max(1, epochs // 4)
    return {
        "schedule": dict(
            policy="schedule",
            schedule={third: 64, 2 * third: 128, 3 * third: 256},
        ),
        "plateau": dict(policy="plateau", monitor="val_loss", patience=1),
        "noise_scale": dict(policy="noise_scale"),
        "goodput": dict(policy="goodput"),
    }


def run(data, seed, epochs, target, batch_size=None, dynamic=None):
    x, y, x_val, y_val = data
    keras.utils.set_random_seed(seed)
    clock = Clock()
    if dynamic is None:
        learning_rate = keras_batchtune.scale_learning_rate(
            BASE_LEARNING_RATE, batch_size, BASE_BATCH_SIZE
        )
        model = build_model(learning_rate)
        history = model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=0,
            validation_data=(x_val, y_val),
            callbacks=[clock],
        )
    else:
        model = build_model(BASE_LEARNING_RATE)
        train = keras_batchtune.resizable(
            x, y, batch_size=BASE_BATCH_SIZE, seed=seed
        )
        history = model.fit(
            train,
            epochs=epochs,
            verbose=0,
            validation_data=(x_val, y_val),
            callbacks=[dynamic, clock],
        )
    accuracy = history.history["val_accuracy"]
    reached = next((i for i, a in enumerate(accuracy) if a >= target), None)
    return {
        "seconds_to_target": None
        if reached is None
        else clock.seconds[reached],
        "updates_to_target": None
        if reached is None
        else clock.updates[reached],
        "final_accuracy": accuracy[-1],
        "best_accuracy": max(accuracy),
        "batch_sizes": history.history.get("batch_size"),
        "total_seconds": clock.seconds[-1],
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def measurement_cost(data, epochs, repeats):
    """Seconds per epoch with / without the noise-scale measurement.

    Each repeat trains once with and once without the measurement, in
    alternating order (so neither arm always runs on a warmer or busier
    machine), and takes the median seconds per epoch after the first two
    epochs (tracing of the train step and of the measurement); the ratio is
    the median over repeats.
    """
    x, y, _, _ = data
    ratios = []
    for repeat in range(repeats):
        seconds = {}
        order = (False, True) if repeat % 2 == 0 else (True, False)
        for measure in order:
            keras.utils.set_random_seed(repeat)
            model = build_model(BASE_LEARNING_RATE)
            callback = keras_batchtune.DynamicBatchSize(
                "schedule",
                schedule={0: BASE_BATCH_SIZE},
                min_batch_size=BASE_BATCH_SIZE,
                max_batch_size=BASE_BATCH_SIZE,
                measure_noise_scale=measure,
                seed=repeat,
            )
            clock = Clock()
            train = keras_batchtune.resizable(x, y, batch_size=BASE_BATCH_SIZE)
            model.fit(
                train, epochs=epochs, verbose=0, callbacks=[callback, clock]
            )
            ends = clock.seconds[1:]
            seconds[measure] = statistics.median(
                [end - begin for begin, end in zip(ends, ends[1:])]
            )
        ratios.append(seconds[True] / seconds[False])
    return median(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--output",
        default=None,
        help=f"JSON output path (default {RESULTS}/dynamic.json; with "
        "--quick, the system's temporary folder, so that a smoke run never "
        "overwrites recorded results)",
    )
    args = parser.parse_args()
    fixed = [32, 64, 128, 256]
    names = list(policies(args.max_batch_size, args.epochs))
    if args.quick:
        args.seeds, args.epochs, fixed, names = 1, 3, [32], ["schedule"]
    data = demo.load_digits_split()
    rows = {}
    for batch_size in fixed:
        runs = [
            run(data, seed, args.epochs, args.target, batch_size=batch_size)
            for seed in range(args.seeds)
        ]
        rows[f"fixed {batch_size}"] = runs
    for name in names:
        runs = []
        for seed in range(args.seeds):
            config = dict(policies(args.max_batch_size, args.epochs)[name])
            callback = keras_batchtune.DynamicBatchSize(
                config.pop("policy"),
                min_batch_size=BASE_BATCH_SIZE,
                max_batch_size=args.max_batch_size,
                seed=seed,
                **config,
            )
            runs.append(
                run(data, seed, args.epochs, args.target, dynamic=callback)
            )
        rows[name] = runs
    summary = {}
    for name, runs in rows.items():
        summary[name] = {
            key: median([r[key] for r in runs])
            for key in (
                "seconds_to_target",
                "updates_to_target",
                "final_accuracy",
                "total_seconds",
            )
        }
        summary[name]["reached"] = sum(
            r["seconds_to_target"] is not None for r in runs
        )
    fixed_names = [f"fixed {b}" for b in fixed]
    timed = [n for n in fixed_names if summary[n]["seconds_to_target"]]
    best = min(
        timed,
        key=lambda n: summary[n]["seconds_to_target"],
        default=fixed_names[0],
    )
    for name, values in summary.items():
        for key, ratio_key in (
            ("seconds_to_target", "time_ratio"),
            ("updates_to_target", "updates_ratio"),
        ):
            mine, theirs = values[key], summary[best][key]
            values[ratio_key] = mine / theirs if mine and theirs else None
        values["accuracy_delta"] = (
            values["final_accuracy"] - summary[best]["final_accuracy"]
        )
    cost = measurement_cost(
        data, epochs=4 if args.quick else 12, repeats=1 if args.quick else 5
    )
    print(
        f"digits, target val_accuracy {args.target}, {args.seeds} seeds, "
        f"{args.epochs} epochs; best fixed batch: {best}"
    )
    header = (
        f"{'run':<12} {'reached':>7} {'s to target':>11} "
        f"{'x best':>6} {'updates':>7} {'x best':>6} {'final acc':>9}"
    )
    print(header)
    for name, values in summary.items():

        def fmt(value, spec):
            return format(value, spec) if value is not None else "-"

        print(
            f"{name:<12} {values['reached']:>4}/{args.seeds:<2} "
            f"{fmt(values['seconds_to_target'], '11.2f')} "
            f"{fmt(values['time_ratio'], '6.2f')} "
            f"{fmt(values['updates_to_target'], '7.0f')} "
            f"{fmt(values['updates_ratio'], '6.2f')} "
            f"{values['final_accuracy']:9.3f}"
        )
    print(f"noise-scale measurement cost: {cost:.3f}x seconds per epoch")
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(sys.argv),
        "target": args.target,
        "best_fixed": best,
        "summary": summary,
        "runs": rows,
        "measurement_cost_ratio": cost,
    }
    output = pathlib.Path(
        args.output
        or (
            pathlib.Path(tempfile.gettempdir()) / "dynamic_quick.json"
            if args.quick
            else RESULTS / "dynamic.json"
        )
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
