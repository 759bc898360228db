"""Benchmark: the wall-time overhead of a `BatchTuner` trial.

One training configuration (an MLP 64-128-10 on the digits dataset, SGD with
momentum, fixed batch size, learning rate and epochs) is run three ways:

- `plain`: build, compile and `model.fit(..., batch_size=B)`;
- `batchtune`: one trial of `keras_batchtune.BatchTuner`, the batch size given
  as `hp.Fixed("batch_size", B)` and `base_batch_size=B`, so the coupled
  learning rate is the compiled one and the trial trains the same model;
- `randomsearch`: one trial of `keras_tuner.RandomSearch`, `batch_size=B`
  passed to `search()`.

A trial's wall time is the time of `tuner.search(...)` (`max_trials=1`); the
tuner's constructor, which builds the model once to discover the search space,
is timed apart as `setup`. The three are run interleaved, in a rotating order,
after one discarded warm-up round. Reported, as medians of per-round ratios:

- (a) `batchtune` trial / `plain` build+compile+fit: the issue's number,
  target <= 1.03;
- (b) `batchtune` trial / `randomsearch` trial: what keras_batchtune adds on
  top of KerasTuner;
- (c) the trial's own `fit_seconds` record / `plain` fit seconds: the cost of
  the wrapped `model.fit` alone;
- (d) `randomsearch` trial / `plain` build+compile+fit: KerasTuner's own
  per-trial cost, for reference.

It runs on the Keras backend given by `--backend` (default: `KERAS_BACKEND`,
else TensorFlow), set before Keras is imported. On JAX it also counts the XLA
compilations of a search (`--compile-trials`, 12 by default): a new batch
shape is a new compilation of the train (and test) step, so the count is
reported beside the number of distinct batch sizes, for `BatchTuner` and for
`keras_tuner.RandomSearch` searching the batch size in `HyperModel.fit`
(compilations counted with `jax.monitoring`'s compile events, by function).

A table is printed and the raw timings are written as JSON (by default to
`benchmarks/results/overhead_<backend>.json`; with `--quick`, to the system
temp folder).

Usage:

```
python benchmarks/overhead.py                  # TensorFlow, a few minutes
python benchmarks/overhead.py --backend jax    # JAX, with the compile count
python benchmarks/overhead.py --quick          # smoke test, no assertions
```
"""

import argparse
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def _select_backend(argv):
    """Sets `KERAS_BACKEND` from `--backend` before Keras is imported."""
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--backend", choices=BACKENDS, default=None)
    known, _ = pre_parser.parse_known_args(argv)
    if known.backend:
        os.environ["KERAS_BACKEND"] = known.backend


_select_backend(sys.argv[1:])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import collections  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras_batchtune  # noqa: E402
from keras_batchtune import trial_fit  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
OBJECTIVE = "val_accuracy"
TARGET_RATIO = 1.03
SIDES = ("plain", "batchtune", "randomsearch")

# (key, numerator, denominator, description), each per round.
RATIOS = (
    (
        "a",
        "batchtune.trial_seconds",
        "plain.wall_seconds",
        "BatchTuner trial / plain build+fit",
    ),
    (
        "b",
        "batchtune.trial_seconds",
        "randomsearch.trial_seconds",
        "BatchTuner trial / RandomSearch trial",
    ),
    (
        "c",
        "batchtune.fit_seconds",
        "plain.fit_seconds",
        "BatchTuner fit_seconds / plain fit",
    ),
    (
        "d",
        "randomsearch.trial_seconds",
        "plain.wall_seconds",
        "RandomSearch trial / plain build+fit",
    ),
)


