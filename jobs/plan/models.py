"""The configs of the models a plan builds: shapes and checkpoints come as config.json values from the
client; a preset's config is built here, with the preset tokenizer's vocabulary."""

from __future__ import annotations


def preset_configs(models: dict) -> dict:
    """`models` (role -> config dict, or a `preset:<name>` string) with presets' configs filled in."""
    from pai_distil.core.presets import preset_name

    out = {}
    for role, config in models.items():
        if isinstance(config, str):
            from pai_distil_jobs.models.models import preset_config
            from pai_distil_jobs.models.tokenizer import build_tokenizer

            config = preset_config(preset_name(config), build_tokenizer()).to_dict()
        out[role] = config
    return out
