"""Student and teacher models: tiny Qwen3 presets built locally, or any hub id / local path.

A preset is `preset:<name>`: the Qwen3 architecture at a small size, randomly initialised from
a seed, with the project's tokenizer. Everything else goes to `AutoModelForCausalLM`, so a
preset and a real checkpoint take the same path through training and evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, Qwen3Config
from transformers.utils import logging as hf_logging

from pai_distil.core.contract import JobError
from pai_distil.core.presets import CONFIG_KEY, PRESETS, is_preset, preset_name

from pai_distil_jobs.models.gpus import require_usable_gpus
from pai_distil_jobs.models.hub import load_kwargs
from pai_distil_jobs.models.threads import set_cpu_threads
from pai_distil_jobs.models.tokenizer import build_tokenizer

# Job logs are files, not terminals: transformers' tqdm bars only add noise there.
hf_logging.disable_progress_bar()


def preset_config(name: str, tokenizer: PreTrainedTokenizerBase) -> Qwen3Config:
    shape = PRESETS[name]
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape["hidden"],
        intermediate_size=shape["hidden"] * 4,
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        head_dim=shape["hidden"] // shape["heads"],
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_preset(name: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = build_tokenizer()
    config = preset_config(name, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    setattr(model.config, CONFIG_KEY, name)  # saved in config.json: descendants keep the preset defaults
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _tokenizer(spec: str, **kwargs) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(spec, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer alone, a preset's or a checkpoint's: for checks of the chat template before training."""
    spec = str(spec)
    return build_tokenizer() if is_preset(spec) else _tokenizer(spec, **load_kwargs(spec))


def attention_kernel(requested: str | None) -> str:
    """`auto`: flash-attention on a GPU when the package is installed, else PyTorch's sdpa. flash_attention_2
    asked for where it cannot run is refused in one line (transformers would fail in a traceback)."""
    import importlib.util

    flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    if requested == "flash_attention_2" and not flash:
        why = "the flash_attn package is not installed" if torch.cuda.is_available() else "this job runs on CPU"
        raise JobError(f"train.attn_implementation is flash_attention_2, but {why}; install flash-attn in the job's "
                       "image (on GPUs), or set train.attn_implementation: auto (flash-attention where installed, "
                       "else sdpa)")
    if requested and requested != "auto":
        return requested
    return "flash_attention_2" if flash else "sdpa"


def load_model(spec: str | Path, seed: int = 0, attn_implementation: str | None = None,
               dtype: torch.dtype = torch.float32, device_map: dict | None = None,
               meta: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and its tokenizer from a preset, a local checkpoint directory, or a hub id.

    Weights load in fp32 by default: they are the optimizer's master copy, and bf16 runs as mixed
    precision over them (bf16 master weights lose updates of ~1e-5 relative size). Training stages
    choose the dtype and placement by their sharding (`train.sharded_load`).

    Args:
        device_map (dict, optional): where the weights go as they are read, e.g. {"": this rank's
            GPU}, so a whole model never passes through host memory. Defaults to the CPU.
        meta (bool, optional): build a checkpoint's parameters on the meta device and read no
            weights (buffers are real): a rank whose weights FSDP broadcasts from rank 0, once the
            process group and `cpu_ram_efficient_loading` are set up. Defaults to False.
    """
    spec = str(spec)
    require_usable_gpus()  # a GPU container whose torch cannot use the GPU fails here, in one line
    set_cpu_threads()
    attn = attention_kernel(attn_implementation)
    if is_preset(spec):
        model, tokenizer = build_preset(preset_name(spec), seed)
        model.set_attn_implementation(attn)
        model = model.to(dtype)
        return (model.to(device_map[""]) if device_map else model), tokenizer
    source = load_kwargs(spec)  # a hub id that cannot be had fails here in seconds, in one line
    tokenizer = _tokenizer(spec, **source)
    if meta:
        return _meta_model(spec, source, dtype, attn), tokenizer
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, attn_implementation=attn, device_map=device_map,
                                                 **source)
    return model, tokenizer


def _meta_model(spec: str, source: dict, dtype: torch.dtype, attn: str) -> PreTrainedModel:
    """The checkpoint's model with its parameters on the meta device and real non-persistent buffers
    (rotary frequencies), as transformers builds it for an FSDP rank that is not its node's first."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, GenerationConfig
    from transformers.integrations import is_fsdp_enabled

    if not is_fsdp_enabled() or os.environ.get("LOCAL_RANK", "0") == "0":  # else transformers inits random weights
        raise ValueError("meta=True is for FSDP's cpu_ram_efficient_loading on a rank other than its node's first")
    config = AutoConfig.from_pretrained(spec, **source)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # every weight is "missing" by design
    try:
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
            None, config=config, state_dict={}, dtype=dtype, attn_implementation=attn, use_kernels=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    try:
        model.generation_config = GenerationConfig.from_pretrained(spec, **source)
    except OSError:  # no generation_config.json: the one built from config.json stays
        pass
    return model


def inference_device() -> torch.device:
    """Where a job decodes: this process's GPU when there is one (`LOCAL_RANK`), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_for_inference(spec: str | Path, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model ready to decode: on the GPU in bf16 when the node has one (fp32 on CPU), in eval mode."""
    device = inference_device()
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    model, tokenizer = load_model(spec, seed=seed, dtype=torch.bfloat16 if bf16 else torch.float32)
    return model.to(device).eval(), tokenizer


def end_tokens(tokenizer, model=None) -> list[int]:
    """Every token a reply ends at: eos, the chat template's end of turn (`<|im_end|>`, which is not the
    eos of base checkpoints such as Qwen3-Base) and the model's generation_config eos ids."""
    from pai_distil_jobs.models.chat_template import end_of_turn

    ids = [tokenizer.eos_token_id, end_of_turn(tokenizer)]
    if model is not None:
        gen = model.generation_config.eos_token_id
        ids += gen if isinstance(gen, list) else [gen]
    return sorted({i for i in ids if isinstance(i, int)})


def set_generation_stops(model, tokenizer) -> None:
    """Write the end tokens into the model's generation_config (saved as generation_config.json), so vLLM,
    SGLang and `generate` stop a reply at the template's end of turn, not only at eos."""
    model.generation_config.eos_token_id = end_tokens(tokenizer, model)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
