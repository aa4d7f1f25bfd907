"""The GPU check: every GPU path of the training stages, each beside `pai-distil plan`'s prediction for
its exact config, so the first run on a GPU calibrates the plan.

Run by `check.sh` (which refuses without a GPU). Nothing is downloaded: the student is a random-weight
Qwen3-0.6B-shaped checkpoint and the teacher a Qwen3-1.7B-shaped one, both with the real Qwen3
tokenizer (`fixtures.py`); rows come from the synthetic world, joined into chains of about 4k and 16k
tokens where the run is about length. Each stage runs as the real job (`python -m pai_distil_jobs`
under the job contract, `stage_runs.py`):

1. slow-4k: full fine-tune, packing, max_length 4096, no gradient checkpointing;
2. slow-16k: the same at max_length 16384, with gradient checkpointing;
3. deepspeed: slow-4k under DeepSpeed ZeRO-3 (one GPU);
4. teacher-logits: the 1.7B teacher's top-20 over the 151 k vocabulary on 4k rows, then white-box KD
   of the student on them;
5. reward-model on right and wrong 4k chains, then dpo on the pairs it wrote (the student its own
   reference);
6. kill-and-resume: a full fine-tune SIGKILLed after its first complete checkpoint and resubmitted,
   which must resume from the newest complete checkpoint-N and finish;
7. last, as vLLM starts slowly: grpo with vLLM rollouts colocated (the reward model of 5 in-process
   plus correctness) and on-policy distillation from the 1.7B teacher, every step sampled by vLLM;
   then LoRA (r 16) at 4k.

Measured per run (`stage_runs.py`): seconds per optimizer step from the arrival of the job's step
lines (the first step, which carries the warm-up, left out); peak memory as
`torch.cuda.max_memory_allocated()` (the job logs it) and as nvidia-smi's peak `memory.used`
(sampled every 0.5 s: the CUDA context and the allocator's cache too); trained tokens/s from
TensorBoard's `train/num_tokens`. Predicted per run (`calibration.py`): the plan's peak memory, its
peak less the runtime share (comparable with max_memory_allocated) and its step time at MFU 1.0 on
this GPU; MFU is the plan's FLOPs per step (attention and recompute counted) over the measured
seconds per step times the GPU's dense bf16 peak. The plan traces every row at its full length
(max_length; GRPO: a 512-token prompt and the whole completion), so for GRPO and on-policy runs,
whose rows are shorter, the MFU is an upper bound.

`--smoke` runs the same flow on CPU at a tiny shape with short rows: the vLLM and DeepSpeed runs are
planned but not run, and GRPO and on-policy distillation sample with transformers instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from calibration import calibrate, device_gpu, plan_later, plan_of, row, table
from fixtures import (STUDENT_SHAPE, TEACHER_SHAPE, TINY, TINY_TEACHER, build_checkpoint, qwen_tokenizer,
                      write_cots, write_long_cots)
from stage_runs import generated_tokens_per_s, kill_and_resume, run_stage, stop_jobs_and_exit

STAGE_TIMEOUT_S = 150  # per job on the GPU; the whole check has 570 s (check.sh)


def row_tokens(max_length: int) -> int:
    """The length of a long row for `max_length`: a little under it, so the job cuts none."""
    return max_length - max(64, max_length // 32)


def runs(smoke: bool, student: Path, teacher: Path, data: dict[str, Path]) -> list[dict]:
    """Every run of the check, in order: name, stage, config, inputs; `gpu_only` ones are planned but not
    run by --smoke, `smoke_only` ones run by --smoke alone. Outputs of earlier runs are named as
    `run:NAME`."""
    s, t = str(student), str(teacher)
    l4, l16 = (512, 1024) if smoke else (4096, 16384)
    base = {"log_every": 1, "checkpoint_every": 1000, "warmup_steps": 2}
    sft4 = {**base, "max_steps": 4 if smoke else 10, "batch_size": 2 if smoke else 8, "max_length": l4,
            "packing": True, "gradient_checkpointing": False}
    sft16 = {**sft4, "max_steps": 3 if smoke else 6, "batch_size": 2 if smoke else 4, "max_length": l16,
             "gradient_checkpointing": True}
    short = {**base, "max_steps": 3 if smoke else 6, "batch_size": 2 if smoke else 8, "max_length": l4}
    teacher_kd = {"mode": "on-policy", "teacher": {"model": t}}
    grpo = {"problems": {"n": 64, "seed": 3, "levels": [1, 2]}, "group_size": 2 if smoke else 8,
            "max_completion_length": 16 if smoke else 256, "reward": {"rm_weight": 1, "correct_weight": 1},
            "train": {"max_steps": 3 if smoke else 5, "prompts_per_step": 2 if smoke else 8, "log_every": 1,
                      "checkpoint_every": 1000}}
    return [
        {"name": "slow-4k", "stage": "slow-thinking", "config": {"student": {"model": s}, "train": sft4},
         "inputs": {"cots": data["long4"]}},
        {"name": "slow-16k", "stage": "slow-thinking", "config": {"student": {"model": s}, "train": sft16},
         "inputs": {"cots": data["long16"]}},
        {"name": "deepspeed", "stage": "slow-thinking", "gpu_only": True, "inputs": {"cots": data["long4"]},
         "config": {"student": {"model": s}, "train": {**sft4, "max_steps": 3 if smoke else 8,
                                                       "deepspeed": {"stage": 3}}}},
        {"name": "teacher-logits", "stage": "teacher-logits", "inputs": {"cots": data["kd"]},
         "config": {"teacher": {"model": t}, "student": {"model": s}, "top_k": 20, "max_length": l4}},
        {"name": "white-box", "stage": "slow-thinking",
         "inputs": {"cots": data["kd"], "teacher_logits": "run:teacher-logits"},
         "config": {"student": {"model": s}, "train": short, "distill": {"mode": "logits"}}},
        {"name": "on-policy", "stage": "slow-thinking", "smoke_only": True, "inputs": {"cots": data["kd"]},
         "config": {"student": {"model": s}, "train": short,
                    "distill": {**teacher_kd, "lmbda": 0.5, "max_new_tokens": 16}}},
        {"name": "reward-model", "stage": "reward-model", "inputs": {"cots": data["noisy"]},
         "config": {"init_from_student": False, "model": {"model": s}, "eval_fraction": 0.2, "train": short}},
        {"name": "dpo", "stage": "dpo", "inputs": {"pairs": "run:reward-model", "student": student},
         "config": {"train": short}},
        {"name": "grpo", "stage": "grpo", "smoke_only": True, "config": grpo,
         "inputs": {"student": student, "reward_model": "run:reward-model"}},
        {"name": "kill-and-resume"},
        {"name": "grpo-vllm", "stage": "grpo", "gpu_only": True, "config": {**grpo, "rollout": "vllm"},
         "inputs": {"student": student, "reward_model": "run:reward-model"}},
        {"name": "on-policy-vllm", "stage": "slow-thinking", "gpu_only": True, "inputs": {"cots": data["kd"]},
         "config": {"student": {"model": s}, "train": short,
                    "distill": {**teacher_kd, "lmbda": 1.0, "max_new_tokens": 128, "rollout": "vllm"}}},
        {"name": "lora", "stage": "slow-thinking", "inputs": {"cots": data["long4"]},
         "config": {"student": {"model": s}, "train": {**sft4, "max_steps": 3 if smoke else 6,
                                                       "lora": {"r": 16, "alpha": 32}}}},
    ]


def write_data(work: Path, smoke: bool) -> dict[str, Path]:
    """The rows: long ones at the two lengths, 4k ones for KD, right-and-wrong 4k ones for the reward
    model, and short ones for kill-and-resume."""
    tokenizer = qwen_tokenizer()
    l4, l16 = (512, 1024) if smoke else (4096, 16384)
    return {"long4": write_long_cots(work / "long4.jsonl", 16 if smoke else 96, row_tokens(l4), tokenizer),
            "long16": write_long_cots(work / "long16.jsonl", 8 if smoke else 32, row_tokens(l16), tokenizer),
            "kd": write_long_cots(work / "kd.jsonl", 8 if smoke else 48, row_tokens(l4), tokenizer, seed=6),
            "noisy": write_long_cots(work / "noisy.jsonl", 24 if smoke else 64, row_tokens(l4), tokenizer,
                                     error_rate=0.5, seed=7),
            "short": write_cots(work / "short.jsonl", 300 if smoke else 3000)}


def main() -> int:
    ap = argparse.ArgumentParser(description="the GPU check (run it through benchmarks/gpu/check.sh)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and short rows: the flow on CPU")
    ap.add_argument("--only", help="comma-separated run names (e.g. slow-16k,grpo-vllm): run these alone, with "
                                   "the runs whose outputs they read")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print("gpu check: no CUDA GPU visible to torch; run it on a GPU node", file=sys.stderr)
        return 2
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    work = args.work or Path(tempfile.mkdtemp(prefix="pai-distil-gpu-check-"))
    logs = (out_dir or work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    smoke = args.smoke
    signal.signal(signal.SIGTERM, stop_jobs_and_exit)
    t0 = time.time()
    gpu = device_gpu()
    student, teacher = work / "student", work / "teacher"
    n_student = build_checkpoint(student, STUDENT_SHAPE, TINY if smoke else None)
    n_teacher = build_checkpoint(teacher, TEACHER_SHAPE, TINY_TEACHER if smoke else None, seed=1)
    data = write_data(work, smoke)
    print(f"gpu check on {gpu['device']} (planned as {gpu['name']}, {gpu['memory_gib']} GiB, {gpu['tflops']} TFLOPS "
          f"bf16{', assumed' if gpu['assumed'] else ''}): student {n_student / 1e6:.0f}M, teacher "
          f"{n_teacher / 1e6:.0f}M parameters, random weights, real tokenizer; {time.time() - t0:.0f} s to build; "
          f"logs in {logs}", flush=True)
    todo = runs(smoke, student, teacher, data)
    if args.only:
        wanted = set(args.only.split(","))
        if unknown := wanted - {r["name"] for r in todo}:
            raise SystemExit(f"--only: no run named {', '.join(sorted(unknown))}; the runs: "
                             f"{', '.join(r['name'] for r in todo)}")
        needed = {v[4:] for r in todo if r["name"] in wanted for v in r.get("inputs", {}).values()
                  if str(v).startswith("run:")}
        todo = [r for r in todo if r["name"] in wanted | needed]
    results: list[dict] = []

    def report(final: bool = False) -> list[dict]:
        """The runs so far with their plans (those traced by now; all of them when `final`), written as
        gpu_check.json after each run, so a timeout keeps what was measured."""
        done = [calibrate({k: v for k, v in r.items() if not k.startswith("_")}, plan_of(r["_plan"]), gpu)
                if "_plan" in r and (final or r["_plan"] is None or r["_plan"].done())
                else {k: v for k, v in r.items() if not k.startswith("_")} for r in results]
        if out_dir:
            (out_dir / "gpu_check.json").write_text(json.dumps(
                {"device": gpu["device"], "gpu": gpu, "student_parameters": n_student, "teacher_parameters": n_teacher,
                 "smoke": smoke, "seconds": round(time.time() - t0, 1), "results": done}, indent=1))
        return done

    for spec in todo:
        if spec.get("smoke_only") and not smoke:
            continue
        if spec["name"] == "kill-and-resume":
            results.append(kill_and_resume(student, data["short"], work, logs, smoke))
            print(row(results[-1]), flush=True)
            report()
            continue
        outputs = {r["name"]: r["_out"] for r in results if "_out" in r}
        inputs = {k: (outputs.get(v[4:]) if str(v).startswith("run:") else v) for k, v in spec["inputs"].items()}
        missing = [spec["inputs"][k][4:] for k, v in inputs.items() if v is None]
        if missing:
            results.append({"name": spec["name"], "stage": spec["stage"], "rc": None,
                            "skipped": f"needs {', '.join(missing)}, which failed"})
            print(row(results[-1]), flush=True)
            continue
        future = plan_later(spec["stage"], spec["config"], inputs, gpu)
        if spec.get("gpu_only") and smoke:
            result = {"name": spec["name"], "stage": spec["stage"], "plan_only": True}
        else:
            result = run_stage(spec["name"], spec["stage"], spec["config"], inputs, work, logs, STAGE_TIMEOUT_S)
            if spec["stage"] == "grpo":
                config = spec["config"]
                result["completions_per_step"] = config["group_size"] * config["train"]["prompts_per_step"]
                result["generated_tokens_per_s"] = generated_tokens_per_s(result)
            if result["rc"] != 0:
                result.pop("_out")  # the runs that read it are skipped
        results.append({**result, "_plan": future})
        print(row(result) + ("" if result.get("rc", 0) == 0 else f"\n{result.get('error')}"), flush=True)
        report()
    final = report(final=True)
    print(f"\nsummary ({time.time() - t0:.0f} s; {gpu['name']} at {gpu['tflops']} TFLOPS bf16 dense; plan GiB: the "
          f"plan's peak; plan alloc: less its runtime share, beside torch's max_memory_allocated; ratio: measured / "
          f"plan alloc; plan s@1: the plan's step at MFU 1.0)\n{table(final)}")
    if out_dir:
        print(f"wrote {out_dir / 'gpu_check.json'}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    failed = [r["name"] for r in final if r.get("rc", 0) != 0 or r.get("ok") is False]
    if failed:
        print(f"gpu check: FAILED: {', '.join(failed)} (logs in {logs})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
