"""`runs rm` and `runs gc`: the disk of finished runs freed, never an artifact another run still uses
(a cached run's output, a succeeded run's input) nor an active run."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from test_process_backend import SLEEPING_JOB, home, kill_group, registry, start, wait_log, wait_state  # noqa: F401

from pai_distil import paths
from pai_distil.cli import cli
from pai_distil.run import work_lock

DONE = "(out / 'weights.bin').write_bytes(b'w' * 1000)\nwrite_manifest(out)"


def runs(*args):
    result = CliRunner().invoke(cli, ["runs", *args])
    return result.exit_code, result.output


def finished(registry, **kw):
    return wait_state(registry, start(registry, DONE, **kw).id)


def test_rm_keeps_a_work_dir_a_cached_run_points_at(registry):
    first = finished(registry, stage="slow-thinking")
    cached = registry.create("slow-thinking-20300101-000000-cafe", "slow-thinking", "process", first.cache_key,
                             first.work_dir, first.output, first.log_path, state="cached")
    code, out = runs("rm", first.id)
    assert code == 0, out
    assert f"kept {first.work_dir}: run {cached.id} (cached) uses it" in out
    assert Path(first.output, "weights.bin").is_file() and not paths.run_dir(first.id).exists()
    assert [r.id for r in registry.list()] == [cached.id]
    code, out = runs("rm", cached.id)  # the last run that uses it: now it goes
    assert code == 0 and not Path(first.work_dir).exists(), out
    assert "removed 1 run(s)" in out


def test_rm_keeps_an_input_of_a_succeeded_run(registry):
    student = finished(registry, stage="slow-thinking")
    finished(registry, stage="evaluate", inputs={"student": student.output})
    code, out = runs("rm", student.id, "--json")
    removal = json.loads(out)
    assert code == 0 and removal["runs"] == [student.id]
    assert "read it as an input" in removal["kept"][student.work_dir]
    assert Path(student.output, "weights.bin").is_file()


def test_rm_refuses_an_active_run_and_dry_run_removes_nothing(registry):
    running = start(registry, SLEEPING_JOB)
    try:
        wait_log(running, "ready")
        code, out = runs("rm", running.id)
        assert code == 2 and f"run {running.id} is running; stop it first" in out
    finally:
        kill_group(registry.get(running.id).job_pid)
    done = finished(registry, stage="score")  # the helper's work dir is named by stage and date: not the one above
    code, out = runs("rm", done.id, "--dry-run")
    assert code == 0 and "would remove 1 run(s) and 2 folder(s)" in out
    assert Path(done.work_dir).is_dir() and registry.get(done.id).state == "succeeded"


def test_gc_frees_what_no_run_uses(registry, home):
    kept = finished(registry, stage="slow-thinking")
    failed = wait_state(registry, start(registry, "sys.exit(3)").id)
    orphan = home / "work" / "generate-0123456789abcdef"
    (orphan / "output").mkdir(parents=True)
    (orphan / "output" / "rows.jsonl").write_text("{}\n" * 100)
    leftover = home / "work" / ".slow-thinking-0123456789abcdef.replaced"
    leftover.mkdir()
    stray_log = home / "runs" / "generate-20200101-000000-dead"
    stray_log.mkdir(parents=True)
    starting = home / "work" / ".score-0123456789abcdef.replaced"  # a --force submit is starting its run
    starting.mkdir()
    work_lock.hold(home / "work" / "score-0123456789abcdef", "score-20300101-000000-beef")
    try:
        code, out = runs("gc")
    finally:
        work_lock.release(home / "work" / "score-0123456789abcdef")
    assert code == 0, out
    assert not orphan.exists() and not leftover.exists() and not stray_log.exists() and starting.is_dir()
    assert Path(kept.output, "weights.bin").is_file() and Path(failed.work_dir).exists()  # a failed run resumes
    assert {r.id for r in registry.list()} == {kept.id, failed.id}
    code, out = runs("gc", "--failed", "--json")
    assert json.loads(out)["runs"] == [failed.id]
    assert not Path(failed.work_dir).exists() and Path(kept.output, "weights.bin").is_file()
