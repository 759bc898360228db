"""The sdist and the wheel hold what a user needs, and one version number.

`.ci/wheel_check.sh` installs the wheel in a fresh environment and runs the
demo; these tests check, cheaply, what the two archives contain.
"""

import email.parser
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import keras_batchtune

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "keras_batchtune"
# Never part of a distribution: version control, virtual environments, caches
# and outputs of earlier builds and runs.
_NOT_COPIED = {
    ".git",
    ".ci-venv",
    ".venv",
    ".venv-no-tf",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "__pycache__",
    "build",
    "dist",
    "site",
    "batchtune_runs",
    "quickstart_runs",
}


def _package_sources():
    """The package's Python files in the checkout, relative to ROOT."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / PACKAGE).rglob("*.py")
        if "__pycache__" not in path.parts
    }


def _offline_build_skip_reason():
    if importlib.util.find_spec("build") is None:
        return "needs the `build` package (pip install build)"
    try:
        import setuptools
    except ImportError:
        return "needs setuptools to build without network access"
    major, minor = (int(n) for n in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        # `bdist_wheel` is part of setuptools from 70.1 on (the `test`
        # extras ask for it); older ones need the `wheel` package.
        if importlib.util.find_spec("wheel") is None:
            return (
                "needs setuptools>=70.1 (or the wheel package), found "
                f"{setuptools.__version__}"
            )
    return None


def _ignore(directory, names):
    return [
        name
        for name in names
        if name in _NOT_COPIED
        or name.endswith(".egg-info")
        or (pathlib.Path(directory, name, "pyvenv.cfg").exists())
    ]


@pytest.fixture(scope="module")
def distributions(tmp_path_factory):
    """Builds the sdist and the wheel (from the sdist) of a copy of ROOT."""
    reason = _offline_build_skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    # A copy, so that the build's egg-info and build/ never touch the checkout.
    shutil.copytree(ROOT, source, ignore=_ignore)
    out = base / "dist"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--skip-dependency-check",
            "--outdir",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,  # stops a hang only; the build takes seconds
        cwd=base,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    sdists = list(out.glob("*.tar.gz"))
    wheels = list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(out.iterdir())
    return sdists[0], wheels[0]


def test_sdist_holds_the_package_and_project_files_only(distributions):
    sdist, _ = distributions
    version = keras_batchtune.__version__
    top = f"keras_batchtune-{version}/"
    with tarfile.open(sdist) as archive:
        names = [
            member.name for member in archive.getmembers() if member.isfile()
        ]
    assert all(name.startswith(top) for name in names), names
    names = {name[len(top) :] for name in names}
    for required in (
        "PKG-INFO",
        "README.md",
        "CHANGELOG.md",
        "LICENSE",
        "setup.cfg",
        "pyproject.toml",
    ):
        assert required in names
    packaged = {name for name in names if name.startswith(PACKAGE + "/")}
    assert packaged == _package_sources()
    for backend in ("common", "tensorflow", "jax", "torch"):
        assert f"{PACKAGE}/backend/{backend}/__init__.py" in packaged
    for excluded in ("tests/", "benchmarks/", "docs/", "examples/", ".ci/"):
        assert not [name for name in names if name.startswith(excluded)]


def test_wheel_holds_the_package_and_its_metadata_only(distributions):
    _, wheel = distributions
    version = keras_batchtune.__version__
    assert wheel.name == f"keras_batchtune-{version}-py3-none-any.whl"
    info = f"keras_batchtune-{version}.dist-info/"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(info + "METADATA").decode()
        entry_points = archive.read(info + "entry_points.txt").decode()
    packaged = {name for name in names if name.startswith(PACKAGE + "/")}
    assert packaged == _package_sources()
    assert f"{PACKAGE}/backend/keras_internals.py" in packaged
    assert not [name for name in names - packaged if not name.startswith(info)]
    assert any(name.endswith("LICENSE") for name in names - packaged)
    headers = email.parser.Parser().parsestr(metadata)
    assert headers["Name"] == "keras-batchtune"
    assert headers["Version"] == version
    assert "demo" in headers.get_all("Provides-Extra")
    assert "keras-batchtune = keras_batchtune.cli:main" in entry_points


def test_version_is_the_changelogs_newest_entry():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = [
        heading
        for heading in re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
        if heading.lower() != "unreleased"
    ]
    assert releases, "CHANGELOG.md has no release heading '## [x.y.z]'"
    assert releases[0] == keras_batchtune.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", keras_batchtune.__version__)
