"""The study's job graph on Dask distributed (``nli_cot.study``): one Dask task per job, resumable, deadline-aware.

Dask places the work; this module keeps what a study needs beyond placement.

What Dask does
- Placement: every subprocess job is one ``client.submit`` of ``run_job`` (the job's command, run in a subprocess
  on a worker) with a resource: ``gpu`` jobs need ``GPU=1`` (one slot), ``cpu`` jobs ``CPU=1``. Locally
  (``engine.address: null``) a cluster on this machine has one single-threaded worker per slot: ``slots_per_gpu``
  per visible GPU, each with its own ``CUDA_VISIBLE_DEVICES``, plus ``cpu_slots`` CPU workers
  (``CUDA_VISIBLE_DEVICES=""``); without a GPU, ``cpu_slots`` workers carry both resources (N jobs at once).
  With ``engine.address: tcp://host:8786`` the same tasks go to an existing scheduler (e.g. dask-jobqueue's
  SLURMCluster) whose workers declare ``--resources GPU=1,CPU=1``; they must see the repo, its python and out_dir
  at the same paths (a shared file system), and SLURM sets their ``CUDA_VISIBLE_DEVICES``.
- Order among queued jobs: Dask's ``priority`` (the graph's priority tuple, seed 0 and the teacher chains first).
- Progress: a task reports its start through ``Worker.log_event``; the driver prints it (``[start] job (gpu ..)``).

What this module adds (the rest of the former home-made scheduler)
- A job is submitted only when its dependencies are done, and its command is built then (``argv()``), so it can
  read what they wrote (the best checkpoint, the chosen learning rate); the manifest records the exact command
  (for the study's stage jobs: ``python -m nli_cot.orchestration.run_job <spec>``, with ``equivalent``, the CLI
  command a user would type for the same job). A command that cannot be built fails its job (and skips its
  dependents), not the driver.
- Resumable: a finished job leaves an atomic marker (``<state_dir>/<job>.json``); a later invocation skips it.
  Interrupted and failed jobs have no marker and run again (the stage CLIs resume inside).
- Deadline: no job starts with less than ``start_margin_s`` left before ``stop_at`` (a queued task that a worker
  picks up too late returns without running); at ``stop_at`` a running job gets SIGTERM (SIGKILL after
  ``kill_grace_s``) from its own task and is recorded as interrupted. Ctrl-C / SIGTERM of the driver do the same
  through a Dask ``Event``.
- Failures: a job that exits non-zero (or whose worker died) is reported (exit code, log file) and its dependents
  are skipped; the rest goes on. ``NoData`` (e.g. an empty SFT set) ends a job and its dependents as ``no_data``.
- ``local`` jobs (data sampling, evaluation, the lr choice: seconds each, and they use the driver's Hydra
  context) run in the driver, one at a time in a thread.
- Manifest: every attempt's command, metadata, start/end, wall time, GPU, host, exit code, status and log path,
  plus one entry per invocation, in one JSON file rewritten atomically after every event.

Limits
- Clocks: the deadline is an absolute time compared on the workers; cluster nodes need synchronised clocks.
- A worker that dies mid-job leaves its subprocess running (it is in its own session); the job counts as failed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nli_cot.core.records import write_json_atomic

FINAL = ("done", "no_data")  # outcomes a marker records; a later invocation never runs these again
TOPIC = "nli-cot-study"  # Worker.log_event topic of job starts
ADDRESS_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")
ENGINE_KEYS = {"address", "gpus", "slots_per_gpu", "cpu_slots", "connect_timeout_s", "dashboard_address"}


class NoData(Exception):
    """A job has nothing to work on (an empty SFT set): it and its dependents end as ``no_data``."""


@dataclass
class Job:
    name: str
    lane: str  # gpu | cpu | local
    priority: tuple = ()
    deps: list[str] = field(default_factory=list)
    argv: Callable[[], list[str]] | None = None  # subprocess command, built when the job is submitted
                                                 # (an exception there fails the job, not the driver)
    fn: Callable[[], dict[str, Any] | None] | None = None  # local job; returns a result dict for the marker
    check: Callable[[], None] | None = None  # before submitting: raise NoData to skip the job as no_data
    equivalent: Callable[[], str] | None = None  # the CLI command that does the same thing (called after argv)
    meta: dict[str, Any] = field(default_factory=dict)  # condition, seed, stage: copied into the manifest


@dataclass
class EngineConfig:
    """Where the jobs run (``conf/study.yaml`` ``engine``); ``gpus`` is the resolved list of GPU ids."""

    address: str | None = None
    gpus: list[str] = field(default_factory=list)
    slots_per_gpu: int = 1
    cpu_slots: int = 1
    connect_timeout_s: float = 60.0
    dashboard_address: str | None = None


def check_engine(engine: dict[str, Any]) -> list[str]:
    """One line per bad value of the ``engine`` block (empty: fine)."""
    errors = [f"engine.{k}: unknown key (known: {', '.join(sorted(ENGINE_KEYS))})" for k in engine if k not in ENGINE_KEYS]

    def integer(key: str, low: int, nullable: bool = False) -> None:
        v = engine.get(key)
        if v is None and nullable:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            errors.append(f"engine.{key} must be an integer >= {low}{' or null' if nullable else ''}, got {v!r}")

    integer("gpus", 0, nullable=True)
    integer("slots_per_gpu", 1)
    integer("cpu_slots", 1)
    addr = engine.get("address")
    if addr is not None and (not isinstance(addr, str) or not addr.startswith(ADDRESS_SCHEMES)):
        errors.append(f"engine.address must be null (a cluster on this machine) or a scheduler address "
                      f"({' | '.join(s + '...' for s in ADDRESS_SCHEMES)}), got {addr!r}")
    t = engine.get("connect_timeout_s")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        errors.append(f"engine.connect_timeout_s must be a number > 0, got {t!r}")
    dash = engine.get("dashboard_address")
    if dash is not None and not isinstance(dash, str):
        errors.append(f"engine.dashboard_address must be null (off) or a string like ':8787', got {dash!r}")
    return errors


def marker_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{_safe(name)}.json"


def safe_name(name: str) -> str:
    """A job name as a file name (``train:human_s0`` -> ``train_human_s0``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


_safe = safe_name


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------------------------------- the task


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def run_job(name: str, argv: list[str], lane: str, log_path: str, env: dict[str, str], stop_at: float | None,
            start_margin_s: float, kill_grace_s: float, stop_event: str | None = None) -> dict[str, Any]:
    """One job's command in a subprocess on a Dask worker; returns its outcome (the Dask task of every job).

    ``not_started`` when it was picked up too close to ``stop_at`` (or after a stop); ``interrupted`` when
    ``stop_at`` or the driver's stop event ended it; else ``done`` / ``failed`` by the exit code."""
    if (stop_at is not None and stop_at - time.time() < start_margin_s) or _stop_requested(stop_event):
        return {"status": "not_started"}
    worker = _worker()
    env = {**os.environ, **env}
    if lane != "gpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU jobs never touch a card
    gpu = env.get("CUDA_VISIBLE_DEVICES") if lane == "gpu" else None
    gpu = gpu or None  # "" = the CPU stands in for the GPU (a machine without one)
    started = time.time()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {_now()} {name} (gpu {gpu}, host {socket.gethostname()})\n$ {' '.join(argv)}\n")
        log.flush()
        # A new session: terminating the job also reaches the processes it started.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        where = {"gpu": gpu, "host": socket.gethostname(), "pid": proc.pid,
                 "worker": getattr(worker, "address", None), "start": _now()}
        if worker is not None:
            worker.log_event(TOPIC, {"event": "start", "job": name, **where})
        term_at = None
        interrupted = False
        next_check = time.time() + 1.0
        while proc.poll() is None:
            now = time.time()
            if term_at is None:
                stop = stop_at is not None and now >= stop_at
                if not stop and now >= next_check:
                    stop, next_check = _stop_requested(stop_event), now + 1.0
                if stop:
                    _killpg(proc.pid, signal.SIGTERM)
                    term_at, interrupted = now, True
            elif now - term_at > kill_grace_s:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.1)
    code = proc.returncode
    status = "interrupted" if interrupted else "done" if code == 0 else "failed"
    return {**where, "status": status, "exit_code": code, "end": _now(), "wall_s": round(time.time() - started, 2)}


