"""The README's quickstart runs as written, and its commands match CI."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    quickstart = blocks[0]
    assert "BatchTuner" in quickstart
    monkeypatch.chdir(tmp_path)
    exec(compile(quickstart, "README.md quickstart", "exec"), {})
    out = capsys.readouterr().out
    assert "effective_learning_rate" in out
    assert (tmp_path / "quickstart_runs" / "untitled_project").is_dir()


def test_ci_runs_the_readme_test_command():
    # The README's second command installs the test extras, then runs the
    # suite: CI runs exactly that line.
    install = 'pip install -e ".[test]" && '
    test_command = re.search(re.escape(install) + r"[^\n`]*", README)
    assert test_command is not None, "no test command in the README"
    assert test_command.group(0) in (ROOT / ".ci" / "run").read_text()
    assert "keras-batchtune demo" in README
