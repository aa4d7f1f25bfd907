"""The documentation as a reader meets it: the site builds strictly, its examples run, its names exist.

Why here and not by eye: a renamed command, a moved module or a misspelt config field makes a page
wrong without anyone noticing; these checks read every fenced example in README.md and docs/.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pai_distil.cli import cli
from pai_distil.core.stages import get_stage

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
COMMAND = re.compile(r"(?:^|[\s;&|(`])pai-distil((?:\s+[a-z][a-z0-9-]*)*)")
# Run by tests/client/test_sdk.py in a folder holding its cots.jsonl: it trains a student.
RUN_ELSEWHERE = {("README.md", "The Python SDK")}
# A repository path or a `*.md` file named in prose: pages, comments, docstrings (globs allowed).
REF = re.compile(r"(?<![\w/.*-])((?:pai_distil|jobs|tests|benchmarks|examples|templates|images|docs)/[\w./*-]*[\w*]/?"
                 r"|\w[\w./-]*\.md\b)")
SUFFIXES = {".py", ".md", ".yaml", ".sh", ".toml"}
SCANNED = ("pai_distil", "jobs", "tests", "benchmarks", "examples", "images", "templates", "docs", ".ci")


def blocks(lang: str):
    """(page, heading above, code) of every fenced block of `lang` in README.md and docs/."""
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == lang:
                headings = re.findall(r"^#+ (.+)$", text[:match.start()], re.M)
                yield page, headings[-1] if headings else "", match.group(2)


def command_paths() -> set[tuple[str, ...]]:
    """Every `pai-distil CMD [SUB]` named in a bash block or an inline code span, as a command path."""
    found = set()
    for page in PAGES:
        text = page.read_text()
        code = [c for lang, c in FENCE.findall(text) if lang == "bash"] + re.findall(r"`([^`\n]+)`", text)
        for snippet in code:
            for match in COMMAND.finditer(snippet.replace("\\\n", " ")):
                found.add(tuple(match.group(1).split()))
    return found


def resolve(words: tuple[str, ...]) -> list[str]:
    """The longest command path `words` names; an unknown name under a group is an error."""
    command, path = cli, []
    for word in words:
        if not hasattr(command, "get_command"):
            break  # a command's own arguments follow
        sub = command.get_command(None, word)
        assert sub is not None, f"`pai-distil {' '.join([*path, word])}` is named in the docs but does not exist"
        command, path = sub, [*path, word]
    return path


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="mkdocs and mkdocs-material are not installed (pip install -e '.[test]')")
def test_site_builds_strictly_with_the_generated_references(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_page = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "pai-distil runs list" in cli_page and "--backend" in cli_page  # every command's --help
    config_page = (tmp_path / "site" / "config" / "index.html").read_text()
    assert "pai-distil schema grpo" in config_page and "learning_rate" in config_page


def test_every_command_the_docs_name_exists():
    paths = {tuple(resolve(words)) for words in command_paths()}
    assert ("submit",) in paths and ("runs", "list") in paths  # the scan sees the pages
    runner = CliRunner()
    for path in sorted(paths):
        result = runner.invoke(cli, [*path, "--help"], prog_name="pai-distil")
        assert result.exit_code == 0, f"pai-distil {' '.join(path)} --help: {result.output}"


def test_unknown_command_in_a_page_is_caught():
    with pytest.raises(AssertionError, match="runs lst"):
        resolve(("runs", "lst"))


def test_python_examples_run(tmp_path):
    ran = 0
    for page, heading, code in blocks("python"):
        if (page.name, heading) in RUN_ELSEWHERE:
            continue
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PAI_DISTIL_HOME": str(tmp_path / "home")})
        assert proc.returncode == 0, f"{page.name} under '{heading}':\n{proc.stderr[-2000:]}"
        ran += 1
    assert ran >= 1


def test_stage_configs_in_yaml_examples_validate():
    checked = 0
    for page, heading, code in blocks("yaml"):
        named = re.match(r"# \S+\.yaml: the (\S+) stage's config", code)
        if named:
            get_stage(named.group(1)).config.model_validate(yaml.safe_load(code))
            checked += 1
    assert checked >= 1


def prose(path: Path) -> str:
    """What a reader reads of `path`: all of a page, the comments and docstrings of a Python file
    (its other strings are data: file names a test writes, a build context's members)."""
    text = path.read_text(errors="replace")
    if path.suffix != ".py":
        return text
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return "\n".join(tok.string for tok in tokens if tok.type == tokenize.COMMENT
                     or tok.type == tokenize.STRING and tok.string.lstrip("rbuRBU").startswith(('"""', "'''")))


def exists(ref: str, base: Path) -> bool:
    """`ref` names something in the repository, from `base` or from the root."""
    if "*" in ref:
        return any(ROOT.glob(ref)) or any(base.glob(ref))
    return (base / ref).exists() or (ROOT / ref).exists()


def test_no_file_points_at_a_file_that_does_not_exist():
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "mkdocs.yml"]
    for top in SCANNED:
        files += [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    missing = []
    for path in files:
        base = ROOT / "docs" if path.name == "mkdocs.yml" else path.parent  # mkdocs names pages from docs/
        refs = set(REF.findall(prose(path)))
        missing += [f"{path.relative_to(ROOT)}: {ref}" for ref in refs if not exists(ref, base)]
    assert sorted(missing) == []


def test_a_stale_reference_is_caught(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""See docs/gone.md and jobs/serve.py."""\nNAME = "src/README.md"  # data, not a reference\n')
    assert sorted(r for r in REF.findall(prose(module)) if not exists(r, tmp_path)) == ["docs/gone.md", "jobs/serve.py"]