def parse_args(argv=None):
    """Parses the command-line flags.

    Args:
        argv: Optional list of arguments, defaults to `sys.argv[1:]`.

    Returns:
        An `argparse.Namespace`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (default: KERAS_BACKEND, else tensorflow).",
    )
    parser.add_argument(
        "--compile-trials",
        type=int,
        default=None,
        help="Trials of the searches whose XLA compilations are counted "
        "(JAX only; default 12; 3 with --quick; 0 skips).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke test: 1 round of 2 epochs; output to the temp folder.",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="Measured rounds, after one warm-up round (default 20; "
        "1 with --quick).",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="Epochs per fit (default 10; 2 with --quick).",
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="Batch size B."
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=0.1,
        help="SGD learning rate (momentum 0.9).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    parser.add_argument(
        "--output",
        type=pathlib.Path,
        default=None,
        help=f"JSON output path (default {RESULTS}/overhead_<backend>.json).",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 20
    if args.epochs is None:
        args.epochs = 2 if args.quick else 10
    if args.compile_trials is None:
        args.compile_trials = 3 if args.quick else 12
    args.backend = keras.config.backend()
    if args.output is None:
        args.output = (
            pathlib.Path(tempfile.gettempdir()) / "overhead_quick.json"
            if args.quick
            else RESULTS / f"overhead_{args.backend}.json"
        )
    for name in ("repeats", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def load_data(seed):
    """Loads digits, scaled to [0, 1], with a stratified 20% validation split.

    Args:
        seed: Integer, the seed of the split.

    Returns:
        A tuple `(x_train, y_train, x_val, y_val)` of numpy arrays.
    """
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    return x_train, y_train, x_val, y_val


def make_build_model(learning_rate, seed):
    """Returns the model-building function shared by all three sides.

    The initializers are seeded, so that every side starts from the same
    weights whatever the tuner builds beforehand.

    Args:
        learning_rate: Float, the SGD learning rate, registered as
            `hp.Fixed("learning_rate", ...)`.
        seed: Integer, the seed of the weight initializers.

    Returns:
        A function `hp -> compiled keras.Model`.
    """

    def build_model(hp):
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(
                    128,
                    activation="relu",
                    kernel_initializer=keras.initializers.GlorotUniform(seed),
                ),
                keras.layers.Dense(
                    10,
                    activation="softmax",
                    kernel_initializer=keras.initializers.GlorotUniform(
                        seed + 1
                    ),
                ),
            ]
        )
        model.compile(
            keras.optimizers.SGD(
                hp.Fixed("learning_rate", learning_rate), momentum=0.9
            ),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    return build_model


def reset_state(seed):
    """Clears the Keras session and seeds every generator (not timed).

    Args:
        seed: Integer.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)


def run_plain(data, args):
    """Builds, compiles and fits the model once, timed.

    Args:
        data: What `load_data` returned.
        args: The parsed flags.

    Returns:
        A dict with `wall_seconds` (build+compile+fit), `fit_seconds` and
        `val_accuracy` (best epoch).
    """
    x_train, y_train, x_val, y_val = data
    build_model = make_build_model(args.learning_rate, args.seed)
    start = time.perf_counter()
    model = build_model(keras_tuner.HyperParameters())
    fit_start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        verbose=0,
    )
    end = time.perf_counter()
    return {
        "wall_seconds": end - start,
        "fit_seconds": end - fit_start,
        "val_accuracy": max(history.history[OBJECTIVE]),
    }


def make_tuner(side, directory, args):
    """Creates a one-trial tuner of the given side.

    Args:
        side: `"batchtune"` or `"randomsearch"`.
        directory: String, a fresh folder for the tuner's files.
        args: The parsed flags.

    Returns:
        A `keras_tuner.Tuner`.
    """
    common = dict(
        hypermodel=make_build_model(args.learning_rate, args.seed),
        objective=OBJECTIVE,
        max_trials=1,
        seed=args.seed,
        directory=directory,
        project_name=side,
        overwrite=True,
    )
    if side == "randomsearch":
        return keras_tuner.RandomSearch(**common)
    fixed_batch = keras_tuner.HyperParameters()
    fixed_batch.Fixed("batch_size", args.batch_size)
    return keras_batchtune.BatchTuner(
        hyperparameters=fixed_batch,
        base_batch_size=args.batch_size,
        **common,
    )


def run_tuner(side, data, args, workdir):
    """Runs one trial of the given tuner, timed.

    Args:
        side: `"batchtune"` or `"randomsearch"`.
        data: What `load_data` returned.
        args: The parsed flags.
        workdir: String, the folder under which tuner folders are made.

    Returns:
        A dict with `setup_seconds` (constructor), `trial_seconds`
        (`tuner.search`), `val_accuracy` (the trial's score) and, for
        `batchtune`, the trial's `fit_seconds` record and
        `outside_fit_seconds` (the trial's time outside `model.fit`).

    Raises:
        RuntimeError: if the trial did not complete, or trained at another
            learning rate than the plain side.
    """
    x_train, y_train, x_val, y_val = data
    directory = tempfile.mkdtemp(prefix=f"{side}_", dir=workdir)
    start = time.perf_counter()
    tuner = make_tuner(side, directory, args)
    search_start = time.perf_counter()
    search_kwargs = {}
    if side == "randomsearch":
        search_kwargs["batch_size"] = args.batch_size
    tuner.search(
        x_train,
        y_train,
        epochs=args.epochs,
        validation_data=(x_val, y_val),
        verbose=0,
        **search_kwargs,
    )
    end = time.perf_counter()
    (trial,) = tuner.oracle.trials.values()
    if trial.status != keras_tuner.engine.trial.TrialStatus.COMPLETED:
        raise RuntimeError(f"{side} trial {trial.status}: {trial.message}")
    timing = {
        "setup_seconds": search_start - start,
        "trial_seconds": end - search_start,
    }
    if side == "batchtune":
        metrics = trial.metrics
        effective = metrics.get_last_value(trial_fit.EFFECTIVE_LEARNING_RATE)
        if not np.isclose(effective, args.learning_rate):
            raise RuntimeError(
                f"BatchTuner trained at learning rate {effective}, not "
                f"{args.learning_rate}: not the plain configuration."
            )
        timing["fit_seconds"] = metrics.get_last_value(trial_fit.FIT_SECONDS)
        timing["outside_fit_seconds"] = (
            timing["trial_seconds"] - timing["fit_seconds"]
        )
    timing["val_accuracy"] = float(trial.score)
    return timing


