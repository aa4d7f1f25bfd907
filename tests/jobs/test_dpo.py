"""The dpo stage: pairs in the student's chat template, the held-out preference, bad pairs files,
LoRA and loss variants, DPO on the reward-model stage's pairs, and kill-and-resubmit through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import job_errors, kill_after_a_checkpoint, metric_records, pairs_file, run_job, wait_until

from pai_distil.core import oracle as teacher, world

CLI = [sys.executable, "-m", "pai_distil"]


def read_rows(path: Path) -> list[dict]:
    from pai_distil_jobs.train.dpo import read_pairs

    return read_pairs(path)


# -- tokenizing ------------------------------------------------------------------------------------


def test_a_pair_is_the_generation_prompt_then_each_reply_through_its_end_of_turn(tmp_path):
    from pai_distil_jobs.models.chat_template import end_of_turn
    from pai_distil_jobs.train.dpo import encode_pair
    from pai_distil_jobs.models.models import load_tokenizer

    tok = load_tokenizer("preset:micro")
    row = read_rows(pairs_file(tmp_path / "p.jsonl", n=1))[0]
    e = encode_pair(tok, row, 512, end_of_turn(tok))
    prompt = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                     add_generation_prompt=True)
    assert tok.decode(e["prompt_ids"]) == prompt
    assert tok.decode(e["chosen_ids"]) == row["chosen"] + "<|im_end|>"  # the think block, then the answer
    assert tok.decode(e["rejected_ids"]) == row["rejected"] + "<|im_end|>"
    assert row["chosen"].startswith("<think>\n") and not e["truncated"]


def test_a_template_that_opens_the_thought_keeps_it_in_both_replies():
    """DeepSeek-R1-Distill's template strips thoughts and opens `<think>` in the generation prompt:
    the replies continue the opened thought, with the real Qwen3 tokenizer."""
    from real_models import R1_TEMPLATE, qwen_tokenizer

    from pai_distil_jobs.models.chat_template import end_of_turn
    from pai_distil_jobs.train.dpo import encode_pair

    tok = qwen_tokenizer(R1_TEMPLATE)
    row = {"messages_chosen": [{"role": "user", "content": "2 + 2?"},
                               {"role": "assistant", "content": "<think>\n2 + 2 = 4\n</think>\n\n\\boxed{4}"}],
           "messages_rejected": [{"role": "user", "content": "2 + 2?"},
                                 {"role": "assistant", "content": "<think>\n2 + 2 = 5\n</think>\n\n\\boxed{5}"}]}
    e = encode_pair(tok, row, 256, end_of_turn(tok))
    assert tok.decode(e["prompt_ids"]).endswith("<|im_start|>assistant\n<think>\n")
    assert tok.decode(e["chosen_ids"]) == "2 + 2 = 4\n</think>\n\n\\boxed{4}<|im_end|>"
    assert tok.decode(e["rejected_ids"]) == "2 + 2 = 5\n</think>\n\n\\boxed{5}<|im_end|>"


# -- the held-out preference -----------------------------------------------------------------------


def test_completion_logps_sum_the_reply_tokens_only(tmp_path):
    import torch

    from pai_distil_jobs.models.chat_template import end_of_turn
    from pai_distil_jobs.train.dpo import completion_logps, encode_pair
    from pai_distil_jobs.models.models import load_model

    model, tok = load_model("preset:micro", seed=0)
    model.eval()
    rows = read_rows(pairs_file(tmp_path / "p.jsonl", n=3))
    examples = [encode_pair(tok, r, 512, end_of_turn(tok)) for r in rows]
    got = completion_logps(model, examples, tok.pad_token_id, batch_size=2)
    assert got.shape == (3, 2)
    for i, e in enumerate(examples):
        for j, reply in enumerate((e["chosen_ids"], e["rejected_ids"])):
            ids = torch.tensor([e["prompt_ids"] + reply])
            with torch.no_grad():
                logp = model(ids).logits[0, :-1].float().log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
            assert got[i, j].item() == pytest.approx(logp[-len(reply):].sum().item(), abs=1e-3)


def test_preference_is_the_margin_and_share_of_chosen_over_rejected():
    import torch

    from pai_distil_jobs.train.dpo import preference

    ref = torch.tensor([[-10.0, -12.0], [-8.0, -6.0], [-5.0, -5.0]])
    pol = torch.tensor([[-9.0, -13.0], [-8.0, -7.0], [-6.0, -5.0]])
    assert preference(ref) == {"logp_margin": 0.0, "prefers_chosen": 0.3333,
                               "logratio_margin": 0.0, "logratio_prefers_chosen": 0.0}
    # own margins 4, -1, -1; against the reference (2, -2, 0): 2, 1, -1
    assert preference(pol, ref) == {"logp_margin": 0.6667, "prefers_chosen": 0.3333,
                                    "logratio_margin": 0.6667, "logratio_prefers_chosen": 0.6667}


def test_pairs_are_held_out_by_their_split_or_by_prompt(tmp_path):
    from pai_distil_jobs.train.dpo import split_pairs

    rows = read_rows(pairs_file(tmp_path / "p.jsonl", n=20))
    rows = rows + [{**r, "chosen": r["chosen"] + " "} for r in rows]  # two pairs per prompt
    train, held = split_pairs(rows, 0.25, seed=0)
    assert len(held) == 10 and not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    assert split_pairs(rows, 0.25, seed=0) == (train, held)
    marked = [{**r, "split": "eval" if i < 3 else "train"} for i, r in enumerate(rows)]
    assert [len(x) for x in split_pairs(marked, 0.25, seed=0)] == [37, 3]


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, fragment", [
    ('{"prompt": "p", "chosen": "a"}', "line 3: field 'rejected' is missing"),
    ('{"prompt": "p", "chosen": "", "rejected": "b"}', "line 3: field 'chosen' must be non-empty text"),
    ('{"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}',
     "line 3: field 'chosen' must end with an assistant message"),
    ("not json", "row 3 is not JSON"),
])
def test_a_bad_pairs_row_is_one_line_naming_file_line_and_field(tmp_path, line, fragment):
    good = pairs_file(tmp_path / "good.jsonl", n=1).read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n" + line + "\n")  # line 2 is blank
    proc = run_job("dpo", {"student": {"model": "preset:micro"}}, tmp_path / "out", inputs={"pairs": bad})
    errors = job_errors(proc)
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(bad) in errors[0] and fragment in errors[0], errors[0]


def test_an_artifact_without_pairs_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_job("dpo", {}, tmp_path / "out", inputs={"pairs": tmp_path / "empty"})
    assert proc.returncode == 2 and "holds no pairs.jsonl" in job_errors(proc)[0]


def test_configs_that_cannot_work_are_refused():
    from pai_distil.core.config import DPOConfig

    for bad, fragment in [({"loss_type": "dpo"}, "loss_type"), ({"beta": 0}, "beta"),
                          ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "one weight per loss"),
                          ({"train": {"packing": True}}, "remove train.packing")]:
        with pytest.raises(ValueError, match=fragment):
            DPOConfig.model_validate(bad)


# -- training --------------------------------------------------------------------------------------


def test_lora_and_a_loss_variant_train_and_keep_the_reference(tmp_path):
    from safetensors.torch import load_file

    from pai_distil_jobs.models.models import build_preset

    base = tmp_path / "base"
    model, tok = build_preset("micro", seed=0)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    cfg = {"loss_type": ["ipo", "sft"], "loss_weights": [1.0, 0.5], "beta": 0.5,
           "train": {"max_steps": 3, "batch_size": 4, "log_every": 1,
                     "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}}
    out = tmp_path / "out"
    proc = run_job("dpo", cfg, out, inputs={"pairs": pairs_file(tmp_path / "p.jsonl"), "student": base})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss ipo, sft" in proc.stdout and "with the adapter off" in proc.stdout
    assert "defaults for a preset: train.learning_rate=0.0005, train.max_length=512, " \
           "train.gradient_checkpointing=False" in proc.stdout
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "manifest.json").exists()
    before, after = load_file(str(base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed), changed
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(records[0])
    report = json.loads((out / "report.json").read_text())
    assert report["held_out"]["pairs"] > 0 and report["held_out"]["before"]["logratio_margin"] == 0.0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def reward_model_pairs(tmp_path_factory) -> Path:
    """The reward-model stage's output on 100 problems of a teacher that slips half the time:
    right and wrong chains (short, long, cut short) of one problem, paired by the verifier."""
    from conftest import start_teacher

    tmp = tmp_path_factory.mktemp("rm")
    with start_teacher(error_rate=0.5) as t:
        proc = run_job("generate", {"teacher": {"base_url": t.base_url, "model": "oracle-noisy"},
                                    "problems": {"n": 100, "seed": 4, "levels": [1, 2]}, "verbosity": [1, 6]},
                       tmp / "cots", env={"PAI_DISTIL_TEACHER_API_KEY": t.api_key})
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_job("reward-model", {"init_from_student": False, "model": {"model": "preset:micro"},
                                    "eval_fraction": 0.25, "train": {"max_steps": 1, "batch_size": 4}},
                   tmp / "rm", inputs={"cots": tmp / "cots"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "rm"


@pytest.fixture(scope="module")
def sft_student(tmp_path_factory) -> Path:
    """A micro student after 300 SFT steps on the oracle's chains: it half knows the arithmetic."""
    from conftest import start_teacher

    tmp = tmp_path_factory.mktemp("sft")
    with start_teacher() as t:
        proc = run_job("generate", {"teacher": {"base_url": t.base_url, "model": "oracle"},
                                    "problems": {"n": 600, "seed": 1, "levels": [1, 2]}, "verbosity": [3]},
                       tmp / "cots", env={"PAI_DISTIL_TEACHER_API_KEY": t.api_key})
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = {"student": {"model": "preset:micro"},
           "train": {"max_steps": 300, "batch_size": 16, "learning_rate": 0.005, "warmup_steps": 10,
                     "checkpoint_every": 1000}}
    proc = run_job("slow-thinking", cfg, tmp / "student", inputs={"cots": tmp / "cots"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp / "student"


def test_dpo_on_the_reward_model_pairs_raises_held_out_preference(tmp_path, reward_model_pairs, sft_student):
    """SFT -> DPO on the reward-model stage's pairs: on its held-out problems the policy's log-ratio
    (against the SFT reference) favours the chosen chain, and its own margin of chosen over rejected grows."""
    out = tmp_path / "dpo"
    cfg = {"train": {"max_steps": 60, "batch_size": 8, "learning_rate": 0.002, "log_every": 20}}
    proc = run_job("dpo", cfg, out, inputs={"pairs": reward_model_pairs, "student": sft_student}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pairs = [json.loads(x) for x in (reward_model_pairs / "pairs.jsonl").read_text().splitlines()]
    held = sum(p["split"] == "eval" for p in pairs)
    report = json.loads((out / "report.json").read_text())["held_out"]
    before, after = report["before"], report["after"]
    assert report["pairs"] == held >= 10
    assert after["logratio_margin"] > 2 and after["logratio_prefers_chosen"] >= 0.6, report
    assert after["logp_margin"] > before["logp_margin"], report
    assert "held-out pairs" in proc.stdout


# -- kill and resubmit -----------------------------------------------------------------------------


def test_dpo_killed_mid_run_resumes_from_the_newest_checkpoint(tmp_path, monkeypatch):
    """SIGKILL loses only the steps since the newest checkpoint; the resubmitted run takes the same
    batches with the same optimizer state, so those steps log the same numbers again."""
    from pai_distil.run.registry import Registry

    home = tmp_path / "home"
    monkeypatch.setenv("PAI_DISTIL_HOME", str(home))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({"student": {"model": "preset:micro"},
                                   "train": {"max_steps": 24, "batch_size": 4, "learning_rate": 2e-3,
                                             "checkpoint_every": 6, "log_every": 1}}))
    args = ("submit", "dpo", "-c", cfg, "-i", f"pairs={pairs_file(tmp_path / 'p.jsonl', n=40)}")
    env = {**os.environ, "PAI_DISTIL_HOME": str(home)}
    assert subprocess.run([*CLI, *map(str, args), "--detach"], env=env).returncode == 0
    run = Registry().list(stage="dpo")[0]
    killed_at, lost = kill_after_a_checkpoint(run.id)
    assert killed_at < 24

    again = subprocess.run([*CLI, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from checkpoint checkpoint-{killed_at}" in again.stderr
    records = metric_records(Path(run.output) / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))  # none twice, none lost
    for r in records:
        if r["step"] in lost:
            for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected"):
                assert r[key] == pytest.approx(lost[r["step"]][key], abs=1e-4), (r, lost[r["step"]])
    assert json.loads((Path(run.output) / "report.json").read_text())["steps"] == 24


def test_dpo_cancelled_saves_a_checkpoint_and_exits(tmp_path, monkeypatch):
    from pai_distil.run.registry import Registry
    from pai_distil_jobs.train.trainer import newest_checkpoint

    home = tmp_path / "home"
    monkeypatch.setenv("PAI_DISTIL_HOME", str(home))
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({"student": {"model": "preset:micro"},
                                   "train": {"max_steps": 5000, "batch_size": 4, "checkpoint_every": 1000,
                                             "log_every": 1}}))
    env = {**os.environ, "PAI_DISTIL_HOME": str(home)}
    args = ["submit", "dpo", "-c", str(cfg), "-i", f"pairs={pairs_file(tmp_path / 'p.jsonl')}", "--detach"]
    assert subprocess.run([*CLI, *args], env=env).returncode == 0
    run = Registry().list(stage="dpo")[0]
    wait_until(lambda: metric_records(Path(run.output) / "metrics.jsonl"))
    cancel = subprocess.run([*CLI, "runs", "cancel", run.id], env=env, capture_output=True, text=True)
    assert cancel.returncode == 0 and Registry().get(run.id).state == "cancelled", cancel.stderr
    ckpt = newest_checkpoint(Path(run.work_dir) / "checkpoints")
    assert ckpt is not None and 0 < int(ckpt.name.split("-")[1]) < 1000  # saved on SIGTERM, not on schedule
