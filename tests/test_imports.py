"""Where frameworks are imported: the package's layout, checked.

- Only `keras_batchtune/backend/` imports TensorFlow, JAX or PyTorch.
- Only `backend/keras_internals.py` imports `keras.src`.
- The pure maths imports no framework at all (numpy at most).
- `import keras_batchtune` loads no framework but the configured backend's:
  on JAX and PyTorch, TensorFlow stays unloaded even where it is installed.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_batchtune"
FRAMEWORKS = ("tensorflow", "jax", "torch")
PURE_MODULES = (
    "band.py",
    "halving.py",
    "noise.py",
    "optimizer_rules.py",
    "policies.py",
    "ranking.py",
    "scaling.py",
    "space.py",
)


def _imported_modules(path):
    """Every module name a file imports (at any depth), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, node.lineno


def _top(name):
    return name.split(".")[0]


def _package_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_only_the_backend_package_imports_a_framework():
    offenders = []
    for path in _package_files():
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "backend":
            continue
        for name, line in _imported_modules(path):
            if _top(name) in FRAMEWORKS:
                offenders.append(f"{relative}:{line} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_backend_folders_import_only_their_framework():
    offenders = []
    for framework in FRAMEWORKS:
        for path in (PACKAGE / "backend" / framework).rglob("*.py"):
            for name, line in _imported_modules(path):
                other = _top(name) in FRAMEWORKS and _top(name) != framework
                if other:
                    offenders.append(f"{path.name}:{line} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_only_keras_internals_imports_keras_src():
    allowed = PACKAGE / "backend" / "keras_internals.py"
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        for path in _package_files()
        if path != allowed
        for name, line in _imported_modules(path)
        if name == "keras.src" or name.startswith("keras.src.")
    ]
    assert not offenders, "\n".join(offenders)


def test_pure_maths_imports_no_framework():
    offenders = [
        f"{module}:{line} imports {name}"
        for module in PURE_MODULES
        for name, line in _imported_modules(PACKAGE / module)
        if _top(name) in FRAMEWORKS + ("keras", "keras_tuner")
    ]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_leaves_tensorflow_unloaded(backend):
    pytest.importorskip(backend)
    code = (
        "import sys, keras_batchtune; "
        "print(sorted(m for m in ('tensorflow', 'jax', 'torch') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": backend},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = result.stdout.strip().splitlines()[-1]
    assert "tensorflow" not in loaded, loaded
    assert backend in loaded, loaded


def test_unknown_backend_is_refused_by_name():
    result = subprocess.run(
        [sys.executable, "-c", "import keras_batchtune"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "numpy"},
    )
    assert result.returncode != 0
    assert "'numpy'" in result.stderr
    assert "tensorflow, jax, torch" in result.stderr