def run_round(round_index, data, args, workdir):
    """Runs the three sides once, in an order rotated by `round_index`.

    Args:
        round_index: Integer, the round number (0 is the warm-up).
        data: What `load_data` returned.
        args: The parsed flags.
        workdir: String, the folder under which tuner folders are made.

    Returns:
        A dict `{"order": [...], side: timing dict, ...}`.
    """
    shift = round_index % len(SIDES)
    order = SIDES[shift:] + SIDES[:shift]
    timings = {"order": list(order)}
    for side in order:
        reset_state(args.seed)
        if side == "plain":
            timings[side] = run_plain(data, args)
        else:
            timings[side] = run_tuner(side, data, args, workdir)
    return timings


def lookup(round_timings, dotted_name):
    """Reads `"side.field"` from one round's timings."""
    side, field = dotted_name.split(".")
    return round_timings[side][field]


def summarize(rounds):
    """Computes the medians of the timings and of the per-round ratios.

    Args:
        rounds: The measured rounds, each what `run_round` returned.

    Returns:
        A dict with `seconds` (side -> field -> {median, min, max}) and
        `ratios` (key -> {description, median, min, max, per_round}).
    """

    def stats(values):
        return {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }

    seconds = {}
    for side in SIDES:
        fields = rounds[0][side].keys()
        seconds[side] = {
            field: stats([r[side][field] for r in rounds]) for field in fields
        }
    ratios = {}
    for key, numerator, denominator, description in RATIOS:
        per_round = [
            lookup(r, numerator) / lookup(r, denominator) for r in rounds
        ]
        ratios[key] = {
            "description": f"{description} ({numerator} / {denominator})",
            **stats(per_round),
            "per_round": per_round,
        }
    return {"seconds": seconds, "ratios": ratios}


def format_table(summary, args):
    """Formats the summary as a text table.

    Args:
        summary: What `summarize` returned.
        args: The parsed flags.

    Returns:
        A string.
    """
    lines = [
        f"overhead ({args.backend}): MLP 64-128-10 on digits, "
        f"batch {args.batch_size}, "
        f"lr {args.learning_rate}, {args.epochs} epochs, "
        f"{args.repeats} rounds (+1 warm-up), {os.cpu_count()} CPUs",
        "",
        f"{'side':<13} {'field':<14} {'median':>9} {'min':>9} {'max':>9}",
    ]
    for side, fields in summary["seconds"].items():
        for field, values in fields.items():
            name = field.replace("_seconds", " s")
            if field == "val_accuracy":
                lines.append(
                    f"{side:<13} {name:<14} {values['median']:>9.4f} "
                    f"{values['min']:>9.4f} {values['max']:>9.4f}"
                )
                continue
            lines.append(
                f"{side:<13} {name:<14} {values['median']:>9.3f} "
                f"{values['min']:>9.3f} {values['max']:>9.3f}"
            )
    lines += [
        "",
        f"{'ratio':<56} {'median':>7} {'min':>7} {'max':>7}",
    ]
    for key, values in summary["ratios"].items():
        description = values["description"].split(" (")[0]
        lines.append(
            f"({key}) {description:<52} {values['median']:>7.3f} "
            f"{values['min']:>7.3f} {values['max']:>7.3f}"
        )
    ratio_a = summary["ratios"]["a"]["median"]
    verdict = "meets" if ratio_a <= TARGET_RATIO else "misses"
    lines.append(
        f"\n(a) median {ratio_a:.3f} {verdict} the target <= {TARGET_RATIO}"
        + (" (--quick: not a measurement)" if args.quick else "")
    )
    return "\n".join(lines)


