"""Running one stage of the GPU check as the real job (`python -m pai_distil_jobs` under the job
contract), and what it measured: seconds per optimizer step, trained tokens/s, peak memory; and the
kill-and-resume check.

Each job runs in a session of its own, so the overall timeout's SIGTERM reaches this process only:
`stop_jobs_and_exit` then kills the jobs and keeps the report written so far.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import STEP_LINE, follow, start  # noqa: E402

PEAK_LINE = re.compile(r"peak GPU memory ([\d.]+) GiB")
LIVE: set[subprocess.Popen] = set()  # jobs running now


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


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


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


def trained_tokens_per_s(out: Path) -> tuple[float | None, str]:
    """Steady trained tokens/s from TensorBoard's num_tokens (first logged step to last), else the job's own."""
    series = tensorboard_scalars(out).get("train/num_tokens", [])
    if len(series) >= 2:
        (_, t0, n0), (_, t1, n1) = series[0], series[-1]
        if t1 > t0:
            return (n1 - n0) / (t1 - t0), "tensorboard num_tokens"
    logged = [r["tokens_per_s"] for r in metrics(out) if r.get("tokens_per_s")]
    return (logged[-1], "job tokens_per_s") if logged else (None, "none logged")


def seconds_per_step(stamps: dict[int, float]) -> float | None:
    """Seconds per optimizer step between the step lines' arrival: from the second logged step to the last
    (the first carries the warm-up: kernel selection, allocator growth, the first batch), or from the
    first when only two were logged."""
    steps = sorted(stamps)
    if len(steps) < 2:
        return None
    first, last = steps[1 if len(steps) >= 3 else 0], steps[-1]
    return (stamps[last] - stamps[first]) / (last - first)


def run_stage(name: str, stage: str, config: dict, inputs: dict, work: Path, logs: Path, timeout_s: float) -> dict:
    """Run one stage as its job; what it measured (the `_`-prefixed keys are for the caller, not the report)."""
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
    secs = seconds_per_step(stamps)
    tps, source = trained_tokens_per_s(out)
    result = {"name": name, "stage": stage, "rc": proc.returncode, "wall_s": round(time.time() - t, 1),
              "steps_logged": sorted(stamps), "seconds_per_step": round(secs, 3) if secs else None,
              "tokens_per_s": round(tps, 1) if tps else None, "tokens_per_s_from": source,
              "peak_allocated_gib": peak[-1] if peak else None,
              "peak_nvidia_smi_gib": round(smi.peak / 1024, 2) if smi.peak else None, "out": str(out)}
    if proc.returncode != 0:
        result["error"] = "\n".join(lines[-15:])
    result["_out"] = out
    return result


def generated_tokens_per_s(r: dict) -> float | None:
    """GRPO: mean completion length x completions per step / seconds per step, over the measured steps."""
    lengths = [x["length"] for x in metrics(r["_out"]) if x.get("length") is not None and x["step"] > 1]
    if not lengths or not r.get("seconds_per_step"):
        return None
    return sum(lengths) / len(lengths) * r["completions_per_step"] / r["seconds_per_step"]


def _step(name: str) -> int:
    return int(name.split("-")[1])


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
        done = sorted((p.name for p in ckpt_dir.glob("checkpoint-*") if (p / "COMPLETE").exists()), key=_step)
        if m and done and int(m.group(1)) > int(done[-1].split("-")[1]) and not killed:
            killed.update(at_step=int(m.group(1)), newest=done[-1])
            os.killpg(proc.pid, signal.SIGKILL)

    follow(proc, log_path, kill_after_checkpoint)
    LIVE.discard(proc)
    result = {"name": "kill-and-resume", "stage": "slow-thinking", "killed": killed, "first_rc": proc.returncode}
    if not killed:
        result.update(rc=proc.returncode, ok=False,
                      error=f"the job ended (rc {proc.returncode}) before it could be killed after a checkpoint")
        return result
    newest = max((p.name for p in ckpt_dir.glob("checkpoint-*") if (p / "COMPLETE").exists()), default=None, key=_step)
    second = start_job(env)
    _, lines = follow(second, log_path)
    LIVE.discard(second)
    resumed = [m.group(1) for line in lines if (m := re.search(r"resuming from checkpoint (checkpoint-\d+)", line))]
    logged = [r["step"] for r in metrics(Path(env["PAI_DISTIL_OUTPUT"])) if "loss" in r]
    ok = (second.returncode == 0 and resumed == [newest] and logged == sorted(set(logged))
          and logged[-1:] == [steps])
    result.update(rc=second.returncode, newest_complete_at_kill=newest, resumed_from=resumed[0] if resumed else None,
                  steps_logged=logged, ok=ok)
    if not ok:
        result["error"] = "\n".join(lines[-15:])
    return result
