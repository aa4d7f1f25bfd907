"""GRPO step time: our grpo stage against plain TRL `GRPOTrainer`, measured in the same run.

Both arms start from the same untrained `preset:micro` student checkpoint and train on the same
synthetic problems (the stage's `problems` block, rendered by `user_message` in both), with the
same group size, prompts per step, completion length, temperature, KL coefficient, learning rate
and steps, one CPU thread each (`taskset` to one core, OMP_NUM_THREADS=1), interleaved for
`--repeats` rounds. The reward is verified correctness alone (`rm_weight: 0`), the same synthetic
verifier in both, so neither arm pays for a reward model the other lacks.

- `ours`: the grpo stage run as the real job (`python -m pai_distil_jobs`, config as in
  tests/jobs/test_reward_grpo.py `grpo_config`): whatever the stage is when this runs;
- `trl`: plain `GRPOTrainer` in a minimal script (this file with `--plain-trl`).

Timing: both print a `step k/N` line every step, stamped on arrival by this script; seconds per
step is the time from step `--skip` to the last step over the steps between (start-up, the first
steps and the final save are excluded). Generated tokens/s is the completion tokens of those steps
(mean completion length each step logs x completions per step) over the same time.

Usage: python benchmarks/grpo_step.py [--steps 8] [--prompts 4] [--group 8] [--max-completion 48]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import parse_arms_args, pinned, timed_run

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("ours", "trl")
PROBLEMS = {"n": 32, "seed": 3, "levels": [1]}
KL = 0.02
LR = 2e-4


def save_student(dest: Path) -> Path:
    from pai_distil_jobs.models.models import load_model

    model, tokenizer = load_model("preset:micro", seed=0)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def stage_config(args) -> dict:
    return {"problems": PROBLEMS, "group_size": args.group, "max_completion_length": args.max_completion,
            "kl_coef": KL, "temperature": 1.0, "reward": {"rm_weight": 0, "correct_weight": 1},
            "train": {"max_steps": args.steps, "prompts_per_step": args.prompts, "learning_rate": LR,
                      "checkpoint_every": 10 * args.steps, "log_every": 1}}


def command(arm: str, args, student: Path, work: Path) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    if arm == "trl":
        spec = {"student": str(student), "output": str(work), "steps": args.steps, "prompts": args.prompts,
                "group": args.group, "max_completion": args.max_completion}
        return [sys.executable, str(Path(__file__).resolve()), "--plain-trl", json.dumps(spec)], env
    config = work / "config.json"
    config.write_text(json.dumps(stage_config(args)))
    env.update(PAI_DISTIL_STAGE="grpo", PAI_DISTIL_RUN_ID="bench-grpo", PAI_DISTIL_CONFIG=str(config),
               PAI_DISTIL_OUTPUT=str(work / "out"), PAI_DISTIL_CHECKPOINT_DIR=str(work / "checkpoints"),
               PAI_DISTIL_INPUT_STUDENT=str(student))
    return [sys.executable, "-m", "pai_distil_jobs"], env


def lengths(arm: str, work: Path, lines: list[str]) -> dict[int, float]:
    """Mean completion length of each step, as the arm logged it."""
    if arm == "trl":
        return {int(m.group(1)): float(m.group(2)) for line in lines
                if (m := re.match(r"step (\d+)/\d+ length (\S+)", line))}
    records = [json.loads(x) for x in (work / "out" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["length"] for r in records if "length" in r}


def plain_trl(spec: dict) -> None:
    """The plain TRL arm: GRPOTrainer as a user would write it, with the synthetic verifier as reward."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pai_distil.core.config import SyntheticProblems
    from pai_distil.core import world
    from pai_distil_jobs.data.problems import load_problems
    from pai_distil_jobs.endpoints.prompts import user_message
    from pai_distil_jobs.models.threads import set_cpu_threads

    datasets.disable_progress_bars()
    set_cpu_threads()
    rows = load_problems(SyntheticProblems(**PROBLEMS), None, prefix="grpo")
    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": user_message(r)}],
                                           "answer": r["answer"]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(spec["student"])
    tokenizer = AutoTokenizer.from_pretrained(spec["student"])
    tokenizer.padding_side = "left"

    def correct(completions, answer, **kw):
        return [float(world.verify(c[0]["content"], a)) for c, a in zip(completions, answer)]

    class StepLine(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                print(f"step {state.global_step}/{state.max_steps} length {logs['completions/mean_length']}",
                      flush=True)

    config = GRPOConfig(output_dir=str(Path(spec["output"]) / "trl"), max_steps=spec["steps"],
                        per_device_train_batch_size=spec["prompts"] * spec["group"], num_generations=spec["group"],
                        max_completion_length=spec["max_completion"], beta=KL, learning_rate=LR, temperature=1.0,
                        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                        bf16=False, seed=0, gradient_checkpointing=False)  # TRL's default is on; ours is off for presets
    trainer = GRPOTrainer(model=model, reward_funcs=correct, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepLine()])
    trainer.train()


