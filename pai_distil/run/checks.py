"""What a valid config may still ask that the job cannot do, checked before anything starts.

Pydantic checks a config against itself; these check it against the job's world: the packages of
the job's Python and the chat templates of the models it names. `validate`, `submit` and every
stage of a pipeline run them, so a stage that would fail (or, worse, report two identical models
as "thinking on" and "thinking off") is refused in one line before an earlier stage spends hours.
What cannot be seen from here (a hub id, a job image) the job checks again at its start.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from pai_distil.core.errors import UserError
from pai_distil.core.thinking_switch import folder_switch


def check_stage(stage: str, config, where: str, backend: str) -> list[str]:
    """Refuse (UserError) what the job could not honour; return notes on what it will do instead."""
    check_attention(config, where, backend)
    check_trackers(config, where, backend)
    if stage == "evaluate":
        return evaluate_switches(config, where)
    if stage == "adaptive-thinking" and config.variant == "y":
        return variant_y_template(config, where)
    return []


def check_attention(config, where: str, backend: str) -> None:
    """`train.attn_implementation: flash_attention_2` needs the flash_attn package where the job runs
    (`Backend.job_has_package`: this Python for `process`; an image is checked by the job)."""
    from pai_distil.backends import backend_class

    train = getattr(config, "train", None)
    if getattr(train, "attn_implementation", None) != "flash_attention_2":
        return
    if backend_class(backend).job_has_package("flash_attn") is False:
        raise UserError(f"{where}: train.attn_implementation is flash_attention_2, but the flash_attn package is "
                        f"not installed where --backend {backend} runs the job; install flash-attn there, or set "
                        "train.attn_implementation: auto (flash-attention where installed, else sdpa)")


def check_trackers(config, where: str, backend: str) -> None:
    """Each tracker of `train.report_to` needs its package where the job runs (this Python for `process`;
    an image is checked by the job, `trainer.trackers`)."""
    from pai_distil.backends import backend_class
    from pai_distil.core.config.training import TRACKER_PACKAGES

    for name in getattr(getattr(config, "train", None), "report_to", None) or []:
        package = TRACKER_PACKAGES[name]
        if backend_class(backend).job_has_package(package) is False:
            raise UserError(f"{where}: train.report_to names {name}, but the {package} package is not installed "
                            f"where --backend {backend} runs the job; pip install {package} there, or drop {name} "
                            "from train.report_to")


def evaluate_switches(config, where: str) -> list[str]:
    """An evaluate model with `enable_thinking: false` whose checkpoint cannot think less: refused, unless it
    was trained with `/no_think` (then that is what evaluate adds)."""
    notes = []
    for i, m in enumerate(config.models):
        if m.enable_thinking is not False or not _local(m.model):
            continue
        switch = folder_switch(m.model)
        if switch == "none":
            raise UserError(f"{where}: models[{i}] ({m.name!r}) sets enable_thinking: false, but the chat template "
                            f"of {m.model} renders the same prompt with true and false and it was not trained with "
                            "/no_think, so it would answer as with thinking on; drop enable_thinking for it, or "
                            "evaluate a student with a thinking switch (adaptive-thinking variant y)")
        if switch == "soft":
            notes.append(f"models[{i}] ({m.name!r}): its chat template ignores enable_thinking; thinking is turned "
                         "off with /no_think in the prompt, as it was trained")
    return notes


def variant_y_template(config, where: str) -> list[str]:
    """ThoughtY on a student whose template ignores enable_thinking: refused, or trained with /no_think
    (`no_template_switch`), said before `generate` runs for hours ahead of it in a pipeline."""
    model = config.student.model
    if not _local(model) or folder_switch(model) != "none":
        return []
    if config.no_template_switch == "refuse":
        raise UserError(f"{where}: variant y: the chat template of student.model {model} ignores enable_thinking "
                        "(its prompt is the same with true and false), so non-thinking rows would contradict "
                        "thinking ones; use a student with a thinking switch (Qwen3), or set no_template_switch: "
                        "soft_switch to train /no_think rows instead")
    return [f"variant y: the chat template of {model} ignores enable_thinking; every non-thinking row uses /no_think"]


def _local(model: str | None) -> bool:
    """A checkpoint folder on this machine (not a preset, a hub id, or a stage input)."""
    return bool(model) and not model.startswith("preset:") and Path(model).is_dir()


OWN_KEYS = "PAI_DISTIL_"  # PAI_DISTIL_TEACHER_API_KEY, PAI_DISTIL_REWARD_API_KEY: the endpoints' defaults


def check_api_keys(config, where: str, backend: str) -> list[str]:
    """Every api_key_env whose variable is unset here, checked by `validate` before a job meets the server's
    401. Refused where the config names the variable and the job is handed this machine's environment
    (process, local; pai with pass_secrets); a note where the job reads no variable of ours (pai without
    pass_secrets) or the name is one of ours (a default: a server without a key needs none)."""
    from pai_distil.backends import backend_class

    hands = backend_class(backend).hands_secrets()
    notes = []
    for loc, var, named in api_key_envs(config):
        if not hands:
            notes.append(f"{loc}: the job on {backend} is not handed ${var} (pass_secrets is off), so it sends no API "
                         "key; `pai-distil config set pass_secrets=true` hands it")
        elif os.environ.get(var):
            continue
        elif named:
            raise UserError(f"{where}: {loc} names {var}, which is not set here, so the job would send no API key; "
                            f"export {var}=<key>, or set {loc}: null for a server that needs none")
        else:
            notes.append(f"{loc}: {var} is not set here, so the job sends no API key (fine for a server without one)")
    return notes


def api_key_envs(model: BaseModel, path: str = ""):
    """(field path, variable, a name the user chose) of each api_key_env in `model`: the project's own names
    (the defaults, which the examples write out) are not the user's choice of a key."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name.endswith("api_key_env") and isinstance(value, str) and value:
            yield f"{path}{name}", value, name in model.model_fields_set and not value.startswith(OWN_KEYS)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in [(None, value), *items]:
            if isinstance(item, BaseModel):
                yield from api_key_envs(item, f"{path}{name}." + ("" if key is None else f"{key}."))
