"""mkdocs hook: the CLI and config reference pages, rendered at build time from the code itself.

Why generated: the `--help` texts and the pydantic field descriptions are the one source of truth
(they drive the CLI, validation and the JSON Schema); a hand-copied page would drift from them.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

CLI_MARK = "<!-- cli-reference -->"
CONFIG_MARK = "<!-- config-reference -->"
LINK = re.compile(r"\[([^\]]+)\]\(((?:\.\./)+[^)#\s]+)(#[^)\s]*)?\)")


def _commands(group: click.Group, path: list[str]):
    """Yield (command path, command) for every command under `group`, groups first, sorted."""
    ctx = click.Context(group, info_name=" ".join(path))
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        yield [*path, name], command
        if isinstance(command, click.Group):
            yield from _commands(command, [*path, name])


def _help(path: list[str]) -> str:
    """Exactly what `pai-distil ... --help` prints, run in-process (help never starts work)."""
    from click.testing import CliRunner

    from pai_distil.cli import cli

    result = CliRunner().invoke(cli, [*path[1:], "--help"], prog_name="pai-distil")
    if result.exit_code != 0:
        raise RuntimeError(f"{' '.join(path)} --help exited {result.exit_code}: {result.output}")
    return result.output.rstrip()


def cli_reference() -> str:
    """Every command's help, one section each, in `pai-distil COMMAND` order."""
    from pai_distil.cli import cli

    parts = [f"## pai-distil\n\n```text\n{_help(['pai-distil'])}\n```\n"]
    for path, _command in _commands(cli, ["pai-distil"]):
        parts.append(f"## {' '.join(path)}\n\n```text\n{_help(path)}\n```\n")
    return "\n".join(parts)


def _type(spec: dict) -> str:
    """A JSON Schema property's type in a few words."""
    if "$ref" in spec:
        return spec["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in spec:
        return " or ".join(_type(s) for s in spec["anyOf"])
    if spec.get("type") == "array":
        return f"list of {_type(spec.get('items', {}))}"
    if "enum" in spec:
        return " / ".join(f"`{v}`" for v in spec["enum"])
    return spec.get("type", "any")


def _table(schema: dict) -> str:
    """One Markdown table of a model's fields: name, type, default, description."""
    rows = ["| field | type | default | what it does |", "|---|---|---|---|"]
    for name, spec in schema.get("properties", {}).items():
        required = "required" if name in schema.get("required", []) else ""
        default = f"`{spec['default']}`" if "default" in spec else required
        text = (spec.get("description") or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type(spec).replace('|', '/')} | {str(default).replace('|', '/')} | {text} |")
    return "\n".join(rows)


def config_reference() -> str:
    """Each stage's config (what `pai-distil schema STAGE` prints) as tables, nested models after."""
    from pai_distil.core.stages import STAGES

    parts = []
    for stage in STAGES.values():
        schema = stage.config.model_json_schema()
        parts.append(f"## {stage.name}\n\n{stage.summary}\n\n`pai-distil schema {stage.name}`\n\n{_table(schema)}\n")
        for name, sub in sorted(schema.get("$defs", {}).items()):
            if "properties" in sub:
                parts.append(f"### {stage.name}: {name}\n\n{_table(sub)}\n")
    return "\n".join(parts)


def _repo_links(markdown: str, page_path: Path, docs_dir: Path) -> str:
    """A link out of docs/ to a repository file (`../examples/grpo.yaml`) works on the repository host
    but not in the built site: there it becomes its text. A link to a file that does not exist stays,
    so the strict build still fails on it."""
    def plain(match: re.Match) -> str:
        target = (page_path.parent / match.group(2)).resolve()
        inside = target.is_relative_to(docs_dir.resolve())
        return match.group(1) if target.exists() and not inside else match.group(0)

    return LINK.sub(plain, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill the reference pages' markers and unlink repository files outside docs/."""
    docs_dir = Path(config["docs_dir"])
    markdown = _repo_links(markdown, docs_dir / page.file.src_path, docs_dir)
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    if CONFIG_MARK in markdown:
        markdown = markdown.replace(CONFIG_MARK, config_reference())
    return markdown