def git_head() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", "--", "jobs/train/grpo.py",
                           "jobs/stages/grpo.py"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "jobs/train/grpo.py",
                            "jobs/stages/grpo.py"], capture_output=True, text=True).stdout.strip()
    return proc.stdout.strip()[:100] + (" (+ uncommitted changes)" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip", type=int, default=2, help="steps before the timing window opens")
    ap.add_argument("--prompts", type=int, default=4, help="problems per step")
    ap.add_argument("--group", type=int, default=8, help="completions per problem")
    ap.add_argument("--max-completion", type=int, default=48, help="tokens per completion")
    args = parse_arms_args(ap, plain_trl)
    if args is None:
        return
    print(f"grpo stage at: {git_head()}")
    print(f"preset:micro, {args.prompts} problems x {args.group} completions (max {args.max_completion} tokens) a "
          f"step, {args.steps} steps, window steps {args.skip}-{args.steps}; {args.repeats} interleaved rounds")
    per_step = {a: [] for a in ARMS}
    gen_tps = {a: [] for a in ARMS}
    with tempfile.TemporaryDirectory(prefix="pai-distil-grpo-bench-") as tmp:
        tmp = Path(tmp)
        student = save_student(tmp / "student")
        for r in range(args.repeats):
            for arm in ARMS:
                work = tmp / f"{arm}-{r}"
                work.mkdir()
                cmd, env = command(arm, args, student, work)
                stamps, lines = timed_run(pinned(cmd, args.cpu), env, ROOT)
                first, last = min(s for s in stamps if s >= args.skip), max(stamps)
                secs = stamps[last] - stamps[first]
                per_step[arm].append(secs / (last - first))
                length = lengths(arm, work, lines)
                tokens = sum(length.get(s, 0.0) for s in range(first + 1, last + 1)) * args.prompts * args.group
                gen_tps[arm].append(tokens / secs)
                print(f"  round {r + 1} {arm:5s} {per_step[arm][-1]:7.3f} s/step  {gen_tps[arm][-1]:8.1f} generated "
                      f"tok/s (mean length {tokens / (last - first) / args.prompts / args.group:.1f})", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'arm':6s} {'s/step min':>10s} {'median':>8s} {'gen tok/s min':>14s} {'median':>8s}")
    for arm in ARMS:
        print(f"{arm:6s} {min(per_step[arm]):10.3f} {statistics.median(per_step[arm]):8.3f} "
              f"{min(gen_tps[arm]):14.1f} {statistics.median(gen_tps[arm]):8.1f}")
    ratio = statistics.median(per_step["ours"]) / statistics.median(per_step["trl"])
    print(f"\nours / plain TRL step time {ratio:.3f}x (below 1: ours is faster); generated tok/s "
          f"{statistics.median(gen_tps['ours']) / statistics.median(gen_tps['trl']):.3f}x")
    print("note: completion lengths differ between arms (different sampling streams), so compare s/step with "
          "the mean lengths beside them")


if __name__ == "__main__":
    main()
