r"""Benchmark: training throughput against batch size, up to the memory limit.

For each workload of `benchmarks/workloads.py` (`--workloads`, data at
`--scale`) on the configured Keras backend (`KERAS_BACKEND`, TensorFlow by
default), a fresh model, its LR scaled linearly from the base LR at batch
32, runs `--warmup-steps` untimed `train_on_batch` calls (they compile) and
`--steps` timed ones at batch sizes 16, 32, 64, ... up to `--max-batch-size`
or the first out-of-memory error. Examples/s is `steps * batch / seconds`
(`train_on_batch` returns host values: JAX is synchronised).

The real limit is measured apart from the finder: a linear scan up from the
last fitting power of two, in steps of 1/16 of it (at most 16 probes of 2
steps), finds the largest batch size that trains, to within 1/16 (none
without an out-of-memory error below the cap). Then
`find_max_batch_size(mode="binsearch", start=16, max_batch_size=cap)` on a
fresh model passes when it finds from 0.9 to 1 + 1/16 times the real limit.

Where the ceiling comes from:

- On a CPU these models reach none. `--inject-limit N` INJECTS one: every
  model's first layer is an identity layer that, above N examples, asks
  the backend's allocator for an impossible tensor
  (`tests/backend_faults.py`), which raises the backend's real
  out-of-memory error. The limit is injected, not the machine's.
- On a GPU with JAX, `--memory-fraction F` sets
  `XLA_PYTHON_CLIENT_MEM_FRACTION` before JAX is imported: the real
  allocator with a pool of F of the device's memory, nothing injected.
  Ignored (with a note) elsewhere.

Prints a table per workload and writes a JSON file (default
`benchmarks/results/throughput_<backend>.json`) and a PNG of the curves and
limits (default `docs/throughput_<backend>.png`; skipped, with a note,
without matplotlib). `--quick` (scale 0.01, cap 64, 2 steps, 1 warm-up; on
a CPU an injected limit of 36, a 3-probe scan: each probe compiles on JAX)
writes both to the temporary folder only.

Usage:

```
python benchmarks/throughput.py
python benchmarks/throughput.py --quick
KERAS_BACKEND=jax python benchmarks/throughput.py --memory-fraction 0.05 \
    --max-batch-size 65536
```
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The default CPU allocator fails at once; oneDNN's waits ~10 s per failure.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
FIRST_BATCH_SIZE = 16
SCAN_DIVISIONS = 16  # the scan's step: 1/16 of the last fitting batch size
SCAN_STEPS = 2
ROW = "{:>6} {:>11} {:>8} {:>14}"
QUICK_INJECTED_LIMIT = 36


def parse_args(argv=None):
    """The command line (read before Keras, and so JAX, is imported)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workloads", nargs="+", default=None)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--max-batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--inject-limit", type=int, default=None)
    parser.add_argument("--memory-fraction", type=float, default=None)
    parser.add_argument("--output", default=None, help="JSON output path.")
    parser.add_argument("--plot", default=None, help="PNG output path.")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.max_batch_size = 0.01, 64
        args.steps, args.warmup_steps = 2, 1
    if args.max_batch_size < FIRST_BATCH_SIZE or args.steps < 1:
        parser.error(
            f"needs --max-batch-size >= {FIRST_BATCH_SIZE}, --steps >= 1"
        )
    return args


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.memory_fraction is not None:
        # JAX reads it once, when it starts its GPU client.
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(ARGS.memory_fraction)

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

import backend_faults  # noqa: E402
from workloads import REFERENCE_BATCH_SIZE  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

from keras_batchtune import backend as batchtune_backend  # noqa: E402
from keras_batchtune import memory as batchtune_memory  # noqa: E402


