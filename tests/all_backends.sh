#!/usr/bin/env bash
# The test suite on the three Keras backends: the README's test command.
#
# 1. TensorFlow backend, in the current environment (`pip install -e
#    ".[test]"`, which brings TensorFlow, JAX and PyTorch): every test.
# 2. PyTorch backend, same environment (TensorFlow installed, so the tests of
#    a `tf.data.Dataset` fed to a PyTorch model run too).
# 3. JAX backend, in a virtual environment WITHOUT TensorFlow (`.venv-no-tf`,
#    made here once): a stray `import tensorflow` fails there, as on today's
#    Colab TPU runtimes.
# Tests that need the TensorFlow backend are skipped on the others (marker
# `tensorflow_backend`, see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== tests on the TensorFlow backend"
KERAS_BACKEND=tensorflow python -m pytest -q tests "$@"

echo "== tests on the PyTorch backend"
KERAS_BACKEND=torch python -m pytest -q tests "$@"

echo "== tests on the JAX backend, without TensorFlow"
NO_TF_VENV="${NO_TF_VENV:-.venv-no-tf}"
if [ ! -x "$NO_TF_VENV/bin/python" ]; then
  python -m venv "$NO_TF_VENV"
  "$NO_TF_VENV/bin/python" -m pip install -q --upgrade pip
  "$NO_TF_VENV/bin/python" -m pip install -q -e ".[jax,test-core]"
fi
if "$NO_TF_VENV/bin/python" -c "import tensorflow" 2>/dev/null; then
  echo "$NO_TF_VENV has TensorFlow installed; it must not." >&2
  exit 1
fi
KERAS_BACKEND=jax "$NO_TF_VENV/bin/python" -m pytest -q tests "$@"
