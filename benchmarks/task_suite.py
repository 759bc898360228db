"""A suite of small offline tasks for choosing defaults, and their grids.

Eight tasks of different shapes (nothing downloaded: scikit-learn's bundled
digits and data made here), each an 8-epoch fit of a few seconds on 2 CPU
cores:

- `tabular_narrow_clean`: 4 classes, 20 features, 1% flipped labels; MLP
  64-64; SGD momentum 0.9; `val_accuracy`.
- `tabular_narrow_noisy`: 4 classes, 20 features, 15% flipped; MLP 64-64;
  Adam; `val_accuracy`.
- `tabular_wide_clean`: 4 classes, 200 features, 1% flipped; MLP 128-128;
  Adam; `val_accuracy`.
- `tabular_wide_noisy`: 4 classes, 200 features, 15% flipped; MLP
  128-128; SGD momentum 0.9; `val_accuracy`.
- `regression`: Friedman #1, 10 features, noise 1.0, standardised target;
  MLP 64-64; SGD momentum 0.9; `val_loss` (MSE, minimised).
- `digits_mlp`: bundled digits, 64 features; MLP 128; SGD momentum 0.9;
  `val_accuracy`.
- `digits_convnet`: bundled digits as 8x8x1 images; conv 16 and 32, dense
  10; Adam; `val_accuracy`.
- `sequence`: 40 symbols of 8, how many of two gapped 3-symbol motifs
  (`1 _ 3 _ 5`, each in half of the sequences, with near-miss decoys) are
  present: 0, 1 or 2; 1-D conv 32 of width 5, global max pool; Adam;
  `val_accuracy`.

Tabular and regression tasks have 6,000 examples (4,800 for training),
the sequence task 4,000; the split is fixed (seed 0).

Every task's exhaustive grid, batch 16, 32, ..., 512 x 8 learning rates
(half-decades: SGD 0.001-3.0, Adam 0.0001-0.3; the LR the model trains
with, no coupling), one fit per point at seed 0, is cached in
`benchmarks/results/task_suite_grid.json` (recomputed only when its
settings change). The best point is the task's reference optimum.

The LR regimes of a search are written down here, before any search, and
derived from the grid alone: with `lr32` the best grid LR at batch 32,
`drop-in` is the decade centred on it (`lr32 / sqrt(10)` to
`lr32 * sqrt(10)`: what a practitioner who knows a working LR at batch 32
searches), `wide` the three decades centred on it (`lr32 / 10**1.5` to
`lr32 * 10**1.5`).

Usage:

```
python benchmarks/task_suite.py            # every grid (about 15 min)
python benchmarks/task_suite.py --tasks regression sequence
python benchmarks/task_suite.py --recompute sequence  # after changing it
python benchmarks/task_suite.py --quick    # smoke test: tiny data and grid
```
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BATCH_SIZES = (16, 32, 64, 128, 256, 512)
EPOCHS = 8
SGD_LEARNING_RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
ADAM_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3)
REFERENCE_BATCH_SIZE = 32
# Regime -> half-width in decades around the best LR at batch 32.
REGIME_HALF_DECADES = {"drop-in": 0.5, "wide": 1.5}


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the suite.

    Attributes:
        name: Its name.
        make_data: `scale -> (x, y, x_val, y_val)`; `scale` < 1 keeps that
            fraction of the examples (smoke tests).
        make_model: `learning_rate -> compiled keras.Model`.
        optimizer: `"sgd"` (momentum 0.9) or `"adam"`.
        objective: `"val_accuracy"` (maximised) or `"val_loss"` (minimised).
    """

    name: str
    make_data: Callable
    make_model: Callable
    optimizer: str
    objective: str = "val_accuracy"

    @property
    def direction(self):
        return "min" if self.objective == "val_loss" else "max"

    @property
    def grid_learning_rates(self):
        if self.optimizer == "adam":
            return ADAM_LEARNING_RATES
        return SGD_LEARNING_RATES

    def within_one_point(self, value, optimum):
        """Within 1 point (0.01) of the optimum; 1% of it for a loss.

        The suite's "within 1 point" rule, written down before its searches
        (issue 19), which will count it.
        """
        if value is None:
            return False
        if self.direction == "min":
            return value <= optimum * 1.01 + 1e-9
        return value >= optimum - 0.01 - 1e-6


