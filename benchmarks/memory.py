"""Benchmark: probes and seconds `find_max_batch_size` spends, per backend.

On CPU there is no memory ceiling to hit with a small model, so the limit is
injected: above `--limit` examples a layer asks the backend's allocator for
a tensor of at least 8 TiB, and the allocator raises its real error
(`tests/backend_faults.py`): TensorFlow's `ResourceExhaustedError`, JAX's
`RESOURCE_EXHAUSTED` `JaxRuntimeError`, PyTorch's CPU allocator
`RuntimeError`. For each mode the script reports the probes run, how many
failed, the seconds they took, the batch size found, and the probes against
the power search's bound `ceil(log2(max / start)) + 1`. The backend is
`KERAS_BACKEND`'s (TensorFlow by default).

Usage:

```
python benchmarks/memory.py            # limits 100, 1000, 3000
python benchmarks/memory.py --quick    # smoke test, no timing assertions
KERAS_BACKEND=jax python benchmarks/memory.py --quick
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import backend_faults  # noqa: E402

import keras_batchtune  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class MemoryLimit(keras.layers.Layer):
    """Identity layer that runs out of memory above `max_batch_size`."""

    def __init__(self, max_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.max_batch_size = max_batch_size

    def call(self, inputs):
        return backend_faults.allocate_above(inputs, self.max_batch_size)

    def compute_output_shape(self, input_shape):
        return input_shape


def build_model(limit):
    """A compiled digits MLP that runs out of memory above `limit`."""
    model = keras.Sequential(
        [
            keras.Input((64,)),
            MemoryLimit(limit),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        "sparse_categorical_crossentropy",
    )
    return model


def measure(limit, mode, start, max_batch_size, data):
    """Runs the finder once; returns one row of the table."""
    model = build_model(limit)
    result = keras_batchtune.find_max_batch_size(
        model, data, mode=mode, start=start, max_batch_size=max_batch_size
    )
    return {
        "limit": limit,
        "mode": mode,
        "start": start,
        "max_batch_size": max_batch_size,
        "found": result.batch_size,
        "probes": len(result.probes),
        "failed_probes": sum(not probe.fits for probe in result.probes),
        "seconds": sum(probe.seconds for probe in result.probes),
        "power_bound": math.ceil(math.log2(max_batch_size / start)) + 1,
        "batch_sizes": [probe.batch_size for probe in result.probes],
    }


def backend_version():
    """The version of the framework under the configured Keras backend."""
    module = importlib.import_module(keras.config.backend())
    return module.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--limits", type=int, nargs="+", default=[100, 1000, 3000]
    )
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=8192)
    parser.add_argument(
        "--output",
        default=None,
        help=f"JSON output path (default {RESULTS}/memory_<backend>.json).",
    )
    args = parser.parse_args(argv)
    limits = [100] if args.quick else args.limits
    max_batch_size = 512 if args.quick else args.max_batch_size
    output = pathlib.Path(
        args.output
        or (
            pathlib.Path(tempfile.gettempdir()) / "memory_quick.json"
            if args.quick
            else RESULTS / f"memory_{keras.config.backend()}.json"
        )
    )
    digits = load_digits()
    data = ((digits.data / 16.0).astype("float32"), digits.target)
    rows = [
        measure(limit, mode, args.start, max_batch_size, data)
        for limit in limits
        for mode in keras_batchtune.memory.FINDER_MODES
    ]
    header = (
        f"{'limit':>6} {'mode':>9} {'found':>6} {'probes':>6} "
        f"{'failed':>6} {'bound':>6} {'seconds':>8}"
    )
    print(
        f"find_max_batch_size on CPU, backend {keras.config.backend()}, "
        f"start={args.start}, max_batch_size={max_batch_size}, "
        f"{os.cpu_count()} CPUs"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['limit']:>6} {row['mode']:>9} {row['found']:>6} "
            f"{row['probes']:>6} {row['failed_probes']:>6} "
            f"{row['power_bound']:>6} {row['seconds']:>8.2f}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                },
                "backend": keras.config.backend(),
                "versions": {
                    "backend": backend_version(),
                    "keras": keras.__version__,
                    "numpy": np.__version__,
                },
                "args": vars(args),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
