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
    test_command = re.search(r"python -m pytest[^\n`]*", README).group(0)
    assert test_command in (ROOT / ".ci" / "run").read_text()
    assert "keras-batchtune demo" in README
