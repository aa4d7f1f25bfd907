"""Real checkpoints: the real Qwen3 tokenizer with Qwen3's, Qwen2.5's and an R1-Distill-style template.

The loss mask is asserted as text: the trained tokens (labels != -100) of every row kind, decoded.
Stopping is checked end to end on tiny random-weight Qwen3 checkpoints (eos `<|im_end|>`, and
`<|endoftext|>` like Qwen3-Base) that the slow-thinking stage trains, evaluate decodes and
`deploy local` serves. Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from real_models import (GENERATION_TEMPLATE, NO_END_TEMPLATE, QWEN25_TEMPLATE, R1_TEMPLATE, qwen_tokenizer,
                         tiny_checkpoint)

from pai_distil.core.config import AdaptiveThinkingConfig, SlowThinkingConfig
from pai_distil.core.contract import JobError
from pai_distil_jobs.models.chat_template import end_of_turn, honours_enable_thinking, render
from pai_distil_jobs.models.models import end_tokens
from pai_distil_jobs.train.sft_data import IGNORE, MaskError, encode_messages, encode_rows

os.environ["HF_HUB_OFFLINE"] = "1"  # jobs and servers started here inherit it: nothing is downloaded
IM_END, ENDOFTEXT = 151645, 151643

Q = "What is 2 + 3?"
THINK = {"messages": [{"role": "user", "content": Q},
                      {"role": "assistant", "content": "<think>\nTwo plus three.\n</think>\n\nIt is 5."}]}
SOFT_NO_THINK = {"messages": [{"role": "user", "content": Q + " /no_think"},
                              {"role": "assistant", "content": "<think>\n\n</think>\n\nIt is 5."}]}
FLAG_NO_THINK = {"messages": [{"role": "user", "content": Q}, SOFT_NO_THINK["messages"][1]],
                 "chat_template_kwargs": {"enable_thinking": False}}
REASONING = {"messages": [{"role": "user", "content": Q},
                          {"role": "assistant", "content": "It is 5.", "reasoning_content": "Two plus three."}]}
MULTI = {"messages": [{"role": "user", "content": "What is 1 + 1?"},
                      {"role": "assistant", "content": "<think>\nOne and one.\n</think>\n\nIt is 2."},
                      {"role": "user", "content": Q},
                      {"role": "assistant", "content": "<think>\nTwo plus three.\n</think>\n\nIt is 5."}]}
ROWS = {"think": THINK, "soft-no-think": SOFT_NO_THINK, "flag-no-think": FLAG_NO_THINK,
        "reasoning_content": REASONING, "multi-turn": MULTI}

FULL = "<think>\nTwo plus three.\n</think>\n\nIt is 5.<|im_end|>"
EMPTY = "<think>\n\n</think>\n\nIt is 5.<|im_end|>"
# The trained text of each row kind under each template. Qwen3 pre-fills the empty thought for
# enable_thinking=False (it is prompt, not target); Qwen2.5 ignores the flag; the R1-style prompt
# already holds `<think>\n`, so the student writes from inside the thought.
EXPECTED = {
    "qwen3": {"think": FULL, "soft-no-think": EMPTY, "flag-no-think": "It is 5.<|im_end|>",
              "reasoning_content": FULL, "multi-turn": FULL},
    "qwen2.5": {"think": FULL, "soft-no-think": EMPTY, "flag-no-think": EMPTY, "reasoning_content": FULL,
                "multi-turn": FULL},
    "r1": {"think": FULL[len("<think>\n"):], "soft-no-think": EMPTY[len("<think>\n"):],
           "flag-no-think": EMPTY[len("<think>\n"):], "reasoning_content": FULL[len("<think>\n"):],
           "multi-turn": FULL[len("<think>\n"):]},
    # a {% generation %} template trains what it marks, thoughts as written: its last marked turn (every
    # marked turn with train.all_turns)
    "generation": {"think": FULL, "soft-no-think": EMPTY, "flag-no-think": EMPTY, "reasoning_content": FULL,
                   "multi-turn": FULL},
}
TEMPLATES = {"qwen3": None, "qwen2.5": QWEN25_TEMPLATE, "r1": R1_TEMPLATE, "generation": GENERATION_TEMPLATE}


def trained_text(tok, row: dict, max_length: int = 4096) -> str:
    e = encode_messages(tok, row["messages"], max_length, row.get("chat_template_kwargs"))
    return tok.decode([t for t in e["labels"] if t != IGNORE], skip_special_tokens=False)


# -- the loss mask ---------------------------------------------------------------------------------


@pytest.mark.parametrize("eos", ["<|im_end|>", "<|endoftext|>"])
@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("kind", list(ROWS))
def test_trained_tokens_of_every_row_kind(template, kind, eos):
    tok = qwen_tokenizer(TEMPLATES[template], eos)
    assert trained_text(tok, ROWS[kind]) == EXPECTED[template][kind]


@pytest.mark.parametrize("template", ["qwen3", "qwen2.5", "r1"])
@pytest.mark.parametrize("kind", list(ROWS))
def test_the_context_before_the_target_is_the_generation_prompt(template, kind):
    """What precedes the trained tokens is exactly what the student is given at inference."""
    tok = qwen_tokenizer(TEMPLATES[template])
    row = ROWS[kind]
    e = encode_messages(tok, row["messages"], 4096, row.get("chat_template_kwargs"))
    trained = [i for i, t in enumerate(e["labels"]) if t != IGNORE]
    first, last = trained[0], trained[-1]
    prompt = render(tok, row["messages"][:-1], True, **row.get("chat_template_kwargs", {}))
    assert e["input_ids"][:first] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert e["labels"][first:last + 1] == e["input_ids"][first:last + 1] and e["input_ids"][last] == IM_END
    assert tok.decode(e["input_ids"][last + 1:]) == "\n"  # the newline after the turn is context only
    assert e["ended"] and not e["truncated"]


def test_end_of_turn_is_im_end_whatever_the_eos():
    for eos in ("<|im_end|>", "<|endoftext|>"):
        tok = qwen_tokenizer(eos=eos)
        assert end_of_turn(tok) == IM_END
    assert end_tokens(qwen_tokenizer(eos="<|endoftext|>")) == [ENDOFTEXT, IM_END]
    assert end_tokens(qwen_tokenizer()) == [IM_END]


def test_a_template_with_no_end_token_is_refused_in_one_line():
    with pytest.raises(JobError) as e:
        encode_rows(qwen_tokenizer(NO_END_TEMPLATE), [THINK], 4096, log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("training row 1:") and "end-of-turn token" in msg


def test_a_template_whose_prompt_differs_from_the_conversation_is_refused_in_one_line():
    odd = QWEN25_TEMPLATE.replace("{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>bot\\n' }}")
    with pytest.raises(JobError) as e:
        encode_rows(qwen_tokenizer(odd), [THINK], 4096, log=lambda m: None)
    assert "\n" not in str(e.value) and "{% generation %}" in str(e.value)


def test_a_thought_under_enable_thinking_false_is_refused():
    row = {"messages": THINK["messages"], "chat_template_kwargs": {"enable_thinking": False}}
    with pytest.raises(MaskError, match="enable_thinking=False"):
        encode_messages(qwen_tokenizer(), row["messages"], 4096, row["chat_template_kwargs"])


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_the_reward_model_scores_the_reply_as_the_student_writes_it(template):
    """The scored tokens follow the generation prompt exactly and hold the thought, even where the
    template strips it from the conversation (R1-style); an empty reply is still one turn."""
    from pai_distil_jobs.train.reward import encode

    tok = qwen_tokenizer(TEMPLATES[template])
    reply = THINK["messages"][1]["content"]
    ids, n = encode(tok, Q, reply, 4096)
    prompt = render(tok, THINK["messages"][:1], True)
    assert ids[:-n] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[-n:]) == EXPECTED["r1" if template == "r1" else "qwen3"]["think"] + "\n"
    ids, n = encode(tok, Q, "", 4096)
    assert ids[:-n] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[-n:]).strip("\n") in ("<|im_end|>", "<think>\n\n</think>\n\n<|im_end|>")


# -- the truncation report -------------------------------------------------------------------------


def test_truncation_report_counts_rows_that_lose_their_end():
    tok = qwen_tokenizer()
    long = {"messages": [THINK["messages"][0], {"role": "assistant",
                                                "content": "<think>\n" + "step " * 60 + "\n</think>\n\nIt is 5."}]}
    lines: list[str] = []
    out = encode_rows(tok, [THINK] * 99 + [long], 40, max_truncated=0.05, log=lines.append)
    assert len(out) == 100 and lines == ["truncation: 1 of 100 rows cut at train.max_length=40, "
                                         "1 lost their end-of-turn token"]
    lines.clear()
    encode_rows(tok, [THINK] * 97 + [long] * 3, 40, max_truncated=0.05, log=lines.append)
    assert lines[0].startswith("warning: truncation: 3 of 100 rows cut")
    with pytest.raises(JobError) as e:
        encode_rows(tok, [THINK] * 9 + [long], 40, max_truncated=0.05, log=lines.append)
    assert "\n" not in str(e.value) and "raise train.max_length or train.max_truncated" in str(e.value)
    cut = encode_messages(tok, long["messages"], 40)
    assert len(cut["input_ids"]) == 40 and cut["truncated"] and not cut["ended"]


# -- variant y and the thinking switch -------------------------------------------------------------


def test_which_templates_honour_enable_thinking():
    assert honours_enable_thinking(qwen_tokenizer())
    assert not honours_enable_thinking(qwen_tokenizer(QWEN25_TEMPLATE))
    assert not honours_enable_thinking(qwen_tokenizer(R1_TEMPLATE))


@pytest.fixture(scope="module")
def qwen25_checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("qwen25") / "ckpt", arch="qwen2", template=QWEN25_TEMPLATE)


def _cot_rows(n: int = 6) -> dict[str, list[dict]]:
    return {str(i): [{"problem_id": str(i), "problem": f"What is {i} + 1?", "thought": f"{i} and one.",
                      "solution": f"\\boxed{{{i + 1}}}", "correct": True, "rv": 3}] for i in range(n)}


def test_variant_y_refuses_a_template_without_the_switch_in_one_line(qwen25_checkpoint):
    from pai_distil_jobs.stages.adaptive_thinking import build_y_for_template

    cfg = AdaptiveThinkingConfig(variant="y", student={"model": str(qwen25_checkpoint)}, no_think_ratio=1.0,
                                 soft_switch_ratio=0.0)
    with pytest.raises(JobError) as e:
        build_y_for_template(_cot_rows(), cfg)
    assert "\n" not in str(e.value) and "ignores enable_thinking" in str(e.value)
    assert "no_template_switch: soft_switch" in str(e.value)


def test_variant_y_falls_back_to_no_think_rows_when_asked(qwen25_checkpoint):
    from pai_distil_jobs.stages.adaptive_thinking import build_y_for_template

    cfg = AdaptiveThinkingConfig(variant="y", student={"model": str(qwen25_checkpoint)}, no_think_ratio=1.0,
                                 soft_switch_ratio=0.0, no_template_switch="soft_switch")
    rows, counts = build_y_for_template(_cot_rows(), cfg, say=lambda m: None)
    assert counts == {"thinking": 6, "non-thinking (/no_think)": 6}
    assert not any("chat_template_kwargs" in r for r in rows)


# -- model references and the cache key ------------------------------------------------------------


def test_model_references_are_checked_in_one_line(tmp_path, monkeypatch):
    from pai_distil.core.errors import UserError
    from pai_distil.core.config import validate

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    assert validate(SlowThinkingConfig, {"student": {"model": "ckpt"}}, "cfg").student.model == str(tmp_path / "ckpt")
    assert validate(SlowThinkingConfig, {"student": {"model": "Qwen/Qwen3-0.6B"}}, "cfg").student.model == "Qwen/Qwen3-0.6B"
    for bad, fragment in [("./missing", "no checkpoint directory at './missing'"),
                          ("ckpt/typo", "no checkpoint directory at 'ckpt/typo'"),
                          ("empty", "has no config.json"), ("not a model!", "neither a preset"),
                          ("preset:huge", "unknown preset")]:
        with pytest.raises(UserError) as e:
            validate(SlowThinkingConfig, {"student": {"model": bad}}, "cfg")
        assert "\n" not in str(e.value).strip() and "student.model" in str(e.value) and fragment in str(e.value)


def test_the_cache_key_follows_the_checkpoint_contents(tmp_path):
    from pai_distil.run.submission import cache_key

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    cfg = SlowThinkingConfig(student={"model": str(ckpt)})
    key = cache_key("slow-thinking", cfg, {})
    assert cache_key("slow-thinking", cfg, {}) == key
    config = ckpt / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"<|im_end|>"', '"<|endoftext|>"', 1))
    assert cache_key("slow-thinking", cfg, {}) != key
    start = time.perf_counter()
    cache_key("slow-thinking", cfg, {})
    assert time.perf_counter() - start < 2


def test_a_hub_id_that_cannot_be_had_offline_is_one_line_at_once(monkeypatch):
    from huggingface_hub import constants

    from pai_distil_jobs.models.hub import load_kwargs

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(JobError) as e:
        load_kwargs("Qwen/Qwen3-0.6B-not-cached")
    assert time.perf_counter() - start < 2 and "\n" not in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)


# -- train, evaluate, serve: answers end at <|im_end|> ---------------------------------------------

BUDGET = 48


def _cli(home, *args) -> subprocess.CompletedProcess:
    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}
    env.update(PAI_DISTIL_HOME=str(home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pai_distil", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def _submit(home, tmp_path, stage: str, config: dict, *inputs: str):
    cfg = tmp_path / f"{stage}.json"
    cfg.write_text(json.dumps(config))
    proc = _cli(home, "submit", stage, "-c", cfg, *[a for i in inputs for a in ("-i", i)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"done: {stage} → ")]
    return proc.stdout + proc.stderr, done[0].split(" → ", 1)[1].strip()


def _short_rows(n: int = 48) -> list[dict]:
    """Rows with one short answer: a random-weight model learns it, and its end, in a few dozen steps."""
    from pai_distil.core import world

    return [{"messages": [{"role": "user", "content": p.text},
                          {"role": "assistant", "content": "<think>\nShort.\n</think>\n\nDone."}]}
            for p in world.generate_problems(n, 3)]


@pytest.mark.slow
@pytest.mark.parametrize("eos", ["<|im_end|>", "<|endoftext|>"])
def test_a_real_architecture_checkpoint_trains_evaluates_and_serves_stopping_at_im_end(tmp_path, eos):
    """Trained, not forced: 20 SFT steps (lr 1e-2, batch 4) on one short answer teach the random-weight
    Qwen3 (151 k vocabulary, real tokenizer) to write it and end the turn. With eos `<|endoftext|>` (a
    base model) it stops only because evaluate and the server stop at the template's `<|im_end|>` too."""
    import openai
    from serving import start_local

    base = tiny_checkpoint(tmp_path / "base", eos=eos)
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in _short_rows()))
    home = tmp_path / "home"
    train = {"max_steps": 20, "batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 2, "max_length": 128,
             "gradient_checkpointing": False, "log_every": 10, "checkpoint_every": 100}
    log, student = _submit(home, tmp_path, "slow-thinking", {"student": {"model": str(base)}, "train": train},
                           f"cots={sft}")
    assert "truncation: 0 of 48 rows cut" in log
    stops = json.loads((Path(student) / "generation_config.json").read_text())["eos_token_id"]
    assert IM_END in stops and (ENDOFTEXT in stops) == (eos == "<|endoftext|>")

    evaluation = {"models": [{"name": "student", "model": student}], "problems": {"n": 6, "seed": 11},
                  "max_new_tokens": BUDGET}
    _, out = _submit(home, tmp_path, "evaluate", evaluation)
    overall = json.loads((Path(out) / "report.json").read_text())["models"][0]["overall"]
    assert overall["truncated"] == 0 and overall["mean_tokens"] < BUDGET / 3, overall

    with start_local(Path(student), None, name="student") as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        reply = client.chat.completions.create(model="student", max_tokens=BUDGET, temperature=0,
                                               messages=[{"role": "user", "content": "Start with 4. Add 3."}])
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens < BUDGET / 3
    assert reply.choices[0].message.content.strip() == "Done."


