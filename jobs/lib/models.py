"""Student and teacher models: tiny Qwen3 presets built locally, or any hub id / local path.

A preset is `preset:<name>`: the Qwen3 architecture at a small size, randomly initialised from
a seed, with the project's tokenizer. Everything else goes to `AutoModelForCausalLM`, so a
preset and a real checkpoint take the same path through training and evaluation.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase, Qwen3Config)

from transformers.utils import logging as hf_logging

from pai_distil.presets import PRESETS, is_preset, preset_name

from .tokenizer import build_tokenizer

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
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _tokenizer(spec: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(spec)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str | Path, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and its tokenizer from a preset, a local checkpoint directory, or a hub id."""
    spec = str(spec)
    if is_preset(spec):
        return build_preset(preset_name(spec), seed)
    tokenizer = _tokenizer(spec)
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
    return model, tokenizer


@contextmanager
def _quiet_transformers():
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_reward_model(spec: str | Path, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A one-output sequence scorer: a preset, or any checkpoint (a causal LM's body gets a new
    scalar head in place of its language-model head; a trained reward model loads as it is)."""
    spec = str(spec)
    if is_preset(spec):
        tokenizer = build_tokenizer()
        config = preset_config(preset_name(spec), tokenizer)
        config.num_labels = 1
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    else:
        tokenizer = _tokenizer(spec)
        torch.manual_seed(seed)  # the new head's initialisation
        # A causal LM has no `score` head yet: transformers' "newly initialized" report is expected here.
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(spec, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
