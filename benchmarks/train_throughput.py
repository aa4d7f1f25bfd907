"""SFT training throughput: our slow-thinking stage against plain TRL and the previous hand-written loop.

Three arms train the same preset (same seed) on the same CoT rows, with the same batch, steps and
learning rate, one CPU thread each (`taskset` to one core and OMP_NUM_THREADS=1), interleaved
A/B/C for `--repeats` rounds:

- `ours`: the slow-thinking stage run as the real job (`python -m pai_distil_jobs` under the job
  contract: TRL's SFTTrainer with our mixin, callbacks, metrics.jsonl and TensorBoard files);
- `trl`: plain TRL `SFTTrainer` in a minimal script (this file with `--plain-trl`): the same model
  from `load_model`, the same rows tokenized by the same `encode_messages`, default callbacks,
  no TensorBoard, no checkpoints;
- `previous`: the hand-written loop of commit de1991c, its `jobs/` and `pai_distil/` trees
  materialised with `git archive` and run as that commit's job.

What is timed is training alone: model build, imports, tokenization, start-up and the final save
are excluded. Each arm prints a `step k/N` line at every `log_every` steps (our job log, the old
loop's log, and a one-line callback in the plain TRL script); this script stamps each line as it
arrives on the pipe (the jobs run unbuffered) and takes the time from the first logged step past
`--skip` to the last step. Every row of the data set has the same token length (rows are drawn
from the synthetic world and only the commonest length is kept), so every batch holds exactly
batch x length tokens whatever the shuffle, and tokens/s = steps in the window x batch x length /
window seconds, identical in meaning for the three arms. Checkpoints are pushed past the last step
so no save falls in the window. The tokens/s each trainer logs itself (from its own start, so
including its first steps) is printed beside it as a cross-check.

Usage: python benchmarks/train_throughput.py [--preset tiny] [--steps 60] [--batch 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import parse_arms_args, pinned, timed_run

ROOT = Path(__file__).resolve().parents[1]
PREVIOUS = "de1991c"  # the commit before the stages moved onto TRL: the hand-written loop
ARMS = ("ours", "trl", "previous")


# -- data ------------------------------------------------------------------------------------------


def write_cots(path: Path, pool: int, rv: int, levels: list[int], seed: int) -> tuple[int, int]:
    """CoT rows from the synthetic world's oracle teacher, all of one token length; (rows, length)."""
    from pai_distil.core import oracle as teacher, world
    from pai_distil_jobs.data.cot_data import thinking_row
    from pai_distil_jobs.train.sft_data import encode_messages
    from pai_distil_jobs.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    by_length = collections.defaultdict(list)
    for p in world.generate_problems(pool, seed, levels=levels):
        thought, solution = world.split_thought(teacher.respond(p, rv))
        row = {"problem": p.text, "answer": p.answer, "thought": thought, "solution": solution, "correct": True}
        encoded = encode_messages(tokenizer, thinking_row(row)["messages"], 1024)
        by_length[len(encoded["input_ids"])].append(row)
    length, rows = max(by_length.items(), key=lambda kv: len(kv[1]))
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return len(rows), length


# -- the arms --------------------------------------------------------------------------------------


