"""Whether a checkpoint folder can think or not on request, read from its files without loading it.

`enable_thinking: false` means something only where the chat template renders it (Qwen3's
pre-fills an empty thought); Qwen2.5's template ignores the flag, so "thinking off" would be the
thinking-on model again, reported as another. A student trained to switch with `/no_think` in the
user turn (adaptive-thinking variant y on such a template) carries SOFT_SWITCH_FILE. The client
renders the template with jinja2 as transformers does (transformers itself would bring torch), so
`validate` refuses a switch that switches nothing before any stage runs.

    >>> folder_switch("ckpt/qwen2.5")  # "template", "soft", "none", or None when unreadable
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

SOFT_SWITCH_FILE = "thinking_switch.json"  # in a checkpoint trained to read /no_think: {"off": " /no_think", ...}
_PROBE = [{"role": "user", "content": "ping"}]
_GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")  # transformers' extension: marks spans only


def read_template(folder: str | Path) -> str | None:
    """The chat template a tokenizer would load from `folder`: `chat_template.jinja`, else
    tokenizer_config.json's `chat_template` (the `default` one of a list); None when it has none."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    try:
        template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError, AttributeError):  # no config, or not a JSON object: nothing to read here
        return None
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def render_prompt(template: str, enable_thinking: bool) -> str:
    """The generation prompt of a one-turn probe conversation, rendered as transformers renders it."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, **_: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    return env.from_string(_GENERATION_TAGS.sub("", template)).render(
        messages=_PROBE, add_generation_prompt=True, enable_thinking=enable_thinking, bos_token="", eos_token="")


def template_switches(template: str) -> bool | None:
    """True when enable_thinking true and false render different prompts; None when it cannot be rendered."""
    try:
        return render_prompt(template, True) != render_prompt(template, False)
    except Exception:  # noqa: BLE001 - jinja raises many kinds; a template we cannot render is one we cannot judge
        return None


def folder_switch(folder: str | Path) -> str | None:
    """How a checkpoint folder turns thinking off: "template" (enable_thinking), "soft" (trained with
    `/no_think`), "none" (nothing switches), or None when its template cannot be read or rendered."""
    template = read_template(folder)
    switches = None if template is None else template_switches(template)
    if switches is None:
        return None
    if switches:
        return "template"
    return "soft" if (Path(folder) / SOFT_SWITCH_FILE).is_file() else "none"
