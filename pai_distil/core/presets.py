"""Names and shapes of the tiny student presets (pure data: the client validates against it)."""

PREFIX = "preset:"

PRESETS: dict[str, dict[str, int]] = {
    # ~0.1M parameters: unit tests
    "micro": {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1},
    # ~0.8M parameters: the CPU demo student
    "tiny": {"hidden": 128, "layers": 4, "heads": 4, "kv_heads": 2},
    # ~3M parameters: more capacity when there is more time
    "small": {"hidden": 192, "layers": 6, "heads": 6, "kv_heads": 2},
}


def is_preset(model: str) -> bool:
    return str(model).startswith(PREFIX)


def preset_name(model: str) -> str:
    return str(model)[len(PREFIX):]


CONFIG_KEY = "pai_distil_preset"  # written into a preset's config.json, so its descendants stay presets


def trains_like_preset(model: str) -> bool:
    """True for a preset or a checkpoint grown from one (its config.json names the preset): such models
    take the test bench's training defaults; every other checkpoint takes the field's."""
    import json
    from pathlib import Path

    if is_preset(model):
        return True
    config = Path(model) / "config.json"
    try:
        return CONFIG_KEY in json.loads(config.read_text())
    except (OSError, ValueError):  # a hub id, or no readable config: a real checkpoint
        return False
