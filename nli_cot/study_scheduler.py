"""A small job-graph scheduler for the small-scale study (``nli_cot.study``): subprocesses on N GPUs, resumable.

Features
- Jobs form a DAG (``deps``); a ready job starts in ``priority`` order on a free slot of its lane: ``gpu`` jobs
  get one GPU each through ``CUDA_VISIBLE_DEVICES`` (``slots_per_gpu`` jobs may share one: 135M-parameter jobs
  are launch-bound, so two processes per card overlap well), ``cpu`` jobs get ``CUDA_VISIBLE_DEVICES=""``,
  ``local`` jobs run in this process, one at a time in a worker thread (short bookkeeping: data sampling,
  evaluation, choices), so they never hold up the start of the next GPU job.
- Commands are built when a job starts (``argv()``), so a job can read what its dependencies wrote (the best
  checkpoint, the chosen learning rate); the exact command is what the manifest records.
- Resumable: a finished job leaves an atomic marker (``<state_dir>/<job>.json``, temp file + rename); a later
  invocation skips it. Interrupted and failed jobs have no marker and run again (the stage CLIs resume inside).
- Deadline-aware: no job starts when less than ``start_margin_s`` is left before ``stop_at``; at ``stop_at``
  running jobs get SIGTERM (SIGKILL after ``kill_grace_s``) and are recorded as interrupted; the caller then
  writes its report. A second invocation continues where this one stopped.
- Failures: a job that exits non-zero is reported (exit code, log file) and its dependents are skipped; the rest
  of the graph goes on. A ``NoData`` outcome (e.g. a teacher produced no usable SFT example) ends the job and its
  dependents as ``no_data`` without counting as a failure.
- Manifest: every attempt's command, seed/condition metadata, start/end time, wall time, GPU, exit code, status
  and log path, plus one entry per invocation, in one JSON file rewritten atomically after every event.

Limits
- One machine; subprocesses only (no cluster launcher). A local job cannot be killed: at the deadline the
  scheduler waits for it, so keep local jobs short. Interruption relies on the stage CLIs being resumable; a job that is not loses its partial work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nli_cot.records import write_json_atomic

FINAL = ("done", "no_data")  # outcomes a marker records; a later invocation never runs these again


class NoData(Exception):
    """A job has nothing to work on (an empty SFT set): it and its dependents end as ``no_data``."""


@dataclass
class Job:
    name: str
    lane: str  # gpu | cpu | local
    priority: tuple = ()
    deps: list[str] = field(default_factory=list)
    argv: Callable[[], list[str]] | None = None  # subprocess command, built at start time
    fn: Callable[[], dict[str, Any] | None] | None = None  # local job; returns a result dict for the marker
    check: Callable[[], None] | None = None  # before starting: raise NoData to skip the job as no_data
    equivalent: Callable[[], str] | None = None  # local job: the CLI command that does the same thing
    meta: dict[str, Any] = field(default_factory=dict)  # condition, seed, stage: copied into the manifest


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    slot: int | None
    gpu: str | None
    started: float
    log: Any
    record: dict[str, Any]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Scheduler:
    """Runs a job graph once (one invocation); see the module docstring."""

    def __init__(
        self,
        jobs: list[Job],
        state_dir: Path,
        log_dir: Path,
        manifest_path: Path,
        gpus: list[str],
        slots_per_gpu: int = 1,
        cpu_slots: int = 1,
        max_running: int | None = None,
        stop_at: float | None = None,
        start_margin_s: float = 30.0,
        kill_grace_s: float = 10.0,
        env: dict[str, str] | None = None,
        poll_s: float = 0.5,
        fail_jobs: tuple[str, ...] = (),
        python: str = "python",
        printer: Callable[[str], None] = print,
    ) -> None:
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique")
        self.jobs = {j.name: j for j in jobs}
        for j in jobs:
            for d in j.deps:
                if d not in self.jobs:
                    raise ValueError(f"job {j.name}: unknown dependency {d}")
        self.state_dir, self.log_dir, self.manifest_path = state_dir, log_dir, manifest_path
        # One entry per concurrent GPU slot; no GPU: one "device" slot (the CPU) with CUDA hidden.
        self.gpu_slots: list[str | None] = [g for g in gpus for _ in range(slots_per_gpu)] or [None]
        self.gpu_free = [True] * len(self.gpu_slots)
        self.cpu_slots = cpu_slots
        self.max_running = max_running
        self.stop_at, self.start_margin_s, self.kill_grace_s = stop_at, start_margin_s, kill_grace_s
        self.env = dict(env or {})
        self.poll_s = poll_s
        self.fail_jobs = set(fail_jobs)
        self.python = python
        self.say = printer
        self.status: dict[str, str] = {}
        self.reason: dict[str, str] = {}
        self.running: dict[str, _Running] = {}
        self.local: dict[str, tuple[Future, dict[str, Any], float, str]] = {}
        # One worker: local jobs may plot (pyplot is not thread-safe) and are seconds long anyway.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="study-local")
        self.manifest = self._load_manifest()

    # ----------------------------------------------------------------------------------------- state

    def marker(self, name: str) -> Path:
        return self.state_dir / f"{_safe(name)}.json"

    def _load_manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            try:
                return json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:  # a torn file cannot happen (atomic writes), but never crash on it
                pass
        return {"invocations": [], "jobs": {}}

    def _save(self) -> None:
        write_json_atomic(self.manifest_path, self.manifest)

    def _attempt(self, name: str, record: dict[str, Any]) -> None:
        entry = self.manifest["jobs"].setdefault(name, {"attempts": []})
        entry.update(
            {k: v for k, v in record.items() if k not in ("command_argv",)},
            meta=self.jobs[name].meta,
            deps=self.jobs[name].deps,
        )
        attempts = entry["attempts"]
        if attempts and attempts[-1].get("attempt_id") == record.get("attempt_id"):
            attempts[-1] = record
        else:
            attempts.append(record)
        self._save()

    def _finish(self, name: str, status: str, result: dict[str, Any] | None = None, reason: str = "") -> None:
        self.status[name] = status
        if reason:
            self.reason[name] = reason
        if status in FINAL:
            write_json_atomic(self.marker(name), {"status": status, "time": _now(), "reason": reason,
                                                  "result": result or {}})
        if status in ("failed", "no_data", "skipped"):
            self._propagate(name, status)

    def _propagate(self, name: str, status: str) -> None:
        """Dependents of a failed/skipped job are skipped; of a no-data job, no_data (they have no input)."""
        for other in self.jobs.values():
            if name in other.deps and self.status.get(other.name) == "pending":
                if status == "no_data":
                    self.status[other.name] = "no_data"
                    self.reason[other.name] = f"no data: {name}"
                    self._attempt(other.name, {"attempt_id": f"{other.name}@{_now()}", "status": "no_data",
                                               "reason": self.reason[other.name], "end": _now()})
                    write_json_atomic(self.marker(other.name), {"status": "no_data", "time": _now(),
                                                                "reason": self.reason[other.name]})
                    self._propagate(other.name, "no_data")
                else:
                    self.status[other.name] = "skipped"
                    self.reason[other.name] = f"dependency {name} {status}"
                    self._propagate(other.name, "skipped")

    # ------------------------------------------------------------------------------------------ run

    def left(self) -> float:
        return float("inf") if self.stop_at is None else self.stop_at - time.time()

    def _ready(self) -> list[Job]:
        ready = [
            j for j in self.jobs.values()
            if self.status[j.name] == "pending" and all(self.status[d] == "done" for d in j.deps)
        ]
        return sorted(ready, key=lambda j: j.priority)

    def _lane_free(self, job: Job) -> bool:
        if job.lane == "local" and job.fn is not None and job.name not in self.fail_jobs:
            return not self.local
        if self.max_running is not None and len(self.running) >= self.max_running:
            return False
        if job.lane == "gpu":
            return any(self.gpu_free)
        if job.lane == "cpu":
            return sum(r.job.lane == "cpu" for r in self.running.values()) < self.cpu_slots
        return True

    def _start(self, job: Job) -> None:
        started = time.time()
        attempt_id = f"{job.name}@{time.time():.6f}#{os.getpid()}"
        log_path = self.log_dir / f"{_safe(job.name)}.log"
        base = {"attempt_id": attempt_id, "start": _now(), "log": str(log_path), "host": socket.gethostname(),
                "lane": job.lane, **{k: v for k, v in job.meta.items() if k in ("seed", "condition", "stage")}}
        try:
            if job.check:
                job.check()
        except NoData as why:
            self._attempt(job.name, {**base, "status": "no_data", "reason": str(why), "end": _now(), "wall_s": 0})
            self.say(f"[no data] {job.name}: {why}")
            self._finish(job.name, "no_data", reason=str(why))
            return
        if job.fn is not None and job.name not in self.fail_jobs:
            command = job.equivalent() if job.equivalent else f"(in process) {job.name}"
            self.status[job.name] = "running"
            self.local[job.name] = (self.pool.submit(job.fn), base, started, command)
            self._attempt(job.name, {**base, "status": "running", "command": command, "in_process": True})
            return
        argv = job.argv() if job.argv else []
        if job.name in self.fail_jobs:  # drill: this job fails on purpose (tests of failure handling)
            argv = [self.python, "-c", "import sys; print('fail_jobs: failing on purpose'); sys.exit(1)"]
        slot = gpu = None
        env = {**os.environ, **self.env}
        if job.lane == "gpu":
            slot = self.gpu_free.index(True)
            self.gpu_free[slot] = False
            gpu = self.gpu_slots[slot]
            env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a", encoding="utf-8")
        log.write(f"\n===== {_now()} {job.name} (gpu {gpu})\n$ {' '.join(argv)}\n")
        log.flush()
        # A new session: terminating the job also reaches the processes it started.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        record = {**base, "status": "running", "command": " ".join(argv), "command_argv": argv,
                  "gpu": gpu, "pid": proc.pid}
        self.running[job.name] = _Running(job, proc, slot, gpu, started, log, record)
        self.status[job.name] = "running"
        self._attempt(job.name, record)
        self.say(f"[start] {job.name} (gpu {gpu}, pid {proc.pid})")

    def _finish_local(self, name: str) -> None:
        future, base, started, command = self.local.pop(name)
        wall = round(time.time() - started, 2)
        rec = {**base, "command": command, "end": _now(), "wall_s": wall, "in_process": True}
        try:
            result = future.result() or {}
        except NoData as why:
            self._attempt(name, {**rec, "status": "no_data", "reason": str(why)})
            self._finish(name, "no_data", reason=str(why))
            return
        except Exception as err:  # a bookkeeping job's error is this job's failure, not the driver's
            self._attempt(name, {**rec, "status": "failed", "error": f"{type(err).__name__}: {err}",
                                 "exit_code": None})
            self.say(f"[failed] {name}: {type(err).__name__}: {err}")
            self._finish(name, "failed", reason=f"{type(err).__name__}: {err}")
            return
        self._attempt(name, {**rec, "status": "done", "exit_code": 0})
        self.say(f"[done] {name} ({wall:.1f} s, in process)")
        self._finish(name, "done", result)

    def _reap(self) -> None:
        for name in [n for n, (f, *_rest) in self.local.items() if f.done()]:
            self._finish_local(name)
        for name, r in list(self.running.items()):
            code = r.proc.poll()
            if code is None:
                continue
            self._close(name, r, "done" if code == 0 else "failed", code)

    def _close(self, name: str, r: _Running, status: str, code: int | None) -> None:
        r.log.close()
        del self.running[name]
        if r.slot is not None:
            self.gpu_free[r.slot] = True
        wall = round(time.time() - r.started, 2)
        record = {**r.record, "status": status, "end": _now(), "wall_s": wall, "exit_code": code}
        self._attempt(name, record)
        if status == "interrupted":
            self.status[name] = "interrupted"
            self.say(f"[interrupted] {name} after {wall:.0f} s (resumes next time)")
            return
        self.say(f"[{status}] {name} ({wall:.1f} s, exit {code})" + ("" if status == "done" else f"; log {r.record['log']}"))
        self._finish(name, status, {"wall_s": wall, "exit_code": code},
                     reason="" if status == "done" else f"exit code {code}, see {r.record['log']}")

    def _stop_all(self) -> None:
        for r in self.running.values():
            try:
                os.killpg(r.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + self.kill_grace_s
        while time.time() < end and any(r.proc.poll() is None for r in self.running.values()):
            time.sleep(0.2)
        for name, r in list(self.running.items()):
            if r.proc.poll() is None:
                try:
                    os.killpg(r.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                r.proc.wait()
            self._close(name, r, "interrupted", r.proc.returncode)
        for name in list(self.local):  # threads cannot be killed; local jobs are seconds long
            self.local[name][0].exception()
            self._finish_local(name)

    def run(self, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run until every job has an outcome or the deadline stops it; returns the invocation summary.

        ``info`` (e.g. device and package versions) is stored with this invocation in the manifest."""
        t0 = time.time()
        invocation = {"start": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                      "gpus": [g for g in self.gpu_slots if g is not None], "stop_at": self.stop_at, **(info or {})}
        self.manifest["invocations"].append(invocation)
        for name in self.jobs:
            self.status[name] = "pending"
            m = self.marker(name)
            if m.is_file():
                data = json.loads(m.read_text(encoding="utf-8"))
                self.status[name] = data.get("status", "done")
                self.reason[name] = data.get("reason", "")
        for name in [n for n, s in self.status.items() if s == "no_data"]:
            self._propagate(name, "no_data")  # jobs added since (a new seed) that depend on a no-data job
        skipped_done = [n for n, s in self.status.items() if s in FINAL]
        if skipped_done:
            self.say(f"resume: {len(skipped_done)} of {len(self.jobs)} jobs already finished, skipped")
        stopped_by_deadline = False
        try:
            while True:
                self._reap()
                if self.left() <= 0:
                    if self.running or self.local:
                        self.say(f"deadline: stopping {len(self.running)} running job(s)")
                        self._stop_all()
                    stopped_by_deadline = True
                    break
                started_any = False
                if self.left() >= self.start_margin_s:
                    for job in self._ready():
                        if self.status[job.name] != "pending" or not self._lane_free(job):
                            continue
                        self._start(job)
                        started_any = True
                elif not self.running and not self.local:
                    stopped_by_deadline = any(s == "pending" for s in self.status.values())
                    break
                if not self.running and not self.local and not started_any:
                    break
                if not started_any:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self.say("interrupted by the user: stopping running jobs")
            self._stop_all()
            stopped_by_deadline = True
        self.pool.shutdown(wait=True)
        counts: dict[str, int] = {}
        for s in self.status.values():
            counts[s] = counts.get(s, 0) + 1
        left = [n for n, s in self.status.items() if s in ("pending", "interrupted")]
        summary = {
            "wall_s": round(time.time() - t0, 1),
            "counts": counts,
            "already_finished": len(skipped_done),
            "stopped_by_deadline": stopped_by_deadline,
            "left": left,
            "failed": {n: self.reason.get(n, "") for n, s in self.status.items() if s == "failed"},
            "skipped": {n: self.reason.get(n, "") for n, s in self.status.items() if s == "skipped"},
            "no_data": {n: self.reason.get(n, "") for n, s in self.status.items() if s == "no_data"},
        }
        invocation.update(end=_now(), summary=summary)
        self.manifest["status"] = dict(self.status)
        self._save()
        return summary