class MemoryLimit(keras.layers.Layer):
    """Identity layer that runs out of memory above `max_batch_size`.

    `allocate_above` checks one float column of the inputs (images and int32
    tokens alike have the batch dimension); its result joins the output
    times zero, so that no graph optimisation drops the allocation.
    """

    def __init__(self, max_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.max_batch_size = max_batch_size

    def call(self, inputs):
        ops = keras.ops
        column = ops.reshape(inputs, (ops.shape(inputs)[0], -1))[:, :1]
        checked = backend_faults.allocate_above(
            ops.cast(column, "float32"), self.max_batch_size
        )
        return inputs + ops.cast(checked[0, 0] * 0.0, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def fresh_model(workload, batch_size, inject_limit, x):
    """A new compiled model (LR scaled to `batch_size`), the old let go."""
    keras.backend.clear_session()
    batchtune_backend.memory.release_memory()
    scale = batch_size / REFERENCE_BATCH_SIZE
    inner = workload.make_model(workload.base_learning_rate * scale)
    if inject_limit is None:
        return inner
    limit = MemoryLimit(inject_limit)
    inputs = keras.Input(x.shape[1:], dtype=str(x.dtype))
    model = keras.Sequential([inputs, limit, inner])
    model.compile(inner.optimizer, inner.loss, metrics=["accuracy"])
    return model


def timed_steps(model, data, batch_size, warmup, steps):
    """Seconds of `steps` timed steps after `warmup`; None if out of memory.

    Each `train_on_batch` takes the next slice of the data (repeated with
    `np.resize` when too short).
    """
    needed = (warmup + steps) * batch_size
    x, y = (
        array
        if len(array) >= needed
        else np.resize(array, (needed,) + array.shape[1:])
        for array in data
    )
    try:
        for step in range(warmup + steps):
            if step == warmup:
                begin = time.perf_counter()
            rows = slice(step * batch_size, (step + 1) * batch_size)
            model.train_on_batch(x[rows], y[rows])
    except Exception as error:
        if not batchtune_memory.is_out_of_memory_error(error):
            raise
        return None
    return time.perf_counter() - begin if steps else 0.0


def throughput_curve(workload, data, args):
    """Examples/s at 16, 32, ... up to the cap or the first out of memory."""
    curve, batch_size = [], FIRST_BATCH_SIZE
    while batch_size <= args.max_batch_size:
        model = fresh_model(workload, batch_size, args.inject_limit, data[0])
        seconds = timed_steps(
            model, data, batch_size, args.warmup_steps, args.steps
        )
        point = {"batch_size": batch_size, "out_of_memory": seconds is None}
        point["examples_per_second"] = point["seconds_per_step"] = None
        curve.append(point)
        if seconds is None:
            break
        point["examples_per_second"] = args.steps * batch_size / seconds
        point["seconds_per_step"] = seconds / args.steps
        batch_size *= 2
    return curve


def scan_real_limit(workload, data, curve, inject_limit):
    """The largest batch that trains, scanning up from the curve's last.

    One fresh model serves every probe: the scan stops at its first
    out-of-memory error, so no probe follows a failed step.
    """
    fitting = [p["batch_size"] for p in curve if not p["out_of_memory"]]
    failing = [p["batch_size"] for p in curve if p["out_of_memory"]]
    if not failing:
        return {"batch_size": None, "note": "no ceiling below the cap"}
    if not fitting:
        return {"batch_size": None, "note": f"{failing[0]} does not fit"}
    largest, first_failing = fitting[-1], failing[0]
    step = max(1, largest // SCAN_DIVISIONS)
    model = fresh_model(workload, largest, inject_limit, data[0])
    begin, probes = time.perf_counter(), 0
    for batch_size in range(largest + step, first_failing, step):
        probes += 1
        if timed_steps(model, data, batch_size, SCAN_STEPS, 0) is None:
            first_failing = batch_size
            break
        largest = batch_size
    return {
        "batch_size": largest,
        "first_failing": first_failing,
        "resolution": step,
        "probes": probes,
        "seconds": time.perf_counter() - begin,
    }


def run_finder(workload, data, cap, inject_limit):
    """`find_max_batch_size` in binsearch mode, on a fresh model."""
    model = fresh_model(workload, REFERENCE_BATCH_SIZE, inject_limit, data[0])
    begin = time.perf_counter()
    try:
        result = batchtune_memory.find_max_batch_size(
            model,
            data,
            mode="binsearch",
            start=FIRST_BATCH_SIZE,
            max_batch_size=cap,
        )
    except RuntimeError as error:  # even `start` runs out of memory
        return {"batch_size": None, "error": str(error)}
    return {
        "batch_size": result.batch_size,
        "probes": len(result.probes),
        "failed_probes": sum(not probe.fits for probe in result.probes),
        "batch_sizes": [probe.batch_size for probe in result.probes],
        "seconds": time.perf_counter() - begin,
    }


def judge(real, found, cap):
    """`found / real`, and whether it lies in [0.9, 1 + 1/16]."""
    if found is None:
        return None, None
    if real is None:  # no ceiling below the cap: the finder should say cap
        return None, found == cap
    return found / real, 0.9 <= found / real <= 1 + 1 / SCAN_DIVISIONS


def accelerator():
    """The accelerator the backend trains on, or None on a CPU."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return (
            torch.cuda.get_device_name() if torch.cuda.is_available() else None
        )
    if backend == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # no retracing warnings
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return details.get("device_name", gpus[0].name)
    return None


def print_table(name, result):
    """One workload's curve, then its limit and finder line."""
    header = ROW.format("batch", "examples/s", "s/step", "out of memory")
    print(f"\n{name}: {result['training_examples']} training examples")
    print(header + "\n" + "-" * len(header))
    for point in result["curve"]:
        speed, step = point["examples_per_second"], point["seconds_per_step"]
        cells = ("-", "-", "yes") if speed is None else (
            f"{speed:.1f}", f"{step:.4f}", "no")  # fmt: skip
        print(ROW.format(point["batch_size"], *cells))
    real, finder = result["real_limit"], result["finder"]
    if real["batch_size"] is None:
        line = f"real limit: none ({real['note']})"
    else:
        line = (
            f"real limit {real['batch_size']} (scan of {real['probes']} "
            f"probes, resolution {real['resolution']}, {real['seconds']:.1f} s)"
        )
    if finder["batch_size"] is None:
        line += f"; find_max_batch_size failed: {finder['error']}"
    else:
        line += (
            f"; find_max_batch_size binsearch {finder['batch_size']} in "
            f"{finder['probes']} probes ({finder['failed_probes']} out of "
            f"memory), {finder['seconds']:.1f} s"
        )
    if result["found_over_real"] is not None:
        line += f"; found/real {result['found_over_real']:.2f}"
    if result["passed"] is not None:
        line += f": {'pass' if result['passed'] else 'FAIL'}"
    print(line)


def plot(results, path, title):
    """Examples/s against batch size, one line per workload, as a PNG."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot drawn.")
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot
    from matplotlib import ticker

    figure, axis = pyplot.subplots(figsize=(8, 4.8))
    for index, (name, result) in enumerate(results.items()):
        color = f"C{index}"
        points = [p for p in result["curve"] if not p["out_of_memory"]]
        if not points:
            continue
        batches = [point["batch_size"] for point in points]
        speeds = [point["examples_per_second"] for point in points]
        axis.plot(batches, speeds, marker="o", color=color, label=name)
        limit = result["real_limit"]["batch_size"]
        if limit is not None:
            label = f"{name}: real limit {limit}"
            axis.axvline(limit, color=color, linestyle="--", label=label)
        found = result["finder"]["batch_size"]
        if found is not None:
            # On the curve, interpolated (held at its last point beyond it).
            height = np.interp(math.log2(found), np.log2(batches), speeds)
            label = f"{name}: find_max_batch_size {found}"
            axis.scatter(
                [found], [height], marker="*", s=220, color=color,
                edgecolors="black", zorder=3, label=label,
            )  # fmt: skip
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(ticker.ScalarFormatter())
    axis.set_xlabel("batch size")
    axis.set_ylabel("training examples / second")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def default_paths(quick, backend):
    """The JSON and PNG paths: in the temporary folder under `--quick`."""
    if quick:
        stem = pathlib.Path(tempfile.gettempdir()) / "throughput_quick"
        return stem.with_suffix(".json"), stem.with_suffix(".png")
    return (
        HERE / "results" / f"throughput_{backend}.json",
        ROOT / "docs" / f"throughput_{backend}.png",
    )


def main(args):
    backend, device = keras.config.backend(), accelerator()
    where = device or f"CPU ({os.cpu_count()} cores)"
    if args.memory_fraction is not None and (backend != "jax" or not device):
        print(f"note: --memory-fraction (JAX's GPU pool) ignored: {where}.")
    if args.quick and device is None and args.inject_limit is None:
        args.inject_limit = QUICK_INJECTED_LIMIT
    names = args.workloads or list(WORKLOADS)
    if set(names) - set(WORKLOADS):
        sys.exit(f"--workloads: choose from {', '.join(WORKLOADS)}")
    output, plot_path = default_paths(args.quick, backend)
    output = pathlib.Path(args.output or output)
    plot_path = pathlib.Path(args.plot or plot_path)
    limit = args.inject_limit
    injected = "" if limit is None else f", INJECTED limit {limit}"
    print(
        f"Throughput against batch size: backend {backend} on {where}, "
        f"scale {args.scale}, cap {args.max_batch_size}, {args.warmup_steps} "
        f"warm-up + {args.steps} timed steps{injected}"
    )
    results, cap = {}, args.max_batch_size
    for name in names:
        workload = WORKLOADS[name]
        x, y, _, _ = workload.make_data(args.scale)
        curve = throughput_curve(workload, (x, y), args)
        real = scan_real_limit(workload, (x, y), curve, args.inject_limit)
        finder = run_finder(workload, (x, y), cap, args.inject_limit)
        ratio, passed = judge(real["batch_size"], finder["batch_size"], cap)
        results[name] = {
            "training_examples": len(x),
            "curve": curve,
            "real_limit": real,
            "finder": finder,
            "found_over_real": ratio,
            "passed": passed,
        }
        print_table(name, results[name])
    machine = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "accelerator": device,
        "platform": platform.platform(),
    }
    versions = {
        "backend": importlib.import_module(backend).__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "backend": backend,
        "versions": versions,
        "settings": vars(args),
        "injected_limit": args.inject_limit,
        "workloads": results,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {output}")
    title = f"Training throughput, {backend} on {where}{injected}"
    if plot(results, plot_path, title):
        print(f"wrote {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
