#!/usr/bin/env bash
# Issue 16's GPU check: throughput, searches and dynamic batch on JAX.
#
# Runs benchmarks/throughput.py, workload_search.py and workload_dynamic.py
# on the JAX backend on one GPU, each under a time limit, 9 minutes in all,
# writing their JSON, logs and the throughput plot into OUT_DIR. Made for the
# GPU machine this project borrows: it has JAX, scikit-learn and matplotlib
# but no TensorFlow and no network, so keras, keras-tuner and their missing
# dependencies travel as wheels in `.whl/` (installed into /tmp/site when the
# folder is there). Prepare them once, on a machine with pip:
#
#   python3 -m pip download --no-deps --only-binary=:all: \
#     --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl keras==3.15.1 keras-tuner==1.4.8 kt-legacy==1.0.5 \
#     namex==0.1.0 optree==0.20.0
#
# Usage:
#   bash benchmarks/device_check.sh OUT_DIR          # on the GPU, <= 9 min
#   bash benchmarks/device_check.sh OUT_DIR --smoke  # any machine, smallest
#
# --smoke runs each script's --quick mode (CPU, a minute or two): what the
# test suite runs to keep this script working where no GPU is lent.
set -uo pipefail
out=${1:?usage: device_check.sh OUT_DIR [--smoke]}
mode=${2:-full}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
python=${PYTHON:-python3}
if [ -d "$here/.whl" ] && ! "$python" -c "import keras_tuner" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site "$here"/.whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
"$python" - <<'PY' | tee "$out/device.txt"
import jax, keras, keras_tuner
print("jax", jax.__version__, jax.devices(), "keras", keras.__version__,
      "keras-tuner", keras_tuner.__version__)
PY

status=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 seconds=$2
  shift 2
  local start=$SECONDS
  timeout "$seconds" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s (limit $seconds s)" \
    | tee -a "$out/summary.txt"
  grep -v -e '^I0000' -e '^WARNING: All log' "$out/$name.log" | tail -40
  [ "$rc" -eq 0 ] || status=1
}

bench=$here/benchmarks
if [ "$mode" = "--smoke" ]; then
  step throughput 300 "$python" "$bench/throughput.py" --quick \
    --output "$out/throughput.json" --plot "$out/throughput.png"
  step workload_search 300 "$python" "$bench/workload_search.py" --quick \
    --output "$out/workload_search.json"
  step workload_dynamic 300 "$python" "$bench/workload_dynamic.py" --quick \
    --workloads convnet --policies schedule goodput \
    --output "$out/workload_dynamic.json"
  exit $status
fi
# 9 minutes in all: 120 s + 240 s + 180 s. First sizes, not yet run on a GPU
# (no GPU was lent to the session that wrote this): the throughput curve
# gets a twentieth of the GPU's memory, so that its batch sizes reach the
# allocator's real limit; a search process a fifth, four side by side; the
# dynamic runs, one process each, the convnet at three fixed batches.
step throughput 120 "$python" "$bench/throughput.py" --scale 1.0 \
  --memory-fraction 0.05 --max-batch-size 65536 \
  --output "$out/throughput.json" --plot "$out/throughput.png"
XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 step workload_search 240 \
  "$python" "$bench/workload_search.py" --scale 0.25 --seeds 3 --workers 4 \
  --output "$out/workload_search.json"
XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 step workload_dynamic 180 \
  "$python" "$bench/workload_dynamic.py" --workloads convnet --scale 0.25 \
  --batch-sizes 32 128 512 --seeds 3 --output "$out/workload_dynamic.json"
exit $status