def _worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # called outside a Dask worker (a direct call)
        return None


def _stop_requested(stop_event: str | None) -> bool:
    if not stop_event:
        return False
    try:
        from distributed import Event

        return Event(stop_event).is_set()
    except Exception:  # no scheduler reachable: nobody can ask us to stop
        return False


# ----------------------------------------------------------------------------------------- the cluster


def local_cluster(cfg: EngineConfig) -> Any:
    """A Dask cluster on this machine: one single-threaded worker process per slot (see the module docstring)."""
    from distributed import Nanny, Scheduler, SpecCluster

    def worker(resources: dict[str, int], cuda: str) -> dict[str, Any]:
        return {"cls": Nanny, "options": {"nthreads": 1, "resources": resources, "env": {"CUDA_VISIBLE_DEVICES": cuda},
                                          "memory_limit": 0, "silence_logs": logging.ERROR}}

    spec: dict[str, Any] = {}
    for g in cfg.gpus:
        for k in range(cfg.slots_per_gpu):
            spec[f"gpu{g}.{k}"] = worker({"GPU": 1}, g)
    for k in range(cfg.cpu_slots):
        spec[f"cpu.{k}"] = worker({"CPU": 1} if cfg.gpus else {"CPU": 1, "GPU": 1}, "")
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": cfg.dashboard_address, "host": "127.0.0.1"}}
    return SpecCluster(workers=spec, scheduler=scheduler, silence_logs=logging.ERROR, name="nli-cot-study")


