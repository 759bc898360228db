"""The README stays short, and the documentation site builds without a
broken link or reference."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import unicodedata

import pytest

import keras_batchtune

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKDOWN_FILES = [README] + sorted(DOCS.rglob("*.md"))

# [text](target) and ![alt](target); the target ends at a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def _prose(text):
    """The text without code blocks and code spans (links there are code)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading):
    """The anchor Python-Markdown's toc extension gives a heading."""
    text = re.sub(r"[`*_]", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text)
    text = text.encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path):
    return {_slug(h) for h in HEADING.findall(FENCE.sub("", path.read_text()))}


def _relative_links(path):
    for target in LINK.findall(_prose(path.read_text())):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        yield target


def test_readme_is_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (max 200)"


@pytest.mark.parametrize(
    "path", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_point_to_existing_files(path):
    broken = []
    for target in _relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md":
            if anchor not in _anchors(linked):
                broken.append(f"{target}: no heading #{anchor} in {linked}")
    assert not broken, f"broken links in {path.name}:\n" + "\n".join(broken)


def test_readme_points_to_the_docs_and_every_guide():
    readme = README.read_text()
    assert "mkdocs serve" in readme
    linked = set(_relative_links(README))
    for guide in sorted((DOCS / "guides").glob("*.md")):
        target = f"docs/guides/{guide.name}"
        assert target in linked, f"the README does not link {target}"
    assert "docs/api/index.md" in linked
    assert "docs/benchmarks.md" in linked


def test_every_public_name_has_an_api_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    api_index = (DOCS / "api" / "index.md").read_text()
    for name in keras_batchtune.__all__:
        page = DOCS / "api" / f"{name}.md"
        assert page.is_file(), f"no API page {page} for {name}"
        assert re.search(r"^::: keras_batchtune\.", page.read_text(), re.M), (
            f"{page} has no mkdocstrings directive"
        )
        assert f"api/{name}.md" in nav, f"{page} is not in mkdocs.yml's nav"
        assert f"({name}.md)" in api_index, f"api/index.md omits {name}"


def test_docs_home_shows_the_readme_quickstart():
    def first_python_block(text):
        return re.findall(r"```python\n(.*?)```", text, re.S)[0]

    assert first_python_block(
        (DOCS / "index.md").read_text()
    ) == first_python_block(README.read_text())


def _missing_docs_tools():
    missing = []
    for module in ("mkdocs", "material", "mkdocstrings"):
        if importlib.util.find_spec(module) is None:
            missing.append(module)
    if "mkdocstrings" not in missing:
        if importlib.util.find_spec("mkdocstrings_handlers.python") is None:
            missing.append("mkdocstrings-python")
    return missing


def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(
            f"MkDocs tools not installed ({', '.join(missing)}); "
            'install them with pip install -e ".[docs]"'
        )
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # only stops a hang
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "api" / "BatchTuner" / "index.html").is_file()
