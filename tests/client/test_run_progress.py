"""Progress as a user sees it: the job's step and task lines read (run.progress), the live bars with an
ETA, `runs show` with %, ETA and step, `--json` outputs, and `runs list` at 80 columns."""

from __future__ import annotations

import io
import json
import os
import time

from click.testing import CliRunner
from rich.console import Console
from test_process_backend import home, registry, start, wait_state  # noqa: F401 - fixtures, shared

from pai_distil.cli import cli
from pai_distil.run import progress
from pai_distil.run.follow import follow

TRAINING_JOB = """
print("model 0.05M parameters on cpu")
for step in (1, 2, 3, 4):
    print(f"step {step}/4 loss {3.0 - step / 2:.4f} lr 1.00e-03 {100 * step} tok/s entropy 6.1", flush=True)
    time.sleep(0.1)
write_manifest(out)
"""


def test_parse_line_reads_step_and_task_lines():
    step = progress.parse_line("step 20/100 loss 1.2500 lr 3.00e-05 1234 tok/s entropy 6.10417")
    assert (step.task, step.done, step.total, step.loss, step.tokens_per_s) == ("train", 20, 100, 1.25, 1234.0)
    assert step.percent == 20.0
    assert progress.parse_line("[node-0] step 3/4 loss 0.5000").loss == 0.5  # a multi-node local job's node 0
    task = progress.parse_line("[progress] evaluate:student 7/28")
    assert (task.task, task.done, task.total, task.percent, task.loss) == ("evaluate:student", 7, 28, 25.0, None)
    for other in ("step 20: held-out accuracy 50.0%", "resuming from checkpoint (step 3 of 10)", "[node-1] step 1/2"):
        assert progress.parse_line(other) is None


def test_eta_is_the_rate_so_far_times_what_is_left(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("loading\nstep 2/10 loss 1.0\nsaving a checkpoint\n")
    written = time.time() - 1
    os.utime(log, (written, written))
    now = progress.from_log(str(log), started_at=written - 10, running=True)  # 5 s a step, 8 steps left, 1 s ago
    assert (now.done, now.total) == (2, 10)
    assert 38.5 < now.eta_s < 39.5
    assert progress.from_log(str(log), started_at=written - 10, running=False).eta_s is None
    assert progress.clock(3723) == "1:02:03" and progress.clock(83) == "1:23" and progress.clock(None) == "-"


def test_follow_draws_a_training_bar_with_loss_rate_and_eta(registry):
    record = start(registry, TRAINING_JOB, stage="slow-thinking")
    buf = io.StringIO()
    assert follow(record.id, registry, Console(file=buf, width=160)).state == "succeeded"
    text = buf.getvalue()
    assert "step 4/4 loss 1.0000" in text  # the step lines stay: they are the loss history
    bar = text.strip().splitlines()[-1]
    assert bar.startswith("train loss 1 400 tok/s") and "4/4" in bar and "ETA" in bar, bar


def test_task_bars_have_an_eta(registry):
    code = "for i in range(1, 4):\n    print(f'[progress] generate {i}/3', flush=True)\n    time.sleep(0.05)\nwrite_manifest(out)"
    buf = io.StringIO()
    follow(start(registry, code).id, registry, Console(file=buf, width=120))
    bar = buf.getvalue().strip().splitlines()[-1]
    assert bar.startswith("generate") and "3/3" in bar and "ETA" in bar, bar


def test_runs_show_has_progress_eta_and_json(registry):
    done = wait_state(registry, start(registry, TRAINING_JOB, stage="slow-thinking").id)
    shown = CliRunner().invoke(cli, ["runs", "show", done.id])
    assert shown.exit_code == 0, shown.output
    assert "step 4/4 (100.0 %), loss 1, 400 tok/s" in shown.output
    assert any(line.split() == ["ETA", "-"] for line in shown.output.splitlines())  # ended: nothing left to wait
    data = json.loads(CliRunner().invoke(cli, ["runs", "show", done.id, "--json"]).output)
    assert data["id"] == done.id and data["state"] == "succeeded" and data["output"] == done.output
    assert data["progress"] == {"task": "train", "done": 4, "total": 4, "loss": 1.0, "tokens_per_s": 400.0,
                                "eta_s": None, "percent": 100.0}
    assert data["duration"] > 0


def test_runs_list_json_and_80_columns(registry, monkeypatch):
    records = [wait_state(registry, start(registry, "write_manifest(out)", stage=stage).id)
               for stage in ("adaptive-thinking", "reward-model")]
    listed = json.loads(CliRunner().invoke(cli, ["runs", "list", "--json"]).output)
    assert [r["id"] for r in listed] == [r.id for r in reversed(records)]
    assert all(r["output"] and r["state"] == "succeeded" and r["duration"] is not None for r in listed)

    monkeypatch.setenv("COLUMNS", "80")
    narrow = CliRunner().invoke(cli, ["runs", "list"]).output.splitlines()
    assert all(len(line) <= 80 for line in narrow), narrow
    assert narrow[0].split()[:3] == ["id", "state", "duration"] and narrow[0].split()[-1] == "output"
    for record, line in zip(reversed(records), narrow[1:]):
        cells = line.split()
        assert cells[0] == record.id and cells[1] == "succeeded" and cells[2].endswith("s")  # never shortened
        assert cells[-1].startswith("…") and record.output.endswith(cells[-1][1:])  # the output's end

    monkeypatch.setenv("COLUMNS", "400")
    wide = CliRunner().invoke(cli, ["runs", "list"]).output.splitlines()
    assert wide[0].split() == ["id", "stage", "backend", "state", "created", "duration", "output"]
    assert records[0].output in wide[2]


def test_stages_and_validate_json(tmp_path):
    stages = json.loads(CliRunner().invoke(cli, ["stages", "--json"]).output)
    slow = next(s for s in stages if s["name"] == "slow-thinking")
    assert slow["inputs"] == ["cots"] and slow["trains"] and "teacher" in slow["optional_inputs"]
    ok = CliRunner().invoke(cli, ["validate", "examples/slow-thinking.yaml", "--json"])
    verdict = json.loads(ok.output)
    assert ok.exit_code == 0 and verdict["ok"] and verdict["kind"] == "pipeline" and verdict["stages"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_steps: many}\n")
    refused = CliRunner().invoke(cli, ["validate", str(bad), "--stage", "slow-thinking", "--json"])
    assert refused.exit_code == 2
    verdict = json.loads(refused.stdout.splitlines()[0])
    assert verdict["ok"] is False and "train.max_steps" in verdict["error"]


def test_an_output_path_is_shortened_only_as_far_as_it_must():
    from pathlib import Path

    from pai_distil.cli.runs import _shorten

    path = str(Path.home() / "work" / "slow-thinking-0a220b81" / "output")
    assert _shorten(path, 200) == path
    assert _shorten(path, 36) == "~/work/slow-thinking-0a220b81/output"  # the home as ~ first
    assert _shorten(path, 35) == "…work/slow-thinking-0a220b81/output"  # then only its end
    assert _shorten(path, 12) == "…0b81/output"
