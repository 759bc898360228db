#!/usr/bin/env bash
# CI: the lowest supported releases (.ci/lowest-constraints.txt, the lower
# bounds of setup.cfg) on the JAX backend, without TensorFlow or PyTorch.
#
# Installs `-e ".[jax,test-core]"` pinned by the constraints in a fresh
# virtual environment (.venv-lowest), then runs the tests that exercise
# the Keras, KerasTuner and JAX internals keras_batchtune relies on: the
# private-name checks, the JAX backend (keras.distribution, shard_map, two
# JAX processes, the noise probe, the memory finder and the resizable
# input on JAX). About 3 minutes on 2 CPU cores, install included.
#
# Usage: bash .ci/lowest_versions.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
venv=.venv-lowest

rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c .ci/lowest-constraints.txt \
  -e ".[jax,test-core]"
echo "== lowest versions (installed in $((SECONDS - start)) s):"
"$venv/bin/python" - <<'PY'
import importlib.metadata as metadata

pins = {}
for line in open(".ci/lowest-constraints.txt"):
    line = line.split("#")[0].strip()
    if line:
        name, version = line.split("==")
        pins[name] = version
wrong = []
for name, version in pins.items():
    installed = metadata.version(name)
    print(f"   {name} {installed}")
    if installed != version:
        wrong.append(f"{name} {installed} (pinned {version})")
if wrong:
    raise SystemExit("not the pinned lowest versions: " + ", ".join(wrong))
PY
if "$venv/bin/python" -c "import tensorflow" 2>/dev/null; then
  echo "$venv has TensorFlow installed; it must not." >&2
  exit 1
fi

tests=(
  tests/backend/test_keras_internals.py
  tests/backend/test_keras_tuner_internals.py
  tests/backend/common
  tests/backend/jax
  tests/test_imports.py
)
echo "== KERAS_BACKEND=jax pytest ${tests[*]} $*"
KERAS_BACKEND=jax "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  "${tests[@]}" "$@"
echo "== lowest versions: passed in $((SECONDS - start)) s"
