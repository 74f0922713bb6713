"""One report per sweep, from its run dirs alone: ``python -m nli_cot.report <multirun dir> [--out DIR]``.

Features
- Finds every run dir under the sweep dir (a dir holding ``status.json`` or ``.hydra/overrides.yaml``; the
  layout ``<sweep>/<job num>/<run_name>/`` of a multirun, or ``<dir>/<run_name>/`` of single runs).
- ``report.md``: overrides common to all jobs once, then one row per job: the swept overrides, status (finished /
  failed / running / interrupted, with the error), best and final eval loss, eval accuracy (final, when
  generation eval ran), the objective (the monitored metric at its best), median real tokens/s, peak device
  memory, wall time, best checkpoint path. ``report.json``: the same rows, machine-readable.
- PNG plots: ``loss_curves.png`` (eval loss per step of every job, train loss dashed) and
  ``objective_vs_<param>.png`` for each swept parameter (log x-axis when values span >= 20x).
- Numbers come from each job's own ``logs/metrics.csv`` (Lightning CSVLogger, kept for every logger choice),
  ``status.json`` and the newest ``checkpoint-*/trainer_state.json``: no W&B account needed.

Limits
- Tokens/s is the median of the steps logged (``trainer.log_every_n_steps``); a run too short to log a step
  falls back to the last value in ``status.json``. Peak memory is logged on CUDA only (shown as "-" on CPU).
- A job Hydra could not even compose (e.g. ``lora.r=abc``) has no run dir and so no row; Hydra stops the sweep
  there. Value errors caught by validation (``lora.r=0``) are per-job failures and do get a row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nli_cot.core.records import read_metrics_csv
from nli_cot.core.sweep import STATUS_FILE, read_status, split_override

_SKIP_DIRS = {"logs", "wandb", "tensorboard", "report"}
_MAX_DEPTH = 3  # <sweep>/<job>/<run_name>
MISSING = "-"


class ReportError(ValueError):
    """A user-facing problem with the report's input (one line)."""


@dataclass
class JobRow:
    job: str  # run dir relative to the sweep dir
    run_dir: str
    overrides: list[str]
    status: str
    error: str | None = None
    best_eval_loss: float | None = None
    final_eval_loss: float | None = None
    eval_accuracy: float | None = None  # final eval/accuracy (generation eval)
    objective_metric: str | None = None
    objective_mode: str = "min"
    objective: float | None = None
    tokens_per_s: float | None = None
    peak_mem_gib: float | None = None
    wall_s: float | None = None
    best_checkpoint: str | None = None
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Run dirs under ``sweep_dir`` (itself included), skipping hidden, checkpoint and log folders."""
    found = []
    base_depth = len(sweep_dir.parts)
    for root, dirs, files in os.walk(sweep_dir):
        path = Path(root)
        if STATUS_FILE in files or (path / ".hydra" / "overrides.yaml").is_file():
            found.append(path)
            dirs[:] = []  # a run dir holds no other runs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.startswith("checkpoint-")
                         and d not in _SKIP_DIRS and len(path.parts) - base_depth < _MAX_DEPTH)
    return sorted(found, key=lambda p: _sort_key(p.relative_to(sweep_dir)))


def _sort_key(rel: Path) -> tuple:
    # Job dirs are numbers: 10 sorts after 9, not after 1.
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in rel.parts)


def _load_yaml_list(path: Path) -> list[str]:
    from omegaconf import OmegaConf

    try:
        return [str(x) for x in OmegaConf.load(path)]
    except Exception:  # a missing or torn file: the row just has no overrides
        return []


def _job_config(run_dir: Path) -> Any:
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    try:
        return OmegaConf.load(path) if path.is_file() else None
    except Exception:
        return None


def _latest_trainer_state(run_dir: Path) -> dict[str, Any]:
    from nli_cot.models.checkpoints import TRAINER_STATE, list_checkpoints

    folders = list_checkpoints(run_dir)
    if not folders:
        return {}
    try:
        return json.loads((folders[-1] / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return {}


def _monitor(run_dir: Path, status: dict[str, Any]) -> tuple[str, str]:
    """(metric, mode) the job monitored for early stopping and its best checkpoint."""
    cfg = _job_config(run_dir)
    metric = (status.get("best") or {}).get("metric")
    mode = None
    if cfg is not None:
        from omegaconf import OmegaConf

        metric = metric or OmegaConf.select(cfg, "trainer.early_stopping_metric", default=None)
        mode = OmegaConf.select(cfg, "trainer.early_stopping_mode", default=None)
    metric = metric or "eval/loss"
    return metric, mode or ("min" if "loss" in metric else "max")


def _best(values: dict[int, float], mode: str) -> float | None:
    clean = [v for v in values.values() if not math.isnan(v)]
    if not clean:
        return None
    return min(clean) if mode == "min" else max(clean)


def _final(values: dict[int, float]) -> float | None:
    return values[max(values)] if values else None


def read_job(sweep_dir: Path, run_dir: Path, objective: str | None = None, mode: str | None = None) -> JobRow:
    """Everything the report says about one run, from its files."""
    status = read_status(run_dir) or {}
    overrides = status.get("overrides")
    if overrides is None:
        overrides = _load_yaml_list(run_dir / ".hydra" / "overrides.yaml")
    series = read_metrics_csv(run_dir / "logs" / "metrics.csv")
    status_metrics = status.get("metrics") or {}
    monitor, monitor_mode = _monitor(run_dir, status)
    metric = objective or monitor
    metric_mode = mode or (monitor_mode if metric == monitor else ("min" if "loss" in metric else "max"))

    tokens = list(series.get("perf/real_tokens_per_s", {}).values())
    peak = series.get("perf/peak_mem_gib", {})
    state = _latest_trainer_state(run_dir)
    best_ckpt = state.get("best_checkpoint") or (status.get("best") or {}).get("checkpoint")
    return JobRow(
        job=str(run_dir.relative_to(sweep_dir)) if run_dir != sweep_dir else run_dir.name,
        run_dir=str(run_dir),
        overrides=list(overrides),
        status=status.get("status", "unknown"),
        error=status.get("error"),
        best_eval_loss=_best(series.get("eval/loss", {}), "min"),
        final_eval_loss=_final(series.get("eval/loss", {})),
        eval_accuracy=_final(series.get("eval/accuracy", {})),
        objective_metric=metric,
        objective_mode=metric_mode,
        objective=_best(series.get(metric, {}), metric_mode),
        tokens_per_s=statistics.median(tokens) if tokens else status_metrics.get("perf/real_tokens_per_s"),
        peak_mem_gib=max(peak.values()) if peak else status_metrics.get("perf/peak_mem_gib"),
        wall_s=status.get("wall_s"),
        best_checkpoint=str(run_dir / best_ckpt) if best_ckpt else None,
        curves={k: sorted(series[k].items()) for k in ("eval/loss", "train/loss") if k in series},
    )


def collect(sweep_dir: Path, objective: str | None = None, mode: str | None = None) -> list[JobRow]:
    """One row per run dir under ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such directory (pass a multirun dir such as multirun/<date>)")
    runs = find_run_dirs(sweep_dir)
    if not runs:
        raise ReportError(f"{sweep_dir}: no run dirs found (none holds status.json or .hydra/overrides.yaml)")
    return [read_job(sweep_dir, run, objective, mode) for run in runs]


# ---------------------------------------------------------------------------------------------- swept params


def swept_params(rows: list[JobRow]) -> tuple[list[str], list[str]]:
    """(keys whose value differs between jobs, overrides shared by every job)."""
    per_job = [dict(split_override(o) for o in r.overrides) for r in rows]
    keys: list[str] = []
    for d in per_job:
        keys.extend(k for k in d if k not in keys)
    swept = [k for k in keys if len({d.get(k) for d in per_job}) > 1]
    common = [o for o in rows[0].overrides if split_override(o)[0] not in swept] if rows else []
    return swept, common


def param_value(row: JobRow, key: str) -> str | None:
    return dict(split_override(o) for o in row.overrides).get(key)


# ---------------------------------------------------------------------------------------------- markdown


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return MISSING
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _relative(path: str | None, base: Path) -> str:
    if not path:
        return MISSING
    try:
        return str(Path(path).relative_to(base))
    except ValueError:
        return path


def best_row(rows: list[JobRow], mode: str) -> JobRow | None:
    scored = [r for r in rows if r.objective is not None and not math.isnan(r.objective)]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda r: r.objective)


def render_markdown(sweep_dir: Path, rows: list[JobRow], plots: list[str], mode: str) -> str:
    swept, common = swept_params(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    objective = rows[0].objective_metric if rows else "eval/loss"
    lines = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
        f"Objective: best `{objective}` over each run ({mode}).",
    ]
    if common:
        lines.append("Overrides common to every job: " + " ".join(f"`{o}`" for o in common))
    best = best_row(rows, mode)
    if best:
        lines.append(f"Best job: `{best.job}` with {objective} = {fmt(best.objective)}"
                     + (f" ({' '.join(f'{k}={param_value(best, k)}' for k in swept)})" if swept else "") + ".")
    extra = objective != "eval/loss"  # else the objective column would repeat "best eval loss"
    header = ["job", "status", *swept, "best eval loss", "final eval loss", "eval acc",
              *([f"best {objective}"] if extra else []), "tokens/s", "peak mem GiB", "train wall",
              "best checkpoint", "note"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        note = (r.error or "").splitlines()[0][:120] if r.error else ""
        cells = [r.job, r.status, *[param_value(r, k) or MISSING for k in swept],
                 fmt(r.best_eval_loss), fmt(r.final_eval_loss), fmt(r.eval_accuracy),
                 *([fmt(r.objective)] if extra else []), fmt(r.tokens_per_s, 0), fmt(r.peak_mem_gib, 2),
                 fmt_seconds(r.wall_s), _relative(r.best_checkpoint, sweep_dir), note]
        lines.append("| " + " | ".join(_cell(str(c)) for c in cells) + " |")
    results = sweep_dir / "optimization_results.yaml"
    if results.is_file():
        lines += ["", "Optuna's summary (`optimization_results.yaml`):", "```yaml", results.read_text().strip(), "```"]
    if plots:
        lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plots


def _numeric(values: list[str | None]) -> list[float] | None:
    try:
        return [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def plot_loss_curves(rows: list[JobRow], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r.curves for r in rows):
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        for key, style in (("eval/loss", "-o"), ("train/loss", "--")):
            points = r.curves.get(key)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, color=color, markersize=3, label=f"{r.job} {key}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss per job (eval solid, train dashed)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_objective_vs(rows: list[JobRow], key: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(param_value(r, key), r.objective) for r in rows if r.objective is not None]
    if not points:
        return None
    labels = [p[0] for p in points]
    ys = [p[1] for p in points]
    xs = _numeric(labels)
    fig, ax = plt.subplots(figsize=(6, 4))
    if xs is not None:
        ax.scatter(xs, ys)
        positive = [x for x in xs if x > 0]
        if len(positive) == len(xs) and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
    else:
        categories = sorted(set(map(str, labels)))
        ax.scatter([categories.index(str(v)) for v in labels], ys)
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(key)
    ax.set_ylabel(f"best {rows[0].objective_metric}")
    ax.set_title(f"{rows[0].objective_metric} vs {key}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


# ---------------------------------------------------------------------------------------------- entry point


def write_report(sweep_dir: Path, out_dir: Path | None = None, objective: str | None = None,
                 mode: str | None = None, plots: bool = True) -> Path:
    """Write report.md, report.json and the plots; returns the path of report.md."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir, objective, mode)
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    if plots:
        swept, _ = swept_params(rows)
        candidates = [plot_loss_curves(rows, out_dir / "loss_curves.png")]
        candidates += [plot_objective_vs(rows, k, out_dir / f"objective_vs_{_safe_name(k)}.png") for k in swept]
        made = [str(p) for p in candidates if p is not None]
    report = out_dir / "report.md"
    report.write_text(render_markdown(sweep_dir, rows, made, rows[0].objective_mode))
    payload = [{k: v for k, v in asdict(r).items() if k != "curves"} for r in rows]
    (out_dir / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nli_cot.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir (multirun/<date>) or a dir of run dirs")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <sweep_dir>/report)")
    parser.add_argument("--objective", default=None,
                        help="metric to rank and plot (default: each job's trainer.early_stopping_metric)")
    parser.add_argument("--mode", choices=("min", "max"), default=None, help="direction of --objective")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.out, args.objective, args.mode, plots=not args.no_plots)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.read_text())
    print(f"written: {report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