# -- stopping at the end of turn -------------------------------------------------------------------


@pytest.mark.parametrize("template", ["qwen3", "r1"])
def test_generate_stops_at_im_end_when_eos_is_endoftext(template):
    """Forced, not trained: the lm_head makes `<|im_end|>` the argmax. A base model's eos is
    `<|endoftext|>`, so stopping at eos alone would run to the budget."""
    from real_models import force_token, tiny_model

    from pai_distil_jobs.models.generation import generate

    model, tok = tiny_model(eos="<|endoftext|>", template=TEMPLATES[template])
    force_token(model, IM_END)
    out = generate(model, tok, [Q], max_new_tokens=16)[0]
    assert out["tokens"] == 1 and not out["truncated"] and out["ids"] == [IM_END]
    assert out["text"] == ("<think>\n" if template == "r1" else "")  # the thought the R1 prompt opened


def test_saved_generation_config_stops_at_both(tmp_path):
    from transformers import GenerationConfig
    from real_models import tiny_model

    from pai_distil_jobs.models.models import set_generation_stops

    model, tok = tiny_model(eos="<|endoftext|>")
    set_generation_stops(model, tok)
    model.save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == [ENDOFTEXT, IM_END]


def test_a_checkpoint_path_missing_where_the_job_runs_is_one_line():
    from pai_distil_jobs.models.hub import load_kwargs

    with pytest.raises(JobError, match="no checkpoint directory at '/nowhere/ckpt' where this job runs"):
        load_kwargs("/nowhere/ckpt")