def _optimizer(kind, learning_rate):
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.SGD(learning_rate, momentum=0.9)


def _classifier(layers, kind, learning_rate):
    model = keras.Sequential(layers)
    model.compile(
        _optimizer(kind, learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _split(features, labels, scale, train_fraction=0.8):
    count = max(64, int(len(features) * scale))
    features, labels = features[:count], labels[:count]
    split = int(train_fraction * len(features))
    mean = features[:split].mean(axis=0)
    std = features[:split].std(axis=0) + 1e-8
    features = ((features - mean) / std).astype("float32")
    return features[:split], labels[:split], features[split:], labels[split:]


def tabular_task(name, features, flip, kind):
    hidden = 64 if features <= 20 else 128

    def make_data(scale=1.0):
        from sklearn.datasets import make_classification

        x, y = make_classification(
            n_samples=6000,
            n_features=features,
            n_informative=min(features, 10 if features <= 20 else 30),
            n_redundant=4,
            n_classes=4,
            n_clusters_per_class=2,
            class_sep=1.0,
            flip_y=flip,
            random_state=0,
        )
        return _split(x, y.astype("int32"), scale)

    def make_model(learning_rate):
        return _classifier(
            [
                keras.Input((features,)),
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(4, activation="softmax"),
            ],
            kind,
            learning_rate,
        )

    return Task(name, make_data, make_model, kind)


def regression_task():
    def make_data(scale=1.0):
        from sklearn.datasets import make_friedman1

        x, y = make_friedman1(n_samples=6000, noise=1.0, random_state=0)
        x_train, y_train, x_val, y_val = _split(x, y, scale)
        mean, std = y_train.mean(), y_train.std()
        return (
            x_train,
            ((y_train - mean) / std).astype("float32"),
            x_val,
            ((y_val - mean) / std).astype("float32"),
        )

    def make_model(learning_rate):
        model = keras.Sequential(
            [
                keras.Input((10,)),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(1),
            ]
        )
        model.compile(_optimizer("sgd", learning_rate), loss="mse")
        return model

    return Task("regression", make_data, make_model, "sgd", "val_loss")


def _digits(scale, images):
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.data))
    features = (digits.data[order] / 16.0).astype("float32")
    labels = digits.target[order].astype("int32")
    count = max(64, int(len(features) * scale))
    features, labels = features[:count], labels[:count]
    if images:
        features = features.reshape(-1, 8, 8, 1)
    split = int(0.8 * len(features))
    return features[:split], labels[:split], features[split:], labels[split:]


def digits_mlp_task():
    def make_model(learning_rate):
        return _classifier(
            [
                keras.Input((64,)),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ],
            "sgd",
            learning_rate,
        )

    return Task(
        "digits_mlp", lambda scale=1.0: _digits(scale, False), make_model, "sgd"
    )


def digits_convnet_task():
    def make_model(learning_rate):
        return _classifier(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(10, activation="softmax"),
            ],
            "adam",
            learning_rate,
        )

    return Task(
        "digits_convnet",
        lambda scale=1.0: _digits(scale, True),
        make_model,
        "adam",
    )


