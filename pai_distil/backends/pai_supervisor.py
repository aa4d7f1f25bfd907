"""The supervisor of a `pai` run: `python -m pai_distil.backends.pai_supervisor RUN_ID REGISTRY`.

It follows the run's DLC jobs (status changes and every pod's log into the run's log), submits a job
DLC failed through its machines again, and checks the output in OSS when the job ends.

Why it never stops a job on its own: a paid 16-GPU job must not die because a laptop lost its network
for a minute or an STS token expired. GetJob / GetPodLogs failures of every kind (network, throttling,
refused credentials) are ridden out with backoff for as long as the job lives; the credential chain is
read again on every call, so refreshed credentials are picked up without a restart. StopJob is sent only
on a cancel (`runs cancel`, which also stops the job by its saved id when no supervisor is alive) or when
the job runs past the `--max-runtime` the user set. If this process dies, the job runs on and
`pai-distil runs attach RUN` starts a new supervisor, which goes on where the log stopped.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from rich.console import Console

from pai_distil.core.config import JobSpec
from pai_distil.core.errors import UserError
from pai_distil.run.registry import Registry, RunRecord

from ..paths import run_dir
from .pai import Plan, read_job_info, write_job_info
from .supervisor import NO_ARTIFACT, Supervisor, supervise

SUPERVISOR_MODULE = "pai_distil.backends.pai_supervisor"
NOT_STARTED = ("Pending", "Queuing", "Creating", "Dequeued")  # pod states before there is a log to read
ERROR_BACKOFF = (1.0, 2.0, 60.0)  # first wait, factor, ceiling (s) between calls while DLC cannot be read
NOTE_EVERY = 10  # after the first, every this many failed calls in a row is noted in the log


class PaiSupervisor(Supervisor):
    """Follows a run's DLC jobs: status changes and pod logs into the run's log, a preempted job
    submitted again, the output checked in OSS (and brought home when asked)."""

    submitted_by_start = True  # PaiBackend.start submitted the DLC job: a cancel stops it
    job_outlives_supervisor = True

    def __init__(self, run_id: str, registry: Registry):
        super().__init__(run_id, registry)
        self.client = None
        self.job_id = None
        self.stop_sent = False

    def launch(self, spec: JobSpec, record: RunRecord) -> None:
        """Take over the DLC job `start` submitted (or the one an earlier supervisor followed)."""
        from pai_distil.cloud.pai import dlc
        from pai_distil.cloud.pai.config import PaiConfig

        self.info = read_job_info(self.run_id)
        self.cfg = PaiConfig.model_validate(self.info["config"])
        self.client, self.job_id = dlc.client(self.cfg), self.info["job_id"]

    def poll(self, spec: JobSpec, record: RunRecord) -> dict | None:
        """Follow the DLC job, submitted again after a preemption; the terminal record's fields, or
        None when a job succeeded (its output is then checked)."""
        from pai_distil.cloud.pai import dlc

        info = self.info
        while True:
            job = self.follow(self.cfg)
            self.record_attempt(info, job)
            if job.status == "Stopped" or self.stop_requested:
                return {"state": "cancelled", "error": f"DLC job {self.job_id} stopped"}
            if job.status == "Succeeded":
                return None
            reason = job.reason_message or job.reason_code or "no reason given"
            machines = dlc.failed_by_infrastructure(job)  # not the job's own code: worth another attempt
            if not machines or len(info["attempts"]) > int(info.get("max_restarts") or 0):
                why = f" (after {len(info['attempts'])} attempts)" if machines else ""
                return {"state": "failed", "error": f"DLC job {self.job_id} {job.status.lower()}{why}: {reason}",
                        "exit_code": 1}
            try:
                self.resubmit(spec, self.cfg, info, reason)
            except UserError as e:
                return {"state": "failed", "error": f"resubmitting after a preemption: {e.message}", "exit_code": 1}

    def stop(self, sig: int) -> None:
        """StopJob, once (DLC gives the pods SIGTERM, then kills them)."""
        from pai_distil.cloud.pai import dlc

        if self.client is not None and self.job_id and not self.stop_sent:
            dlc.stop_job(self.client, self.job_id)
            self.stop_sent = True

    def kill_all(self) -> None:
        """Nothing: the DLC job is not this process's to kill; a crashed supervisor is replaced by `runs attach`."""

    def record_attempt(self, info: dict, job) -> None:
        info["attempts"][-1].update(status=job.status, reason=job.reason_code if job.status != "Succeeded" else "")
        write_job_info(run_dir(self.run_id), info)

    def resubmit(self, spec: JobSpec, cfg, info: dict, reason: str) -> None:
        """The same job again, as a new DLC job on the same OSS prefixes: it resumes from its checkpoints."""
        from pai_distil.cloud.pai import dlc

        attempt = len(info["attempts"]) + 1
        self.note(f"DLC job {self.job_id} failed through its machines ({reason}); submitting attempt {attempt} "
                  f"of {1 + int(info['max_restarts'])}, which resumes from the checkpoints in OSS")
        request = Plan(spec, cfg).request(attempt=attempt, **info.get("request_options", {}))
        try:
            self.job_id = self.client.create_job(request).body.job_id
        except Exception as e:  # noqa: BLE001 - Tea exceptions of every kind become one line
            raise dlc.explain(e, "resubmitting the DLC job") from None
        info["job_id"] = self.job_id
        info["attempts"].append({"job_id": self.job_id, "status": "Submitted", "reason": ""})
        write_job_info(run_dir(self.run_id), info)
        self.note(f"DLC job {self.job_id} for run {self.run_id} (attempt {attempt})")

    def collect(self, spec: JobSpec, record: RunRecord, ended: dict | None) -> None:
        """The output, checked by its manifest in OSS; downloaded and checked again only when asked."""
        from pai_distil.cloud.pai.oss import Storage

        if ended is not None:
            return self.finish(**ended)
        cfg, info = self.cfg, self.info
        storage = Storage(cfg, Console(file=sys.stdout, force_terminal=False, width=120))
        uri = storage.uri(info["output_prefix"].rstrip("/") + "/")
        try:
            manifest = storage.remote_manifest(info["output_prefix"])
            if manifest is None:
                return self.finish("failed", error=NO_ARTIFACT, exit_code=0)
            self.note(f"output in OSS: {uri} ({len(manifest.get('files', []))} files, manifest checked)")
            if not info.get("download"):
                self.registry.update(self.run_id, output=uri)
                return self.finish("succeeded", exit_code=0)
            moved = storage.download(info["output_prefix"], Path(spec.output), "output")
        except UserError as e:
            return self.finish("failed", error=f"output of DLC job {self.job_id}: {e.message}", exit_code=1)
        self.note(moved.summary("downloaded"))
        return self.finish_output(spec.output)

    def follow(self, cfg):
        """Poll one DLC job until it ends, its pods' logs into the run's log; returns its last body.

        A failed call is retried with backoff, however long DLC stays unreadable (see the module's doc)."""
        from pai_distil.cloud.pai import dlc

        cursors = self.saved_cursors()
        status, errors, failing_since = None, 0, 0.0
        polls, retries = dlc.backoff(0.5, 1.5, 5.0), dlc.backoff(*ERROR_BACKOFF)
        while True:
            if self.stop_requested and not self.stop_sent:
                self.note(f"cancel requested: stopping DLC job {self.job_id}")
                self.stop_or_retry()
            try:
                job = dlc.get_job(self.client, self.job_id)
                if job.status in dlc.TERMINAL:  # the last lines: wait until the log has them all
                    end = (dlc.parse_iso(job.gmt_finish_time) or time.time()) + 2
                    time.sleep(max(0.0, end + cfg.log_delay_s - time.time()))
                    self.pump(job, cursors, end)
                else:
                    self.pump(job, cursors, time.time() - cfg.log_delay_s)
            except UserError as e:
                errors += 1
                failing_since = failing_since or time.monotonic()
                if errors == 1 or errors % NOTE_EVERY == 0:
                    self.note(f"{e.message} (call {errors} failed; retrying with backoff while the job runs on"
                              f"{'; refresh the credentials and this run picks them up' if 'credentials' in e.message else ''})")
                self.wait(next(retries))
                continue
            if errors:
                self.note(f"DLC readable again after {errors} failed call(s) over "
                          f"{time.monotonic() - failing_since:.0f} s")
                errors, failing_since, retries = 0, 0.0, dlc.backoff(*ERROR_BACKOFF)
            if job.status != status:
                status = job.status
                self.note(f"DLC job {self.job_id}: {status}")
            if status == "Running" and self.registry.get(self.run_id).state != "running":
                self.running()
            if status in dlc.TERMINAL:
                return job
            self.stop_past_max_runtime(job)
            self.wait(next(polls))

    def wait(self, seconds: float) -> None:
        """Sleep, waking early for a cancel."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (self.stop_requested and not self.stop_sent):
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def stop_or_retry(self) -> None:
        """StopJob for a cancel; a failed call is noted and tried again on the next round."""
        try:
            self.stop(signal.SIGTERM)
        except UserError as e:
            self.note(f"{e.message}; trying again")

    def stop_past_max_runtime(self, job) -> None:
        """The user's `--max-runtime` (minutes), enforced here too should DLC not end the job at it."""
        from pai_distil.cloud.pai import dlc

        limit = self.info.get("max_runtime_minutes")
        started = dlc.parse_iso(getattr(job, "gmt_running_time", None))
        if not limit or started is None or self.stop_sent or time.time() - started < limit * 60 + 300:
            return
        self.note(f"DLC job {self.job_id} ran past --max-runtime {limit} min; stopping it")
        self.stop_requested = True

    def saved_cursors(self) -> dict:
        """How far each pod's log was read, as saved by an earlier supervisor of this run: none is shown twice."""
        from pai_distil.cloud.pai import dlc

        return {pod: dlc.LogCursor(since=since) for pod, since in (self.info.get("log_since") or {}).items()}

    def pump(self, job, cursors: dict, until: float) -> None:
        """Append every pod's lines logged up to `until`, each once; several pods are told apart by a prefix."""
        from pai_distil.cloud.pai import dlc

        pods = job.pods or []
        created = dlc.parse_iso(job.gmt_create_time) or time.time() - 7 * 86400  # GetPodLogs' own default
        moved = False
        for i, pod in enumerate(pods):
            if pod.status in NOT_STARTED:  # no log yet; its cursor still starts at the job's creation
                continue
            cursor = cursors.setdefault(pod.pod_id, dlc.LogCursor(since=created))
            before = cursor.since
            lines, complete = dlc.new_pod_lines(self.client, self.job_id, pod.pod_id, cursor, until)
            if not complete and not cursor.warned:
                cursor.warned = True
                self.note(f"pod {pod.pod_id} logged more than {dlc.MAX_LINES_CEILING} lines in one second; "
                          "some of them are not shown (the DLC console has them all)")
            prefix = f"[{pod.pod_id}] " if len(pods) > 1 else ""
            for line in lines:
                shown = line if i == 0 and line.startswith("[progress] ") else prefix + line
                print(shown, flush=True)
            moved = moved or cursor.since != before
        if moved:
            self.info["log_since"] = {pod: c.since for pod, c in cursors.items()}
            write_job_info(run_dir(self.run_id), self.info)


def main(argv: list[str] | None = None) -> int:
    return supervise(PaiSupervisor, SUPERVISOR_MODULE, argv)


if __name__ == "__main__":
    sys.exit(main())
