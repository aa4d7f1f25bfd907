"""The project's tokenizer for tiny presets: byte-level BPE with Qwen-style special tokens.

Digits are split one per token (as Qwen does), so arithmetic is learnable by a small model, and
the byte-level alphabet means any text can be encoded. The merges are learned from a fixed
corpus drawn from the synthetic world, so the tokenizer is the same on every machine.
"""

from __future__ import annotations

import random

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pai_distil.core import oracle as teacher, world

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Qwen3-style template: `enable_thinking=False` pre-fills an empty thought, and a final answer with
# no thought is written after an empty one, as Qwen3's own template does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if loop.last and message['role'] == 'assistant' and '</think>' not in content %}"
    "{%- set content = '<think>\\n\\n</think>\\n\\n' + content %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _corpus(n: int = 3000, seed: int = 1234):
    rng = random.Random(seed)
    for i, p in enumerate(world.generate_problems(n, seed)):
        yield p.text + ("", " /think", " /no_think")[i % 3]  # the prompt switches of hybrid thinking
        yield teacher.respond(p, rv=rng.randint(0, 9), rng=rng)
    yield "system user assistant You are a helpful assistant. Think step by step."


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # One digit per token (with its leading space), then GPT-2 style word splitting.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast
