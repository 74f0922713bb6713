"""What a sweep job needs to know about itself: its overrides, whether it already ran, what it returns.

Features
- ``job_overrides``: the job's own command-line overrides (Hydra's ``overrides.task``), recorded in
  ``status.json`` so a re-run of the same sweep can recognise it.
- ``already_finished``: a multirun job whose run dir holds a ``finished`` status with the same overrides is
  skipped (re-running a sweep into the same ``hydra.sweep.dir`` resumes it; ``resume=...`` is ignored in the
  comparison, so ``resume=auto`` can be added to continue the interrupted jobs while the finished ones are skipped).
- ``objective``: the value a sweeper optimises: the best value of the monitored metric over the run (the
  checkpoint one would keep), else its last value.
- ``job_tag``: job number and sweep name, to name W&B runs of a sweep apart and group them.

Limits
- Only overrides identify a job: editing a YAML file between two runs of the same sweep is not noticed, so use a
  new sweep dir after changing configs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
# Overrides that change how a job starts, not what it computes.
_NEUTRAL_KEYS = ("resume",)


def job_overrides() -> list[str]:
    """This job's task overrides as typed on the command line (empty outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra context (called from plain Python)
        return []


def job_tag() -> tuple[str | None, str | None]:
    """(job number, sweep dir name) inside a multirun job, (None, None) otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None, None
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    return str(hc.job.num), Path(hc.sweep.dir).name


def split_override(override: str) -> tuple[str, str]:
    """``+a.b=v`` -> (``a.b``, ``v``): the key without Hydra's add/delete prefix, and the value as typed."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def comparable(overrides: list[str] | None) -> list[str]:
    """Overrides in a canonical order, without the ones that do not change a job's result."""
    return sorted(o for o in overrides or [] if split_override(o)[0] not in _NEUTRAL_KEYS)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's status.json, or None when missing or unreadable (a run killed before writing it)."""
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def already_finished(run_dir: Path, overrides: list[str]) -> dict[str, Any] | None:
    """The status of a finished run of this very job in ``run_dir``, or None when it has to run."""
    status = read_status(run_dir)
    if not status or status.get("status") != "finished" or "overrides" not in status:
        return None
    return status if comparable(status["overrides"]) == comparable(overrides) else None


def objective(summary: dict[str, Any], metric: str) -> float | None:
    """Best value of ``metric`` over the run when it was monitored, else its final value; None if never logged."""
    best = summary.get("best") or {}
    if best.get("metric") == metric and best.get("value") is not None:
        return float(best["value"])
    value = (summary.get("metrics") or {}).get(metric)
    return None if value is None else float(value)