def job_command(arm: str, args, cots: Path, work: Path, previous_tree: Path) -> tuple[list[str], dict, Path]:
    """The command, environment and working directory of one run of `arm`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_DISTIL_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    train = {"max_steps": args.steps, "batch_size": args.batch, "learning_rate": args.lr, "warmup_steps": 5,
             "log_every": args.log_every, "checkpoint_every": 10 * args.steps}
    if arm == "trl":
        spec = {"preset": args.preset, "cots": str(cots), "output": str(work), **train}
        return [sys.executable, str(Path(__file__).resolve()), "--plain-trl", json.dumps(spec)], env, ROOT
    config = work / "config.json"
    config.write_text(json.dumps({"student": {"model": f"preset:{args.preset}", "seed": 0}, "train": train}))
    env.update(PAI_DISTIL_STAGE="slow-thinking", PAI_DISTIL_RUN_ID=f"bench-{arm}", PAI_DISTIL_CONFIG=str(config),
               PAI_DISTIL_OUTPUT=str(work / "out"), PAI_DISTIL_CHECKPOINT_DIR=str(work / "checkpoints"),
               PAI_DISTIL_INPUT_COTS=str(cots))
    if arm == "previous":
        env["PYTHONPATH"] = str(previous_tree)
        return [sys.executable, "-m", "pai_distil_jobs"], env, previous_tree
    return [sys.executable, "-m", "pai_distil_jobs"], env, ROOT


def window_tokens_per_s(stamps: dict[int, float], skip: int, batch: int, length: int) -> float:
    first = min(s for s in stamps if s >= skip)
    last = max(stamps)
    if last <= first:
        raise SystemExit(f"no timing window: logged steps {sorted(stamps)}; raise --steps or lower --skip")
    return (last - first) * batch * length / (stamps[last] - stamps[first])


def reported_tokens_per_s(arm: str, work: Path, lines: list[str]) -> float | None:
    """What the trainer logged itself at its last step (tokens since its own start / time since it)."""
    if arm == "trl":
        found = [float(m.group(1)) for line in lines if (m := re.search(r"reported (\S+) tok/s", line))]
    else:
        metrics = work / "out" / "metrics.jsonl"
        found = [json.loads(x).get("tokens_per_s") for x in metrics.read_text().splitlines()] if metrics.exists() else []
    found = [x for x in found if x is not None]
    return found[-1] if found else None


def plain_trl(spec: dict) -> None:
    """The plain TRL arm: SFTTrainer as a user would write it, on our model and our tokenized rows."""
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from pai_distil_jobs.models.models import load_model
    from pai_distil_jobs.train.sft_data import encode_messages
    from pai_distil_jobs.stages.slow_thinking import sft_rows

    datasets.disable_progress_bars()
    model, tokenizer = load_model(f"preset:{spec['preset']}", seed=0)
    rows = sft_rows(Path(spec["cots"]), require_correct=True)
    examples = [encode_messages(tokenizer, r["messages"], 1024) for r in rows]
    dataset = datasets.Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    print(f"plain TRL: {len(examples)} sequences, {sum(len(e['input_ids']) for e in examples)} tokens", flush=True)

    class StepLine(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                tps = logs["num_tokens"] / (time.time() - self.t0)
                print(f"step {state.global_step}/{state.max_steps} reported {tps:.1f} tok/s", flush=True)

    config = SFTConfig(output_dir=str(Path(spec["output"]) / "trl"), max_steps=spec["max_steps"],
                       per_device_train_batch_size=spec["batch_size"], learning_rate=spec["learning_rate"],
                       warmup_steps=spec["warmup_steps"], logging_steps=spec["log_every"], save_strategy="no",
                       report_to="none", disable_tqdm=True, use_cpu=True, bf16=False, seed=0,
                       gradient_checkpointing=False,  # TRL's default is on; ours is off for presets
                       max_length=1024, dataloader_drop_last=True, remove_unused_columns=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[StepLine()])
    trainer.train()


# -- the benchmark ---------------------------------------------------------------------------------


def materialise_previous(dest: Path) -> Path:
    """Commit PREVIOUS's jobs/ and pai_distil/ trees, importable as pai_distil_jobs and pai_distil."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS, "jobs", "pai_distil"], check=True,
                             capture_output=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "pai_distil_jobs").symlink_to("jobs")
    return dest


def data_summary(lines: list[str]) -> str | None:
    """The `N sequences, T tokens` a run reported, to check that every arm trained the same data."""
    for line in lines:
        if m := re.search(r"(\d+) sequences, (\d+) tokens", line):
            return f"{m.group(1)} sequences, {m.group(2)} tokens"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=["micro", "tiny", "small"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--skip", type=int, default=10, help="steps before the timing window opens")
    ap.add_argument("--rv", type=int, default=6, help="verbosity of the teacher's chains (longer at higher rv)")
    args = parse_arms_args(ap, plain_trl)
    if args is None:
        return
    with tempfile.TemporaryDirectory(prefix="pai-distil-throughput-") as tmp:
        tmp = Path(tmp)
        cots = tmp / "cots.jsonl"
        n_rows, length = write_cots(cots, pool=1200, rv=args.rv, levels=[2, 3], seed=11)
        previous_tree = materialise_previous(tmp / "previous")
        print(f"preset:{args.preset}: {n_rows} rows of {length} tokens; batch {args.batch}, {args.steps} steps, "
              f"window steps {args.skip}-{args.steps}; one thread each; {args.repeats} interleaved rounds")
        window = {a: [] for a in ARMS}
        reported = {a: [] for a in ARMS}
        for r in range(args.repeats):
            for arm in ARMS:
                work = tmp / f"{arm}-{r}"
                work.mkdir()
                cmd, env, cwd = job_command(arm, args, cots, work, previous_tree)
                stamps, lines = timed_run(pinned(cmd, args.cpu), env, cwd)
                window[arm].append(window_tokens_per_s(stamps, args.skip, args.batch, length))
                reported[arm].append(reported_tokens_per_s(arm, work, lines))
                print(f"  round {r + 1} {arm:8s} {window[arm][-1]:9.0f} tok/s  (logged {reported[arm][-1]}; "
                      f"{data_summary(lines)})", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'arm':10s} {'min tok/s':>10s} {'median':>10s} {'max':>10s} {'logged median':>14s}")
    for arm in ARMS:
        logged = [x for x in reported[arm] if x is not None]
        print(f"{arm:10s} {min(window[arm]):10.0f} {statistics.median(window[arm]):10.0f} {max(window[arm]):10.0f} "
              f"{statistics.median(logged) if logged else float('nan'):14.0f}")
    med = {a: statistics.median(window[a]) for a in ARMS}
    per_round = [o / t for o, t in zip(window["ours"], window["trl"])]
    print(f"\nours / plain TRL      {med['ours'] / med['trl']:.3f}x (medians; per round "
          f"{', '.join(f'{x:.3f}' for x in per_round)})")
    print(f"ours / previous loop  {med['ours'] / med['previous']:.3f}x")
    print(f"ours / plain TRL      {max(window['ours']) / max(window['trl']):.3f}x (best runs: the least disturbed "
          "on a shared machine)")
    print(f"plain TRL / previous  {med['trl'] / med['previous']:.3f}x")


if __name__ == "__main__":
    main()
