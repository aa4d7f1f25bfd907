"""The reward-model and grpo stages as real jobs, the reward endpoint over real HTTP, and GRPO's
kill-and-resume through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import TEST_API_KEY, free_socket, job_errors, kill_after_a_checkpoint, metric_records, run_job, serve_asgi
from serving import micro_reward_checkpoint

from pai_distil.core import world

CLI = [sys.executable, "-m", "pai_distil"]


def saved(path: Path, loaded) -> Path:
    model, tokenizer = loaded
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def micro_student(tmp_path_factory) -> Path:
    """An untrained micro student saved as a checkpoint (a real model: its samples are mostly wrong)."""
    from pai_distil_jobs.models.models import load_model

    return saved(tmp_path_factory.mktemp("student"), load_model("preset:micro", seed=0))


@pytest.fixture(scope="module")
def micro_reward_model(tmp_path_factory) -> Path:
    """An untrained micro reward model checkpoint: real scoring, untrained weights."""
    return micro_reward_checkpoint(tmp_path_factory.mktemp("rm"))


def noisy_cots(teacher_factory, tmp_path, n=24, verbosity=(1, 6)) -> Path:
    """CoTs of a teacher that slips often: right and wrong candidates for the same problems."""
    t = teacher_factory(error_rate=0.5)
    out = tmp_path / "cots"
    proc = run_job("generate", {"teacher": {"base_url": t.base_url, "model": "oracle-noisy"},
                                "problems": {"n": n, "seed": 4, "levels": [2]}, "verbosity": list(verbosity)},
                   out, env={"PAI_DISTIL_TEACHER_API_KEY": t.api_key})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, t


# -- reward-model ---------------------------------------------------------------------------------


def test_reward_model_builds_pairs_from_judgments_and_trains(teacher_factory, tmp_path, micro_student):
    cots, t = noisy_cots(teacher_factory, tmp_path)
    cfg = {"judge": {"base_url": t.base_url, "model": "judge", "max_tokens": 64},
           "student_samples": {"per_problem": 2, "max_new_tokens": 24},
           "eval_fraction": 0.25, "min_margin": 0.1,
           "train": {"max_steps": 6, "batch_size": 4, "checkpoint_every": 3, "log_every": 1}}
    out = tmp_path / "rm"
    proc = run_job("reward-model", cfg, out, inputs={"cots": cots, "student": micro_student},
                   env={"PAI_DISTIL_TEACHER_API_KEY": t.api_key}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    candidates = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    sources = {c["source"] for c in candidates}
    assert sources == {"teacher-rv1", "teacher-rv6", "teacher-cut", "student"}
    cut = [c for c in candidates if c["source"] == "teacher-cut"]
    assert 0 < len(cut) <= 24 and len(candidates) == 24 * 2 + 24 * 2 + len(cut)
    assert sum(not c["correct"] for c in cut) > len(cut) / 2  # the answer of an unfinished chain is mostly wrong
    assert all(c["rv"] is not None and c["cd"] == 5 for c in candidates)  # the judge rated every candidate
    assert any(c["correct"] for c in candidates) and not all(c["correct"] for c in candidates)

    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert pairs and {"prompt", "chosen", "rejected"} <= set(pairs[0])
    assert all(p["chosen_score"] - p["rejected_score"] >= 0.1 for p in pairs)
    assert {p["kind"] for p in pairs} == {"correctness", "length"}
    held = {p["problem_id"] for p in pairs if p["split"] == "eval"}
    assert held and not held & {p["problem_id"] for p in pairs if p["split"] == "train"}

    report = json.loads((out / "report.json").read_text())
    assert report["held_out_pairs"]["overall"]["pairs"] == sum(p["split"] == "eval" for p in pairs)
    assert 0 <= report["held_out_pairs"]["overall"]["accuracy"] <= 1
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert all(m["chosen_nll"] > 0 for m in metrics)  # the language-model loss is on by default
    assert (out / "manifest.json").exists() and (out / "reward_stats.json").exists()

    from pai_distil_jobs.train.reward import RewardScorer

    scorer = RewardScorer(out)
    scores = scorer.score([pairs[0]["prompt"]] * 2, [pairs[0]["chosen"], pairs[0]["rejected"]])
    assert len(scores) == 2 and scores == scorer.score([pairs[0]["prompt"]] * 2, [pairs[0]["chosen"], pairs[0]["rejected"]])


def test_a_chain_cut_short_answers_the_last_value_it_reached():
    import random

    from pai_distil.core import oracle as teacher
    from pai_distil_jobs.stages.reward_model import cut_short

    three, one = world.generate_problems(2, 5, [2, 1])
    thought, solution = world.split_thought(teacher.respond(three, 3))
    steps = three.steps()
    for seed in range(10):
        cut_thought, cut_solution = cut_short({"thought": thought, "solution": solution}, random.Random(seed))
        kept = cut_thought.splitlines()
        assert 1 <= len(kept) < len(steps) and thought.startswith(cut_thought)
        assert world.extract_answer(cut_solution) == str(steps[len(kept) - 1].after)
    one_thought, one_solution = world.split_thought(teacher.respond(one, 3))
    assert cut_short({"thought": one_thought, "solution": one_solution}, random.Random(0)) is None


def test_reward_model_resumes_exactly_from_its_newest_checkpoint(tmp_path):
    """Head and language model both come back from a checkpoint: a run stopped at step 2 and
    resumed ends with the weights of a run that never stopped."""
    import torch
    from pai_distil_jobs.train.reward import load_reward_model
    from pai_distil_jobs.train.reward import encode, reward_trainer
    from pai_distil_jobs.train.trainer import TrainSettings, fit

    problem = world.generate_problems(1, seed=5, levels=[1])[0]
    right = f"<think>\n{problem.start} -> {problem.answer}\n</think>\n\nThe answer is \\boxed{{{problem.answer}}}."
    wrong = right.replace(f"{{{problem.answer}}}", f"{{{(int(problem.answer) + 1) % 10}}}")

    def trained(ckpt_dir: Path, max_steps: int):  # one schedule of 4 steps, whatever max_steps
        model, tok = load_reward_model("preset:micro", seed=0)
        ex = {"chosen": encode(tok, problem.text, right, 128), "rejected": encode(tok, problem.text, wrong, 128),
              "chosen_score": 1.0, "rejected_score": 0.0}
        settings = TrainSettings(max_steps=max_steps, schedule_steps=4, batch_size=2, learning_rate=1e-2,
                                 warmup_steps=1, checkpoint_every=2)
        trainer, callback = reward_trainer(model, tok, [ex] * 4, settings, ckpt_dir,
                                           tmp_path / f"{ckpt_dir.name}.jsonl", log=lambda *_: None)
        fit(trainer, callback, ckpt_dir, log=lambda *_: None)
        return model

    straight = trained(tmp_path / "straight", 4)
    trained(tmp_path / "stopped", 3)
    (tmp_path / "stopped" / "checkpoint-3").rename(tmp_path / "stopped" / "final")  # resume from step 2
    resumed = trained(tmp_path / "stopped", 4)
    assert straight.head.weight.abs().sum() > 0
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_reward_model_without_judge_uses_the_verifier(teacher_factory, tmp_path, micro_student):
    cots, _ = noisy_cots(teacher_factory, tmp_path, n=16)
    cfg = {"init_from_student": False, "model": {"model": "preset:micro"}, "eval_fraction": 0.25,
           "likelihood_weight": 0.5, "likelihood": "sum", "train": {"max_steps": 2, "batch_size": 4}}
    proc = run_job("reward-model", cfg, tmp_path / "rm", inputs={"cots": cots, "base": micro_student}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reward model from {micro_student}" in proc.stdout  # the `base` input comes before `model`
    pairs = [json.loads(x) for x in (tmp_path / "rm" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and {p["kind"] for p in pairs} == {"correctness"}  # no RV ratings: correctness pairs only

    from pai_distil_jobs.train.reward import load_reward_model

    saved = load_reward_model(tmp_path / "rm")[0]
    assert (saved.likelihood_weight, saved.likelihood) == (0.5, "sum")  # saved with the checkpoint


def test_reward_likelihood_per_token_is_neutral_to_length(micro_student):
    """The default score adds the mean log-probability of the response tokens, the `sum` form their
    total; with the head at zero the score is that term alone."""
    import torch

    from pai_distil_jobs.train.reward import load_reward_model
    from pai_distil_jobs.train.reward import batch_of, encode

    model, tok = load_reward_model(micro_student, likelihood_weight=1.0)
    assert model.likelihood == "mean"
    model.eval()
    encoded = [encode(tok, "What is 2 + 2?", r, 256) for r in ("4", "The answer is \\boxed{4}. " * 8)]
    batch = batch_of(encoded, tok.pad_token_id)
    with torch.no_grad():
        logits = model.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        token_logp = logits[:, :-1].float().log_softmax(-1).gather(2, batch["input_ids"][:, 1:, None])[..., 0]
        total = (token_logp * batch["response_mask"][:, 1:]).sum(1)
        mean = model(**batch)
        model.likelihood = "sum"
        summed = model(**batch)
    n = torch.tensor([n for _, n in encoded], dtype=torch.float)
    assert torch.allclose(summed, total, atol=1e-4)
    assert torch.allclose(mean, total / n, atol=1e-4)
    assert summed[1] < summed[0] - 20  # the sum pays for saying less; the mean does not scale with length


def test_reward_loss_adds_the_language_model_loss_of_the_chosen_responses(micro_student, tmp_path):
    from pai_distil_jobs.train.reward import load_reward_model
    from pai_distil_jobs.train.reward import encode, pair_batch, pair_loss

    model, tok = load_reward_model(micro_student)
    prompt = "What is 2 + 2?"
    examples = [{"chosen": encode(tok, prompt, "The answer is \\boxed{4}.", 128),
                 "rejected": encode(tok, prompt, "The answer is \\boxed{5}.", 128),
                 "chosen_score": 1.0, "rejected_score": 0.0}]

    def loss(lm_weight):
        return pair_loss(model, pair_batch(examples, tok.pad_token_id), lm_weight=lm_weight)

    (plain, _), (with_lm, metrics) = loss(0.0), loss(0.5)
    assert metrics["chosen_nll"] > 0
    assert abs((with_lm - plain).item() - 0.5 * metrics["chosen_nll"]) < 1e-3


def test_reward_model_with_one_kind_of_candidate_fails_in_one_line(tmp_path):
    from pai_distil.core import oracle as teacher

    rows = []
    for p in world.generate_problems(10, 1, [1]):
        thought, solution = world.split_thought(teacher.respond(p, 3))
        rows.append({"id": p.id, "problem_id": p.id, "problem": p.text, "answer": p.answer, "thought": thought,
                     "solution": solution, "correct": True, "domain": "synthetic"})
    cots = tmp_path / "cots.jsonl"
    cots.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_job("reward-model", {"init_from_student": False, "model": {"model": "preset:micro"}},
                   tmp_path / "rm", inputs={"cots": cots})
    assert proc.returncode == 2
    assert len(job_errors(proc)) == 1 and "too few preference pairs" in job_errors(proc)[0]


# -- the reward endpoint --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_server(micro_reward_model):
    from pai_distil_jobs.train.reward import RewardScorer
    from pai_distil_jobs.serve.reward import create_app

    with serve_asgi(create_app(RewardScorer(micro_reward_model).score, TEST_API_KEY, max_items=8)) as url:
        yield url


AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}
ITEM = {"prompt": world.generate_problems(1, 1)[0].text, "completion": "<think>\n3 -> 4\n</think>\n\n\\boxed{4}"}


def test_reward_endpoint_scores_a_batch(reward_server):
    r = httpx.post(f"{reward_server}/v1/score", headers=AUTH, json={"items": [ITEM, {**ITEM, "completion": "no"}]})
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores) and scores[0] != scores[1]
    again = httpx.post(f"{reward_server}/v1/score", headers=AUTH, json={"items": [ITEM]}).json()["scores"]
    assert again == pytest.approx(scores[:1], abs=1e-5)  # a score does not depend on its batch


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "wrong"}])
def test_reward_endpoint_refuses_requests_without_the_key(reward_server, headers):
    r = httpx.post(f"{reward_server}/v1/score", headers=headers, json={"items": [ITEM]})
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]


def test_reward_endpoint_takes_the_bare_key_as_eas_forwards_it(reward_server):
    r = httpx.post(f"{reward_server}/v1/score", headers={"Authorization": TEST_API_KEY}, json={"items": [ITEM]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"{}", 400, "'items' is required"),
    (b'{"items": []}', 400, "non-empty"),
    (b'{"items": "text"}', 400, "'items' is required"),
    (b'{"items": [{"prompt": "p"}]}', 400, "items[0]"),
    (b'{"items": [{"prompt": "p", "completion": 3}]}', 400, "items[0]"),
    (json.dumps({"items": [ITEM] * 9}).encode(), 413, "at most 8"),
    (b"\xff\xfe", 400, "not UTF-8 text"),
])
def test_reward_endpoint_bad_bodies_get_4xx_with_a_message(reward_server, body, status, fragment):
    r = httpx.post(f"{reward_server}/v1/score", headers=AUTH, content=body)
    assert r.status_code == status and fragment in r.json()["error"]["message"], r.text
    ok = httpx.post(f"{reward_server}/v1/score", headers=AUTH, json={"items": [ITEM]})
    assert ok.status_code == 200  # still serving


def test_reward_serve_cli_end_to_end(micro_reward_model):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PAI_DISTIL_REWARD_API_KEY": TEST_API_KEY}
    proc = subprocess.Popen([*CLI, "reward", "serve", str(micro_reward_model), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/score", headers=AUTH, json={"items": [ITEM]})
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.3)
        assert r.status_code == 200 and len(r.json()["scores"]) == 1
        assert httpx.post(f"http://127.0.0.1:{port}/v1/score", json={"items": [ITEM]}).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_reward_serve_without_key_is_one_line_error(micro_reward_model):
    env = {k: v for k, v in os.environ.items() if k != "PAI_DISTIL_REWARD_API_KEY"}
    proc = subprocess.run([*CLI, "reward", "serve", str(micro_reward_model)], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.count("error:") == 1 and "PAI_DISTIL_REWARD_API_KEY" in proc.stderr


def test_reward_serve_of_a_student_checkpoint_is_one_line_error(micro_student):
    proc = subprocess.run([*CLI, "reward", "serve", str(micro_student), "--no-auth"], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.count("error:") == 1 and "reward_head.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- grpo -----------------------------------------------------------------------------------------


def grpo_config(**over) -> dict:
    cfg = {"problems": {"n": 16, "seed": 3, "levels": [1]}, "group_size": 4, "max_completion_length": 6,
           "train": {"max_steps": 4, "prompts_per_step": 2, "checkpoint_every": 2, "log_every": 1}}
    cfg.update(over)
    return cfg


def test_grpo_logs_reward_accuracy_length_kl_per_step(tmp_path, micro_student, micro_reward_model):
    out = tmp_path / "grpo"
    proc = run_job("grpo", grpo_config(), out, inputs={"student": micro_student, "reward_model": micro_reward_model},
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert {"reward", "accuracy", "length", "kl", "truncated", "rm_score"} <= set(r)
        assert 0 <= r["accuracy"] <= 1 and 0 < r["length"] <= 6 and r["kl"] >= 0
    # an untrained student rambles: its completions hit the 6-token cap and the job says so
    assert "reached max_completion_length=6" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["last_steps"]["accuracy"] is not None
    # what it learned, visible: each logged step's completions (here the whole batch of 2 x 4) with their rewards
    shown = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert [c["step"] for c in shown] == [s for s in (1, 2, 3, 4) for _ in range(8)]
    for step, r in zip((1, 2, 3, 4), records):
        batch = [c for c in shown if c["step"] == step]
        assert len({c["prompt"] for c in batch}) == 2 and all(c["completion"] for c in batch)
        assert all(set(c["rewards"]) == {"correct", "overlong", "no_answer", "reward_model"} for c in batch)
        assert sum(c["reward"] for c in batch) / 8 == pytest.approx(r["reward"], abs=1e-4)
        assert sum(c["rewards"]["correct"] for c in batch) / 8 == pytest.approx(r["accuracy"])
    assert (out / "model.safetensors").exists() and (out / "manifest.json").exists()


def test_grpo_penalties_lower_the_reward_of_cut_and_answerless_completions(tmp_path, micro_student):
    cfg = grpo_config(reward={"rm_weight": 0, "correct_weight": 1, "overlong_penalty": 0.5, "format_penalty": 0.25})
    cfg["train"]["max_steps"] = 1
    proc = run_job("grpo", cfg, tmp_path / "g", inputs={"student": micro_student})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "g" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["no_answer"] > 0  # the untrained micro student rarely writes a boxed answer
    expected = rec["accuracy"] - 0.5 * rec["truncated"] - 0.25 * rec["no_answer"]
    assert rec["reward"] == pytest.approx(expected, abs=1e-3)
    assert "rm_score" not in rec


def test_grpo_scores_with_a_served_reward_model(tmp_path, micro_student, reward_server):
    cfg = grpo_config(reward={"rm_weight": 1, "correct_weight": 0,
                              "endpoint": {"base_url": reward_server, "batch_size": 3}})
    cfg["train"]["max_steps"] = 2
    proc = run_job("grpo", cfg, tmp_path / "g", inputs={"student": micro_student},
                   env={"PAI_DISTIL_REWARD_API_KEY": TEST_API_KEY})
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = run_job("grpo", cfg, tmp_path / "g2", inputs={"student": micro_student},
                  env={"PAI_DISTIL_REWARD_API_KEY": "wrong"})
    assert bad.returncode == 2 and "refused the key" in job_errors(bad)[0]


def test_grpo_on_code_problems_names_its_sandbox_and_refuses_none(tmp_path, micro_student):
    rows = [{"id": f"c{i}", "problem": "Read A and B; print A + B.", "domain": "code",
             "tests": [{"input": "1 2\n", "output": "3\n"}]} for i in range(2)]
    (tmp_path / "code.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs = {"student": micro_student, "problems": tmp_path / "code.jsonl"}
    cfg = grpo_config(problems=None, reward={"rm_weight": 0, "correct_weight": 1}, sandbox={"timeout_s": 2})
    cfg["train"]["max_steps"] = 1
    proc = run_job("grpo", cfg, tmp_path / "g", inputs=inputs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grpo: code answers run in a sandbox: bwrap:" in proc.stdout or "sandbox: docker:" in proc.stdout
    refused = run_job("grpo", {**cfg, "sandbox": {"isolation": "none"}}, tmp_path / "g2", inputs=inputs)
    assert refused.returncode == 2 and "sandbox.allow_unsandboxed: true" in job_errors(refused)[0]


def cli(home: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAI_DISTIL_HOME": str(home)}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def test_grpo_inputs_are_checked_before_anything_starts(tmp_path, micro_student):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump(grpo_config()))
    proc = cli(tmp_path / "h", "submit", "grpo", "-c", cfg, "-i", f"student={micro_student}", "--dry-run")
    assert proc.returncode != 0 and "needs input 'reward_model'" in proc.stderr
    cfg.write_text(yaml.safe_dump(grpo_config(reward={"rm_weight": 0, "correct_weight": 0})))
    proc = cli(tmp_path / "h", "submit", "grpo", "-c", cfg, "-i", f"student={micro_student}", "--dry-run")
    assert proc.returncode != 0 and "nothing to learn" in proc.stderr and proc.stderr.count("error:") == 1


def test_grpo_killed_mid_run_resumes_from_the_newest_checkpoint(tmp_path, monkeypatch, micro_student,
                                                              micro_reward_model):
    from pai_distil.run.registry import Registry

    home = tmp_path / "home"
    monkeypatch.setenv("PAI_DISTIL_HOME", str(home))
    cfg = tmp_path / "g.yaml"
    settings = grpo_config(problems={"n": 40, "seed": 3, "levels": [1, 2]}, max_completion_length=8)
    settings["train"].update(max_steps=40, checkpoint_every=4)
    cfg.write_text(yaml.safe_dump(settings))
    args = ("submit", "grpo", "-c", cfg, "-i", f"student={micro_student}", "-i", f"reward_model={micro_reward_model}")
    assert cli(home, *args, "--detach").returncode == 0
    run = Registry().list(stage="grpo")[0]
    # past the first epoch (40 problems, 2 a step: 20 steps): the resumed run must draw the later epoch's order
    killed_at, lost = kill_after_a_checkpoint(run.id, at_least=24)
    assert killed_at < 40

    again = cli(home, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from checkpoint checkpoint-{killed_at}" in again.stderr
    records = metric_records(Path(run.output) / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 41))  # none twice, none lost
    shown = [json.loads(x)["step"] for x in (Path(run.output) / "completions.jsonl").read_text().splitlines()]
    assert shown == [s for s in range(1, 41) for _ in range(8)]  # the steps trained again are shown once
    for r in records:  # steps run again after the resume sample and learn exactly as the first time
        if r["step"] in lost:
            for key in ("reward", "accuracy", "length", "kl", "loss"):
                assert r[key] == pytest.approx(lost[r["step"]][key], abs=1e-4), (r, lost[r["step"]])


def test_grpo_with_vllm_rollouts_where_vllm_is_missing_fails_in_one_line(tmp_path, micro_student):
    cfg = grpo_config(rollout="vllm", reward={"rm_weight": 0, "correct_weight": 1})
    proc = run_job("grpo", cfg, tmp_path / "g", inputs={"student": micro_student})
    assert proc.returncode == 2
    assert len(job_errors(proc)) == 1 and "rollout: vllm needs vLLM" in job_errors(proc)[0]


def test_a_steps_completions_are_sampled_with_each_reward_the_weighted_sum_and_the_advantage(tmp_path):
    from collections import deque

    from pai_distil_jobs.train.grpo import append_completions, sample_completions

    logs = {"prompt": deque([[{"role": "user", "content": "1+1?"}]] * 2 + ["2+2?"]),
            "completion": deque([[{"role": "assistant", "content": c}] for c in ("2", "3")] + ["4"]),
            "rewards": {"correct": deque([1.0, 0.0, 1.0]), "overlong": deque([0.0, 1.0, 0.0]),
                        "reward_model": deque([0.5, float("nan"), -0.25])},
            "advantages": deque([0.75, -0.75, 0.0])}
    rows = sample_completions(logs, 7, ["correct", "overlong", "reward_model"], [1.0, -0.5, 2.0], limit=2)
    assert rows == [
        {"step": 7, "prompt": "1+1?", "completion": "2", "reward": 2.0,
         "rewards": {"correct": 1.0, "overlong": 0.0, "reward_model": 0.5}, "advantage": 0.75},
        {"step": 7, "prompt": "1+1?", "completion": "3", "reward": -0.5,
         "rewards": {"correct": 0.0, "overlong": 1.0, "reward_model": None}, "advantage": -0.75}]
    path = tmp_path / "completions.jsonl"
    for step in (1, 2, 3):
        append_completions(path, [{"step": step}], resumed=step == 1)
    append_completions(path, [{"step": 2}], resumed=True)  # a run resumed from step 1's checkpoint
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_group_rewards_score_correctness_cuts_and_missing_answers():
    from types import SimpleNamespace

    from pai_distil.core.config import GRPOConfig
    from pai_distil_jobs.train.grpo import GroupRewards
    from pai_distil_jobs.models.models import load_tokenizer

    tok = load_tokenizer("preset:micro")
    problem = world.generate_problems(1, seed=5, levels=[1])[0]
    row = {"problem": problem.text, "answer": problem.answer, "domain": "synthetic", "prompt": problem.text,
           "opened": ""}
    end = tok.convert_tokens_to_ids("<|im_end|>")
    right = tok(f"The answer is \\boxed{{{problem.answer}}}.", add_special_tokens=False)["input_ids"] + [end]
    wrong = tok(f"The answer is \\boxed{{{int(problem.answer) + 1}}}.", add_special_tokens=False)["input_ids"] + [end]
    cut = tok("The answer is", add_special_tokens=False)["input_ids"]
    cfg = GRPOConfig(problems={"n": 1}, truncation_warning=1.0)
    rewards = GroupRewards([row, row], cfg, tok, [end], scorer=lambda p, c: [float(len(x)) for x in c])
    logged = {}
    kw = {"completion_ids": [right, wrong, cut, right], "index": [0, 0, 1, 1],
          "log_metric": lambda k, v: logged.setdefault(k, v), "trainer_state": SimpleNamespace(global_step=0)}
    assert rewards.correct(**kw) == [1.0, 0.0, 0.0, 1.0]
    assert rewards.overlong(**kw) == [0.0, 0.0, 1.0, 0.0]
    assert rewards.no_answer(**kw) == [0.0, 0.0, 1.0, 0.0]
    assert rewards.reward_model(**kw)[0] == len(f"The answer is \\boxed{{{problem.answer}}}.")  # end token dropped
    assert logged == {"accuracy": 0.5, "solved_groups": 1.0, "mixed_groups": 1.0, "truncated": 0.25,
                      "no_answer": 0.25, "rm_score": logged["rm_score"]}
    funcs, weights = rewards.functions()
    assert [f.__name__ for f in funcs] == ["correct", "overlong", "no_answer", "reward_model"]
    assert weights == [1.0, -0.0, -0.0, 1.0]