def sequence_task(
    length=40, symbols=8, motifs=((1, 3, 5), (6, 2, 4)), gap=2, decoys=2
):
    """How many of two gapped motifs are in a random sequence: 0, 1 or 2?

    A motif is three symbols `gap` apart (`1 _ 3 _ 5`); each is present
    in half of the sequences, independently, and every sequence also holds
    `decoys` near-misses (a motif with one symbol wrong), so that finding
    one symbol pair is not enough.
    """
    span = gap * (len(motifs[0]) - 1) + 1

    def starts(row, motif):
        return [
            start
            for start in range(length - span + 1)
            if all(row[start + gap * i] == m for i, m in enumerate(motif))
        ]

    def plant(row, motif, start, wrong=None, rng=None):
        for i, symbol in enumerate(motif):
            if i == wrong:
                symbol = (symbol + 1 + rng.integers(0, symbols - 1)) % symbols
            row[start + gap * i] = symbol

    def make_data(scale=1.0):
        rng = np.random.default_rng(0)
        count = max(64, int(4000 * scale))
        tokens = rng.integers(0, symbols, size=(count, length))
        present = rng.random((count, len(motifs))) < 0.5
        for row, flags in zip(tokens, present):
            for _ in range(decoys):
                motif = motifs[rng.integers(0, len(motifs))]
                start = rng.integers(0, length - span + 1)
                plant(row, motif, start, rng.integers(0, len(motif)), rng)
            # Remove chance occurrences, then plant the motifs drawn.
            for motif in motifs:
                while found := starts(row, motif):
                    row[found[0]] = (row[found[0]] + 1) % symbols
            for motif, flag in zip(motifs, flags):
                if flag:
                    plant(row, motif, rng.integers(0, length - span + 1))
        labels = present.sum(axis=1).astype("int32")
        features = np.eye(symbols, dtype="float32")[tokens]
        split = int(0.8 * count)
        return (
            features[:split],
            labels[:split],
            features[split:],
            labels[split:],
        )

    def make_model(learning_rate):
        return _classifier(
            [
                keras.Input((length, symbols)),
                keras.layers.Conv1D(32, span, activation="relu"),
                keras.layers.GlobalMaxPooling1D(),
                keras.layers.Dense(len(motifs) + 1, activation="softmax"),
            ],
            "adam",
            learning_rate,
        )

    return Task("sequence", make_data, make_model, "adam")


TASKS = {
    task.name: task
    for task in (
        tabular_task("tabular_narrow_clean", 20, 0.01, "sgd"),
        tabular_task("tabular_narrow_noisy", 20, 0.15, "adam"),
        tabular_task("tabular_wide_clean", 200, 0.01, "adam"),
        tabular_task("tabular_wide_noisy", 200, 0.15, "sgd"),
        regression_task(),
        digits_mlp_task(),
        digits_convnet_task(),
        sequence_task(),
    )
}


def best_of_history(task, history):
    """The best epoch's objective of a fit (NaN epochs ignored)."""
    values = [v for v in history[task.objective] if math.isfinite(v)]
    if not values:
        return None
    return min(values) if task.direction == "min" else max(values)


def compute_grid(task, batch_sizes, learning_rates, epochs, scale=1.0):
    """One plain `model.fit` per (batch, LR) point, seed 0."""
    x, y, x_val, y_val = task.make_data(scale)
    points = []
    for learning_rate in learning_rates:
        for batch_size in batch_sizes:
            keras.utils.set_random_seed(0)
            model = task.make_model(learning_rate)
            start = time.perf_counter()
            history = model.fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                validation_data=(x_val, y_val),
                verbose=0,
            ).history
            points.append(
                {
                    "batch_size": batch_size,
                    "learning_rate": learning_rate,
                    "objective": best_of_history(task, history),
                    "fit_seconds": time.perf_counter() - start,
                }
            )
            keras.backend.clear_session()
    return points


def grid_optimum(task, points):
    """The best grid point (the reference optimum)."""
    scored = [p for p in points if p["objective"] is not None]
    best = max if task.direction == "max" else min
    return best(scored, key=lambda p: p["objective"])


def learning_rate_regimes(task, points):
    """`{"drop-in": (low, high), "wide": (low, high)}` from the grid."""
    at_reference = [
        p
        for p in points
        if p["batch_size"] == REFERENCE_BATCH_SIZE
        and p["objective"] is not None
    ]
    center = grid_optimum(task, at_reference)["learning_rate"]
    return {
        regime: (
            float(center / 10**half_width),
            float(center * 10**half_width),
        )
        for regime, half_width in REGIME_HALF_DECADES.items()
    }


def load_or_compute(path, task_names, settings, scale=1.0, recompute=()):
    """Every task's cached grid entry (computed where missing or stale, or
    named in `recompute`: a task whose definition changed)."""
    cached = json.loads(path.read_text()) if path.exists() else {}
    entries = {}
    for name in task_names:
        task = TASKS[name]
        task_settings = dict(
            settings,
            learning_rates=list(
                settings.get("learning_rates") or task.grid_learning_rates
            ),
        )
        entry = None if name in recompute else cached.get(name)
        if not entry or entry.get("settings") != task_settings:
            print(f"grid {name}: computing", flush=True)
            start = time.perf_counter()
            points = compute_grid(
                task,
                task_settings["batch_sizes"],
                task_settings["learning_rates"],
                task_settings["epochs"],
                scale,
            )
            entry = {
                "settings": task_settings,
                "date": datetime.date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "backend": keras.config.backend(),
                "seconds": time.perf_counter() - start,
                "points": points,
            }
            entry["optimum"] = grid_optimum(task, points)
            entry["regimes"] = learning_rate_regimes(task, points)
            cached[name] = entry
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cached, indent=2))
        entries[name] = entry
    return entries


def print_grid(name, entry):
    task = TASKS[name]
    points = entry["points"]
    rates = sorted({p["learning_rate"] for p in points})
    optimum = entry["optimum"]
    print(
        f"\n{name} ({task.optimizer}, {task.objective}): optimum "
        f"{optimum['objective']:.4f} at batch {optimum['batch_size']}, "
        f"LR {optimum['learning_rate']:g}; regimes "
        + ", ".join(
            f"{regime} {low:.2g}-{high:.2g}"
            for regime, (low, high) in entry["regimes"].items()
        )
    )
    print(f"{'batch':>5} " + " ".join(f"{r:>7g}" for r in rates) + "  fit s")
    for batch_size in sorted({p["batch_size"] for p in points}):
        row = {
            p["learning_rate"]: p
            for p in points
            if p["batch_size"] == batch_size
        }
        cells = " ".join(
            "      -"
            if row[r]["objective"] is None
            else f"{row[r]['objective']:7.4f}"
            for r in rates
        )
        seconds = np.median([p["fit_seconds"] for p in row.values()])
        print(f"{batch_size:>5} {cells} {seconds:6.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS)
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--recompute",
        nargs="+",
        choices=sorted(TASKS),
        default=[],
        help="tasks whose cached grid is computed again (after a change to "
        "their definition, which the cache's settings do not record)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help=f"grid cache (default {RESULTS}/task_suite_grid.json; with "
        "--quick, the system's temporary folder)",
    )
    args = parser.parse_args()
    settings = {"epochs": EPOCHS, "batch_sizes": list(BATCH_SIZES)}
    scale = 1.0
    if args.quick:
        settings = {
            "epochs": 1,
            "batch_sizes": [32, 64],
            "learning_rates": [0.01],
        }
        scale = 0.05
    path = pathlib.Path(
        args.output
        or (
            pathlib.Path(tempfile.gettempdir()) / "task_suite_quick.json"
            if args.quick
            else RESULTS / "task_suite_grid.json"
        )
    )
    entries = load_or_compute(path, args.tasks, settings, scale, args.recompute)
    for name, entry in entries.items():
        print_grid(name, entry)
    print(f"\ngrids in {path}")


if __name__ == "__main__":
    main()
