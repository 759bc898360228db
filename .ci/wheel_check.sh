#!/usr/bin/env bash
# CI: build the wheel and the sdist, install the wheel with the `demo` extra in
# a fresh virtual environment outside the checkout, and run the demo there, as
# a user who ran `pip install keras-batchtune[demo]` would.
#
# Usage: bash .ci/wheel_check.sh   (PYTHON=python3.x to choose the interpreter)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/wheel_check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
# Nothing of the checkout may reach the installed package's interpreter.
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PIP_REQUIRE_VIRTUALENV
export PIP_NO_INPUT=1

# 1. Build the sdist, then the wheel from the unpacked sdist (`build`'s
#    default), so a file missing from the sdist breaks the wheel too.
if "$python" -c "import build" 2>/dev/null; then
  builder="$python"
else
  "$python" -m venv "$work/build-env"
  "$work/build-env/bin/python" -m pip install --quiet build
  builder="$work/build-env/bin/python"
fi
"$builder" -m build --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log"; exit 1; }
wheels=("$work"/dist/*.whl)
sdists=("$work"/dist/*.tar.gz)
[ "${#wheels[@]}" = 1 ] && [ -f "${wheels[0]}" ] &&
  [ "${#sdists[@]}" = 1 ] && [ -f "${sdists[0]}" ] ||
  { echo "wheel_check: expected one wheel and one sdist:"; ls "$work/dist";
    exit 1; }
wheel="${wheels[0]}"
echo "wheel_check: built $(basename "$wheel") and $(basename "${sdists[0]}")"

# 2. A fresh virtual environment, run from an empty directory so that neither
#    pip nor Python can find the checkout.
mkdir "$work/run"
cd "$work/run"
"$python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
"$venv_python" -m pip install "${wheel}[demo]" >"$work/install.log" 2>&1 ||
  { tail -n 60 "$work/install.log"; echo "wheel_check: pip failed"; exit 1; }
echo "wheel_check: installed the wheel with [demo] ($((SECONDS - start)) s)"
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=3

# 3. The package imported is the installed one, at the built version.
"$venv_python" - "$wheel" "$repo" <<'PY'
import importlib.metadata
import os
import sys
import sysconfig

import keras_batchtune

site = os.path.realpath(sysconfig.get_paths()["purelib"])
where = os.path.realpath(keras_batchtune.__file__)
assert where.startswith(site + os.sep), (where, site)
checkout = os.path.realpath(sys.argv[2])
assert not [p for p in sys.path if os.path.realpath(p).startswith(checkout)]
installed = importlib.metadata.version("keras-batchtune")
assert installed == keras_batchtune.__version__, (
    installed,
    keras_batchtune.__version__,
)
wheel_version = os.path.basename(sys.argv[1]).split("-")[1]
assert wheel_version == keras_batchtune.__version__, (
    wheel_version,
    keras_batchtune.__version__,
)
print(f"wheel_check: keras_batchtune {installed} imported from {where}")
PY

# 4. The demo, through the installed console script, in the empty directory.
"$work/venv/bin/keras-batchtune" demo --max-trials 2 --epochs 1 \
  >"$work/demo.log" 2>&1 || {
  status=$?
  tail -n 60 "$work/demo.log"
  echo "wheel_check: the demo exited with $status"
  exit 1
}
grep -q "Best: trial" "$work/demo.log" ||
  { tail -n 60 "$work/demo.log"; echo "wheel_check: no 'Best: trial'"; exit 1; }
[ -f "$work/run/batchtune_runs/digits/oracle.json" ] ||
  { echo "wheel_check: the demo left no project in its directory"; exit 1; }
echo "wheel_check: the demo passed ($((SECONDS - start)) s in all)"