# ------------------------------------------------------------------------------------------ the driver


class Engine:
    """Runs a job graph once (one invocation) on Dask; see the module docstring."""

    def __init__(
        self,
        jobs: list[Job],
        state_dir: Path,
        log_dir: Path,
        manifest_path: Path,
        engine: EngineConfig | None = None,
        stop_at: float | None = None,
        start_margin_s: float = 30.0,
        kill_grace_s: float = 10.0,
        env: dict[str, str] | None = None,
        poll_s: float = 0.2,
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
        self.cfg = engine or EngineConfig()
        self.stop_at, self.start_margin_s, self.kill_grace_s = stop_at, start_margin_s, kill_grace_s
        self.env = dict(env or {})
        self.poll_s = poll_s
        self.fail_jobs = set(fail_jobs)
        self.python = python
        self._print = printer
        self._say_lock = threading.Lock()
        # Dask priority: higher runs first; the graph's tuples sort the other way round.
        order = sorted(jobs, key=lambda j: j.priority)
        self.rank = {j.name: len(order) - i for i, j in enumerate(order)}
        self.status: dict[str, str] = {}
        self.reason: dict[str, str] = {}
        self.futures: dict[str, Any] = {}  # job -> Dask future
        self.queued: dict[str, dict[str, Any]] = {}  # job -> its attempt record at submission
        self.local: dict[str, tuple[Future, dict[str, Any], float, str]] = {}
        # One thread: local jobs may plot (pyplot is not thread-safe) and are seconds long anyway.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="study-local")
        self.client: Any = None
        self.cluster: Any = None
        self.stop_event = f"nli-cot-study-stop-{uuid.uuid4().hex[:12]}"
        self.manifest = self._load_manifest()

    def say(self, line: str) -> None:
        with self._say_lock:
            self._print(line)

    # ----------------------------------------------------------------------------------------- state

    def marker(self, name: str) -> Path:
        return marker_path(self.state_dir, name)

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
        entry.update({k: v for k, v in record.items() if k != "command_argv"}, meta=self.jobs[name].meta,
                     deps=self.jobs[name].deps)
        attempts = entry["attempts"]
        record = {k: v for k, v in record.items() if k != "command_argv"}
        if attempts and attempts[-1].get("attempt_id") == record.get("attempt_id"):
            attempts[-1] = record
        else:
            attempts.append(record)
        self._save()

    def _drop_attempt(self, name: str, attempt_id: str) -> None:
        """A submission that never started (the deadline came first) leaves no trace."""
        entry = self.manifest["jobs"].get(name)
        if not entry:
            return
        entry["attempts"] = [a for a in entry["attempts"] if a.get("attempt_id") != attempt_id]
        if entry["attempts"]:
            entry.update({k: v for k, v in entry["attempts"][-1].items()})
        else:
            del self.manifest["jobs"][name]
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

    # --------------------------------------------------------------------------------------- cluster

    def _connect(self) -> Any:
        """The Dask client, made on the first submission (a resumed or deadline-stopped run starts none)."""
        if self.client is not None:
            return self.client
        from distributed import Client, Event

        c = self.cfg
        if c.address:
            try:
                self.client = Client(c.address, timeout=c.connect_timeout_s)
                self.client.wait_for_workers(1, timeout=c.connect_timeout_s)
            except (OSError, TimeoutError) as err:
                raise SystemExit(f"error: engine.address {c.address}: no scheduler with a worker within "
                                 f"{c.connect_timeout_s:g} s ({type(err).__name__}: {err})") from None
            have: set[str] = set()
            for w in self.client.scheduler_info().get("workers", {}).values():
                have |= set(w.get("resources") or {})
            need = {"GPU" if j.lane == "gpu" else "CPU" for j in self.jobs.values()
                    if j.lane != "local" or j.name in self.fail_jobs}
            if need - have:
                self.say(f"warning: no worker of {c.address} declares {sorted(need - have)} yet; jobs that need "
                         "it wait for one (start workers with --resources \"GPU=1,CPU=1\")")
            where = c.address
        else:
            self.cluster = local_cluster(c)
            self.client = Client(self.cluster)
            where = (f"local: {len(c.gpus)} GPU(s) x {c.slots_per_gpu} slots + {c.cpu_slots} CPU slots"
                     if c.gpus else f"local: no GPU, {c.cpu_slots} slot(s)")
        Event(self.stop_event, client=self.client)  # exists from now on; set on Ctrl-C / SIGTERM
        self.client.subscribe_topic(TOPIC, self._on_event)
        self.say(f"dask: {where} (dashboard {self.client.dashboard_link if c.dashboard_address else 'off'})")
        return self.client

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        if msg.get("event") == "start":
            self.say(f"[start] {msg['job']} (gpu {msg.get('gpu')}, host {msg.get('host')}, pid {msg.get('pid')})")

    def _close(self) -> None:
        if self.client is not None:
            try:
                self.client.unsubscribe_topic(TOPIC)
            except Exception:
                pass
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    # ------------------------------------------------------------------------------------------ run

    def left(self) -> float:
        return float("inf") if self.stop_at is None else self.stop_at - time.time()

    def _ready(self) -> list[Job]:
        ready = [j for j in self.jobs.values()
                 if self.status[j.name] == "pending" and all(self.status[d] == "done" for d in j.deps)]
        return sorted(ready, key=lambda j: j.priority)

    def _submit(self, job: Job) -> None:
        log_path = self.log_dir / f"{_safe(job.name)}.log"
        base = {"attempt_id": f"{job.name}@{time.time():.6f}#{os.getpid()}", "submitted": _now(),
                "log": str(log_path), "lane": job.lane,
                **{k: v for k, v in job.meta.items() if k in ("seed", "condition", "stage")}}
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
            self.local[job.name] = (self.pool.submit(job.fn), {**base, "host": socket.gethostname()}, time.time(),
                                    command)
            self._attempt(job.name, {**base, "status": "running", "command": command, "in_process": True})
            return
        try:
            argv = job.argv() if job.argv else []
            equivalent = job.equivalent() if job.equivalent and job.argv else None
        except Exception as err:  # the job's config did not compose (e.g. a value a dependency wrote)
            why = f"{type(err).__name__}: {err}".splitlines()[0]
            self._attempt(job.name, {**base, "status": "failed", "error": why, "exit_code": None, "end": _now()})
            self.say(f"[failed] {job.name}: {why}")
            self._finish(job.name, "failed", reason=why)
            return
        if job.name in self.fail_jobs:  # drill: this job fails on purpose (tests of failure handling)
            argv = [self.python, "-c", "import sys; print('fail_jobs: failing on purpose'); sys.exit(1)"]
        client = self._connect()
        resource = "GPU" if job.lane == "gpu" else "CPU"
        self.futures[job.name] = client.submit(
            run_job, job.name, argv, job.lane, str(log_path), self.env, self.stop_at, self.start_margin_s,
            self.kill_grace_s, self.stop_event, key=f"{_safe(job.name)}-{uuid.uuid4().hex[:8]}",
            resources={resource: 1}, priority=self.rank[job.name], pure=False, retries=0)
        record = {**base, "status": "queued", "command": " ".join(argv), "command_argv": argv}
        if equivalent:
            record["equivalent"] = equivalent
        self.queued[job.name] = record
        self.status[job.name] = "queued"
        self._attempt(job.name, record)

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

    def _finish_task(self, name: str, outcome: dict[str, Any]) -> None:
        record = {**self.queued.pop(name), **outcome}
        status = outcome["status"]
        if status == "not_started":  # picked up too close to the deadline: as if never submitted
            self.status[name] = "pending"
            self._drop_attempt(name, record["attempt_id"])
            return
        self._attempt(name, record)
        wall, code = record.get("wall_s"), record.get("exit_code")
        if status == "interrupted":
            self.status[name] = "interrupted"
            self.say(f"[interrupted] {name} after {wall or 0:.0f} s (resumes next time)")
            return
        self.say(f"[{status}] {name} ({wall or 0:.1f} s, exit {code})" + ("" if status == "done" else f"; log {record['log']}"))
        why = "" if status == "done" else record.get("error") or f"exit code {code}, see {record['log']}"
        self._finish(name, status, {"wall_s": wall, "exit_code": code}, reason=why)

    def _reap(self) -> None:
        for name in [n for n, (f, *_rest) in self.local.items() if f.done()]:
            self._finish_local(name)
        for name, fut in list(self.futures.items()):
            if not fut.done():
                continue
            del self.futures[name]
            try:
                outcome = fut.result()
            except Exception as err:  # the worker died (KilledWorker), the task was cancelled, ...
                outcome = {"status": "failed", "exit_code": None, "end": _now(),
                           "error": f"dask: {type(err).__name__}: {err}"}
            self._finish_task(name, outcome)

    def _drain(self, within_s: float) -> None:
        """Wait for the outstanding tasks (they stop themselves); those still out after ``within_s`` are cancelled."""
        end = time.time() + within_s
        while (self.futures or self.local) and time.time() < end:
            self._reap()
            time.sleep(self.poll_s)
        for name, fut in list(self.futures.items()):
            fut.cancel()
            del self.futures[name]
            self._finish_task(name, {"status": "interrupted", "exit_code": None, "end": _now(),
                                     "error": "cancelled (no outcome in time)"})
        for name in list(self.local):  # threads cannot be killed; local jobs are seconds long
            self.local[name][0].exception()
            self._finish_local(name)

    def _stop_all(self) -> None:
        if self.client is not None:
            from distributed import Event

            try:
                Event(self.stop_event, client=self.client).set()
            except Exception:
                pass
        self._drain(self.kill_grace_s + 10)

    def run(self, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run until every job has an outcome or the deadline stops it; returns the invocation summary.

        ``info`` (e.g. device and package versions) is stored with this invocation in the manifest."""
        t0 = time.time()
        invocation = {"start": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                      "engine": self.cfg.address or "local", "gpus": list(self.cfg.gpus),
                      "slots_per_gpu": self.cfg.slots_per_gpu, "cpu_slots": self.cfg.cpu_slots,
                      "stop_at": self.stop_at, **(info or {})}
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
        interrupted_by_user = False
        old_term = None
        if threading.current_thread() is threading.main_thread():  # SIGTERM (timeout, a job system) = Ctrl-C
            old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while True:
                self._reap()
                if self.left() >= self.start_margin_s:
                    for job in self._ready():
                        if job.fn is not None and job.name not in self.fail_jobs and self.local:
                            continue  # one local job at a time
                        self._submit(job)
                elif self.left() <= 0 and (self.futures or self.local):
                    self.say(f"deadline: stopping {len(self.futures)} outstanding job(s)")
                    self._drain(self.kill_grace_s + 30)  # tasks stop their own jobs at stop_at
                if not self.futures and not self.local:
                    break
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            self.say("interrupted: stopping running jobs")
            interrupted_by_user = True
            self._stop_all()
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            self.pool.shutdown(wait=True)
            self._close()
        counts: dict[str, int] = {}
        for s in self.status.values():
            counts[s] = counts.get(s, 0) + 1
        left = [n for n, s in self.status.items() if s in ("pending", "interrupted")]
        stopped = interrupted_by_user or (bool(left) and self.left() < self.start_margin_s)
        summary = {
            "wall_s": round(time.time() - t0, 1),
            "counts": counts,
            "already_finished": len(skipped_done),
            "stopped_by_deadline": stopped,
            "left": left,
            "failed": {n: self.reason.get(n, "") for n, s in self.status.items() if s == "failed"},
            "skipped": {n: self.reason.get(n, "") for n, s in self.status.items() if s == "skipped"},
            "no_data": {n: self.reason.get(n, "") for n, s in self.status.items() if s == "no_data"},
        }
        invocation.update(end=_now(), summary=summary)
        self.manifest["status"] = dict(self.status)
        self._save()
        return summary


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
