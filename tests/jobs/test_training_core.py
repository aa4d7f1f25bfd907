"""The training core on TRL: LoRA, divergence, batch splitting, defaults by kind, TensorBoard, schedule."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from conftest import job_errors, metric_records, run_job

from pai_distil.core.artifacts import is_complete
from pai_distil.core import oracle as teacher, world


def cots(tmp_path: Path, n: int = 24) -> Path:
    path = tmp_path / "cots.jsonl"
    with open(path, "w") as f:
        for p in world.generate_problems(n, 4, levels=[1]):
            thought, solution = world.split_thought(teacher.respond(p, 2))
            f.write(json.dumps({"problem": p.text, "thought": thought, "solution": solution, "correct": True}) + "\n")
    return path


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_lora_trains_only_adapters_and_the_merged_checkpoint_loads(tmp_path):
    from pai_distil_jobs.models.models import build_preset

    base = tmp_path / "base"
    model, tok = build_preset("micro", seed=0)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    cfg = {"student": {"model": str(base)},
           "train": {"max_steps": 12, "batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 1,
                     "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}}
    out = tmp_path / "out"
    proc = run_job("slow-thinking", cfg, out, inputs={"cots": cots(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert is_complete(out) and (out / "adapter" / "adapter_config.json").exists()
    before, after = weights(base), weights(out)
    assert set(before) == set(after)  # merged: plain weights, no adapter tensors
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed), changed

    ev = run_job("evaluate", {"problems": {"n": 4, "seed": 9, "levels": [1]}, "max_new_tokens": 16,
                              "models": [{"name": "lora", "model": str(out)}]}, tmp_path / "eval")
    assert ev.returncode == 0, ev.stderr[-3000:]


def test_a_diverging_loss_fails_the_run_and_leaves_no_artifact(tmp_path):
    import torch

    from pai_distil_jobs.models.models import build_preset

    broken = tmp_path / "nan"
    model, tok = build_preset("micro", seed=0)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    tok.save_pretrained(broken)
    cfg = {"student": {"model": str(broken)}, "train": {"max_steps": 20, "batch_size": 4, "max_bad_steps": 2}}
    out = tmp_path / "out"
    proc = run_job("slow-thinking", cfg, out, inputs={"cots": cots(tmp_path, 8)})
    errors = job_errors(proc)
    assert proc.returncode == 2 and len(errors) == 1 and "diverged" in errors[0] and "learning_rate" in errors[0]
    assert "Traceback" not in proc.stderr and not is_complete(out)


def test_a_batch_that_does_not_split_is_one_line(tmp_path):
    cfg = {"student": {"model": "preset:micro"},
           "train": {"max_steps": 2, "batch_size": 6, "gradient_accumulation_steps": 4}}
    proc = run_job("slow-thinking", cfg, tmp_path / "out", inputs={"cots": cots(tmp_path, 8)})
    errors = job_errors(proc)
    assert proc.returncode == 2 and len(errors) == 1 and "multiple of 4" in errors[0], proc.stderr[-2000:]


def test_accumulation_gives_the_same_step_as_one_big_batch(tmp_path):
    """4 sequences in one batch or in 2 micro-batches of 2: one optimizer step, the same weights."""
    import torch

    data = cots(tmp_path, 4)
    runs = {}
    for accum in (1, 2):
        out = tmp_path / f"accum{accum}"
        cfg = {"student": {"model": "preset:micro"},
               "train": {"max_steps": 1, "batch_size": 4, "gradient_accumulation_steps": accum, "warmup_steps": 0}}
        proc = run_job("slow-thinking", cfg, out, inputs={"cots": data})
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[accum] = weights(out)
    for k, a in runs[1].items():
        assert torch.allclose(a, runs[2][k], atol=1e-5), k


def test_a_real_checkpoint_gets_the_fields_defaults_printed(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen3Config

    from pai_distil_jobs.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    config = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ckpt = tmp_path / "real"
    AutoModelForCausalLM.from_config(config).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    out = tmp_path / "out"
    train = {"max_steps": 2, "batch_size": 2, "log_every": 1}
    proc = run_job("slow-thinking", {"student": {"model": str(ckpt)}, "train": train}, out, inputs={"cots": cots(tmp_path, 4)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "defaults for a checkpoint: train.learning_rate=1e-05, train.max_length=8192, " \
           "train.gradient_checkpointing=True, train.warmup_steps=0" in proc.stdout
    # a 2-step run warms up over none of them: the first step trains at the peak rate, not at 1/30 of it
    assert metric_records(out / "metrics.jsonl")[0]["lr"] == pytest.approx(1e-5)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))  # beside metrics.jsonl


def test_the_schedule_warms_up_then_decays_to_a_tenth():
    from pai_distil_jobs.train.trainer import schedule

    f = schedule(warmup=4, length=104)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(54) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(104) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)


def test_bf16_on_a_cpu_job_is_refused_in_one_line_at_job_start(tmp_path):
    for train, field in [({"bf16": True}, "train.bf16"), ({"deepspeed": {"bf16": True}}, "train.deepspeed.bf16")]:
        proc = run_job("slow-thinking", {"student": {"model": "preset:micro"}, "train": {"max_steps": 2, **train}},
                       tmp_path / "out", inputs={"cots": cots(tmp_path, 4)})
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert job_errors(proc) == [f"pai-distil job error: {field}: true, but this job runs on CPU, which has no "
                                    f"bf16; drop {field} (the default is bf16 wherever the GPU supports it) or run "
                                    "on GPUs of the Ampere generation or newer"]


def test_flash_attention_where_it_cannot_run_is_refused_in_one_line_by_the_job(tmp_path):
    """The job's own check, for images `validate` cannot look into."""
    train = {"max_steps": 2, "attn_implementation": "flash_attention_2"}
    proc = run_job("slow-thinking", {"student": {"model": "preset:micro"}, "train": train}, tmp_path / "out",
                   inputs={"cots": cots(tmp_path, 4)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert job_errors(proc) == ["pai-distil job error: train.attn_implementation is flash_attention_2, but this job "
                                "runs on CPU; install flash-attn in the job's image (on GPUs), or set "
                                "train.attn_implementation: auto (flash-attention where installed, else sdpa)"]


def test_the_default_warmup_is_a_tenth_of_the_run_at_most_the_methods_own():
    from pai_distil.core.config import DPOConfig, GRPOConfig, Training

    for steps, warmup in [(2, 0), (25, 2), (300, 30), (600, 30), (10_000, 30)]:
        train, filled = Training(max_steps=steps).by_kind(True, 1, False)
        assert train.warmup_steps == filled["warmup_steps"] == warmup
    assert DPOConfig().train.by_kind(True)[0].warmup_steps == 10  # 200 steps, at most 10
    assert GRPOConfig(problems={"n": 1}).train.by_kind(True)[0].warmup_steps == 5
    train, filled = Training(max_steps=2, warmup_steps=1).by_kind(True, 1, False)
    assert train.warmup_steps == 1 and "warmup_steps" not in filled


def test_training_values_that_cannot_work_are_refused():
    from pai_distil.core.config import SlowThinkingConfig

    for bad, field in [({"learning_rate": float("inf")}, "learning_rate"), ({"max_steps": 1e29}, "max_steps"),
                       ({"lora": {"r": 8}, "fsdp": {}}, "lora"),
                       ({"deepspeed": {"stage": 2}, "fsdp": {}}, "fsdp"),
                       ({"max_steps": 2, "warmup_steps": 2}, "warmup_steps = 2 is not below max_steps = 2")]:
        with pytest.raises(ValueError, match=field):
            SlowThinkingConfig.model_validate({"train": bad})


def test_processes_per_node_come_from_the_platform_else_the_visible_gpus(monkeypatch):
    """DLC sets NPROC_PER_NODE to the node's GPU count; where nothing sets it, one process per GPU."""
    import torch

    from pai_distil_jobs.__main__ import procs_per_node

    monkeypatch.setenv("NPROC_PER_NODE", "4")
    assert procs_per_node() == 4
    monkeypatch.delenv("NPROC_PER_NODE")
    assert procs_per_node() == max(1, torch.cuda.device_count())


def watch_renames(where: Path, log: Path) -> dict:
    """A job environment whose Python records every folder it renames (the interpreter's own audit
    events for os.rename / os.replace) into `log`, one source path a line."""
    hook = where / "audit"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "def _hook(event, args):\n"
        "    if event in ('os.rename', 'os.replace') and os.path.isdir(args[0]):\n"
        f"        with open({str(log)!r}, 'a') as f:\n"
        "            f.write(os.fsdecode(args[0]) + '\\n')\n"
        "sys.addaudithook(_hook)\n")
    log.write_text("")
    return {"PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_a_run_resubmitted_after_its_last_checkpoint_trains_no_step_more(tmp_path):
    """A job stopped once its last step was checkpointed (a SIGTERM at the last step) is resubmitted:
    it finishes from that checkpoint with the same weights and no step past max_steps."""
    import torch
    from safetensors.torch import load_file

    cfg = {"student": {"model": "preset:micro"},
           "train": {"max_steps": 4, "batch_size": 4, "checkpoint_every": 4, "log_every": 1}}
    out, data = tmp_path / "out", cots(tmp_path, 12)  # 3 steps an epoch: the last checkpoint is mid-epoch
    renames = tmp_path / "renames.txt"
    assert run_job("slow-thinking", cfg, out, inputs={"cots": data}, env=watch_renames(tmp_path, renames)).returncode == 0
    # written where it stays: on an OSS mount a folder rename copies and deletes every object in it
    ckpt_dir = str(tmp_path / "out-checkpoints")
    assert [line for line in renames.read_text().splitlines() if line.startswith(ckpt_dir)] == []
    assert (tmp_path / "out-checkpoints" / "checkpoint-4" / "COMPLETE").exists()
    first, metrics = load_file(str(out / "model.safetensors")), (out / "metrics.jsonl").read_text()
    shutil.rmtree(out)  # as if the job had stopped after its checkpoint, before its output
    out.mkdir()
    (out / "metrics.jsonl").write_text(metrics)
    again = run_job("slow-thinking", cfg, out, inputs={"cots": data})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint checkpoint-4 (step 4 of 4)" in again.stdout + again.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    second = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_process_that_sees_several_gpus_without_a_launcher_never_builds_data_parallel(tmp_path, monkeypatch):
    """transformers gives a process started without torchrun every visible GPU (`n_gpu`) and Trainer then
    wraps the model in nn.DataParallel, where the reward model fails (its loss calls its own methods). Faked
    on CPU: arguments whose device setup found two GPUs."""
    from functools import cached_property

    import torch
    from transformers import TrainingArguments

    from pai_distil_jobs.train.reward import encode, load_reward_model, reward_trainer
    from pai_distil_jobs.train.trainer import TrainSettings, fit, training_arguments

    class TwoVisibleGPUs(TrainingArguments):
        @cached_property
        def _setup_devices(self):
            device = TrainingArguments._setup_devices.func(self)
            self._n_gpu = 2  # what transformers sets with two visible GPUs and no distributed launch
            return device

    class NoDataParallel(torch.nn.Module):
        def __init__(self, *_, **__):
            raise AssertionError("nn.DataParallel built")

    monkeypatch.setattr(torch.nn, "DataParallel", NoDataParallel)
    settings = TrainSettings(max_steps=2, batch_size=2, learning_rate=1e-2, warmup_steps=1, checkpoint_every=10)
    args = training_arguments(settings, tmp_path / "ckpt", 2, cls=TwoVisibleGPUs)
    assert (args.n_gpu, args.train_batch_size) == (1, 2)
    model, tok = load_reward_model("preset:micro", seed=0)
    ex = {"chosen": encode(tok, "1 + 1?", "2", 64), "rejected": encode(tok, "1 + 1?", "3", 64),
          "chosen_score": 1.0, "rejected_score": 0.0}
    trainer, callback = reward_trainer(model, tok, [ex, ex], settings, tmp_path / "ckpt", tmp_path / "m.jsonl",
                                       log=lambda *_: None, args=args)
    assert fit(trainer, callback, tmp_path / "ckpt", log=lambda *_: None)
    assert trainer.state.global_step == 2 and trainer.model_wrapped is trainer.model


def test_report_to_defaults_to_tensorboard_alone_and_a_missing_tracker_is_one_line(tmp_path):
    import importlib.util

    from pai_distil.core.config import Training
    from pai_distil.core.contract import JobError
    from pai_distil_jobs.train.trainer import TrainSettings, trackers, training_arguments

    assert Training().report_to == ["tensorboard"]
    settings = TrainSettings.of(Training(max_steps=2, batch_size=1, learning_rate=1e-3))
    assert settings.report_to == ["tensorboard"]
    assert training_arguments(settings, tmp_path, 4).report_to in ([], "none")  # our callback writes the event files
    assert trackers([]) == "none"
    for missing in ("wandb", "swanlab", "mlflow"):
        if importlib.util.find_spec(missing) is None:
            with pytest.raises(JobError) as e:
                trackers(["tensorboard", missing])
            assert "\n" not in str(e.value) and f"train.report_to names {missing}" in str(e.value)


def test_report_to_without_tensorboard_writes_no_event_files(tmp_path):
    out = tmp_path / "out"
    train = {"max_steps": 2, "batch_size": 2, "log_every": 1, "report_to": []}
    proc = run_job("slow-thinking", {"train": train}, out, inputs={"cots": cots(tmp_path, 4)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "metrics.jsonl").is_file() and not (out / "tensorboard").exists()