def test_a_job_given_an_uncached_hub_id_offline_fails_in_one_line(tmp_path):
    from conftest import job_errors, run_job

    cfg = {"models": [{"name": "qwen", "model": "Qwen/Qwen3-0.6B-not-cached"}], "problems": {"n": 2}}
    proc = run_job("evaluate", cfg, tmp_path / "out", env={"HF_HUB_OFFLINE": "1"})  # its speed: the test above
    assert proc.returncode == 2
    assert len(job_errors(proc)) == 1 and "Traceback" not in proc.stderr
    assert "'Qwen/Qwen3-0.6B-not-cached' is not in the local Hugging Face cache" in job_errors(proc)[0]


def test_lora_all_linear_on_a_tied_checkpoint_trains_exactly_the_adapted_layers(tmp_path):
    """LoRA with its default targets (all-linear) on a tied-embedding Qwen3 with the real tokenizer: the
    adapter holds every attention and MLP projection and never the tied lm_head / embeddings; the merged
    checkpoint changes exactly those projections, keeps the tie and leaves norms and embeddings as they were."""
    import torch
    from conftest import run_job
    from safetensors.torch import load_file

    base = tiny_checkpoint(tmp_path / "base")
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in _short_rows(8)))
    cfg = {"student": {"model": str(base)},
           "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "max_length": 128, "log_every": 1,
                     "gradient_checkpointing": False, "checkpoint_every": 100, "lora": {"r": 4, "alpha": 8}}}
    out = tmp_path / "out"
    proc = run_job("slow-thinking", cfg, out, inputs={"cots": sft}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    targets = adapter["target_modules"]  # PEFT resolves all-linear to the module paths it wrapped
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"}
    assert len(targets) == 2 * 7  # two layers, seven projections each, and nothing else
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in after  # still tied: one matrix, the embeddings'
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    projections = {k for k in before if k.endswith("_proj.weight")}
    assert changed == projections, sorted(changed ^ projections)