def write_json(path, report):
    """Writes the report as JSON, through a temporary file.

    Args:
        path: A `pathlib.Path`.
        report: A JSON-serializable dict.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary_path = path.with_name(path.name + ".tmp")
    temporary_path.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary_path, path)


def framework_version(backend):
    """The installed version of the backend's framework, read off its wheel.

    Args:
        backend: A Keras backend name.

    Returns:
        A version string.
    """
    from importlib import metadata

    return metadata.version({"jax": "jaxlib"}.get(backend, backend))


# Compilations by function name, while `count_compilations` listens.
_COMPILATIONS = collections.Counter()
_LISTENING = [False]


def _on_jax_event(event, duration_secs, **kwargs):
    if _LISTENING[0] and event.endswith("backend_compile_duration"):
        _COMPILATIONS[kwargs.get("fun_name", "?")] += 1


def count_compilations(data, args, workdir):
    """Counts the XLA compilations of a BatchTuner and a RandomSearch search.

    Both search `batch_size` in [16, 512] (powers of two) and the learning
    rate, for `args.compile_trials` trials of `args.epochs` epochs.

    Args:
        data: What `load_data` returned.
        args: The parsed flags.
        workdir: String, the folder for the tuners' files.

    Returns:
        A dict per tuner: trials, distinct batch sizes, and compilations of
        `train_step`, `test_step` and of everything else.
    """
    import jax

    jax.monitoring.register_event_duration_secs_listener(_on_jax_event)
    x_train, y_train, x_val, y_val = data
    build_model = make_build_model(args.learning_rate, args.seed)

    class SearchedBatch(keras_tuner.HyperModel):
        def build(self, hp):
            return build_model(hp)

        def fit(self, hp, model, *fit_args, **fit_kwargs):
            batch_size = hp.Choice("batch_size", [16, 32, 64, 128, 256, 512])
            return model.fit(*fit_args, batch_size=batch_size, **fit_kwargs)

    common = dict(
        objective=OBJECTIVE,
        max_trials=args.compile_trials,
        seed=args.seed,
        directory=workdir,
        overwrite=True,
    )
    tuners = {
        "batchtune": keras_batchtune.BatchTuner(
            build_model,
            min_batch_size=16,
            max_batch_size=512,
            project_name="batchtune",
            **common,
        ),
        "randomsearch": keras_tuner.RandomSearch(
            SearchedBatch(), project_name="randomsearch", **common
        ),
    }
    counts = {}
    for name, tuner in tuners.items():
        reset_state(args.seed)
        _COMPILATIONS.clear()
        _LISTENING[0] = True
        try:
            tuner.search(
                x_train,
                y_train,
                epochs=args.epochs,
                validation_data=(x_val, y_val),
                verbose=0,
            )
        finally:
            _LISTENING[0] = False
        sizes = [
            t.hyperparameters.values.get("batch_size")
            for t in tuner.oracle.trials.values()
        ]
        steps = ("jit(train_step)", "jit(test_step)")
        counts[name] = {
            "trials": len(sizes),
            "distinct_batch_sizes": len(set(sizes)),
            "batch_sizes": sorted(s for s in sizes if s is not None),
            "train_step": _COMPILATIONS["jit(train_step)"],
            "test_step": _COMPILATIONS["jit(test_step)"],
            "other": sum(n for f, n in _COMPILATIONS.items() if f not in steps),
        }
    return counts


def format_compilations(compilations):
    """Formats what `count_compilations` returned as a text table."""
    lines = [
        "XLA compilations of a search (JAX)",
        f"{'tuner':<13} {'trials':>6} {'batches':>7} {'train':>6} "
        f"{'test':>5} {'other':>5}",
    ]
    for name, count in compilations.items():
        lines.append(
            f"{name:<13} {count['trials']:>6} "
            f"{count['distinct_batch_sizes']:>7} {count['train_step']:>6} "
            f"{count['test_step']:>5} {count['other']:>5}"
        )
    return "\n".join(lines)


def main(argv=None):
    """Runs the benchmark, prints the table and writes the JSON report."""
    args = parse_args(argv)
    data = load_data(args.seed)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="batchtune_overhead_") as workdir:
        for round_index in range(args.repeats + 1):
            rounds.append(run_round(round_index, data, args, workdir))
    warmup_round, measured_rounds = rounds[0], rounds[1:]
    summary = summarize(measured_rounds)
    print(format_table(summary, args))
    compilations = None
    if args.backend == "jax" and args.compile_trials > 0:
        with tempfile.TemporaryDirectory(prefix="batchtune_xla_") as workdir:
            compilations = count_compilations(data, args, workdir)
        print()
        print(format_compilations(compilations))
    report = {
        "benchmark": "overhead",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "backend": args.backend,
        "versions": {
            args.backend: framework_version(args.backend),
            "keras": keras.__version__,
            "keras_tuner": keras_tuner.__version__,
            "keras_batchtune": keras_batchtune.__version__,
        },
        "args": {
            k: str(v) if isinstance(v, pathlib.Path) else v
            for k, v in vars(args).items()
        },
        "target_ratio_a": TARGET_RATIO,
        "summary": summary,
        "compilations": compilations,
        "warmup_round": warmup_round,
        "rounds": measured_rounds,
    }
    write_json(args.output, report)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
