"""The sweep report on hand-made run dirs: every number traced back to the job's own files."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from nli_cot.evaluation.report import collect, find_run_dirs, main, read_metrics_csv, write_report

RUN = "Mistral_Thinking_Abl1"
COMMON = ["+experiment=abl1", "model=tiny_mistral"]


def write_run(sweep: Path, job: str, overrides: list[str], status: str = "finished",
              evals: dict[int, float] | None = None, train: dict[int, float] | None = None,
              tokens: list[float] | None = None, wall: float | None = 12.5, best: str | None = None,
              extra_cols: dict[str, dict[int, float]] | None = None, config: str | None = None) -> Path:
    run = sweep / job / RUN
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if config:
        (run / ".hydra" / "config.yaml").write_text(config)
    body = {"status": status, "overrides": overrides}
    if status == "finished":
        body["wall_s"] = wall
    if status == "failed":
        body["error"] = "lora.r must be > 0, got 0"
    (run / "status.json").write_text(json.dumps(body))
    cols = {"eval/loss": evals or {}, "train/loss": train or {},
            "perf/real_tokens_per_s": dict(enumerate(tokens or [])), **(extra_cols or {})}
    if any(cols.values()):
        (run / "logs").mkdir()
        with (run / "logs" / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", "step", *cols])
            writer.writeheader()
            for name, series in cols.items():
                for step, value in series.items():
                    writer.writerow({"epoch": 0, "step": step, name: value})
    if best:
        for step in (2, 4):
            folder = run / f"checkpoint-{step}"
            folder.mkdir()
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                (folder / name).write_text("{}")
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "best_checkpoint": best}))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    write_run(tmp_path, "0", [*COMMON, "lora.r=4", "optimizer.lr=0.001"], evals={1: 10.5, 3: 10.2},
              train={0: 10.9, 1: 10.6, 2: 10.4, 3: 10.3}, tokens=[100.0, 300.0, 200.0], best="checkpoint-4")
    write_run(tmp_path, "1", [*COMMON, "lora.r=8", "optimizer.lr=0.001"], evals={1: 10.1, 3: 10.4},
              tokens=[50.0, 70.0], best="checkpoint-2")
    write_run(tmp_path, "2", [*COMMON, "lora.r=0", "optimizer.lr=0.003"], status="failed")
    write_run(tmp_path, "10", [*COMMON, "lora.r=8", "optimizer.lr=0.003"], evals={1: 10.3}, wall=3.0)
    return tmp_path


def test_rows_match_each_jobs_files(sweep: Path) -> None:
    rows = collect(sweep)
    assert [r.job for r in rows] == ["0/" + RUN, "1/" + RUN, "2/" + RUN, "10/" + RUN]  # numeric job order
    for r in rows:
        run = Path(r.run_dir)
        status = json.loads((run / "status.json").read_text())
        assert r.overrides == status["overrides"]
        assert r.status == status["status"]
        assert r.wall_s == status.get("wall_s")
        series = read_metrics_csv(run / "logs" / "metrics.csv")
        evals = series.get("eval/loss", {})
        assert r.best_eval_loss == (min(evals.values()) if evals else None)
        assert r.final_eval_loss == (evals[max(evals)] if evals else None)
        tokens = list(series.get("perf/real_tokens_per_s", {}).values())
        assert r.tokens_per_s == (statistics.median(tokens) if tokens else None)
    assert rows[0].best_checkpoint == str(sweep / "0" / RUN / "checkpoint-4")
    assert rows[1].best_eval_loss == 10.1 and rows[1].final_eval_loss == 10.4
    assert rows[2].error == "lora.r must be > 0, got 0"
    assert rows[0].curves["train/loss"][0] == (0, 10.9)


def test_markdown_table_and_plots(sweep: Path) -> None:
    report = write_report(sweep)
    text = report.read_text()
    assert "4 jobs: 1 failed, 3 finished." in text
    assert "Overrides common to every job: `+experiment=abl1` `model=tiny_mistral`" in text
    header = next(line for line in text.splitlines() if line.startswith("| job"))
    assert "| lora.r | optimizer.lr |" in header
    row0 = next(line for line in text.splitlines() if line.startswith(f"| 0/{RUN} "))
    assert "| finished | 4 | 0.001 | 10.2000 | 10.2000 |" in row0
    assert f"0/{RUN}/checkpoint-4" in row0 and "| 200 |" in row0
    failed = next(line for line in text.splitlines() if line.startswith(f"| 2/{RUN} "))
    assert "| failed |" in failed and "lora.r must be > 0, got 0" in failed
    assert f"Best job: `1/{RUN}` with eval/loss = 10.1000" in text
    out = report.parent
    for name in ("loss_curves.png", "objective_vs_lora.r.png", "objective_vs_optimizer.lr.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"]({name})" in text
    rows = json.loads((out / "report.json").read_text())
    assert [r["status"] for r in rows] == ["finished", "finished", "failed", "finished"]


def test_accuracy_objective_follows_the_monitored_metric(tmp_path: Path) -> None:
    config = "trainer:\n  early_stopping_metric: eval/accuracy\n  early_stopping_mode: max\n"
    for job, accs in (("0", {1: 0.5, 3: 0.25}), ("1", {1: 0.75, 3: 0.5})):
        write_run(tmp_path, job, [*COMMON, f"lora.r={4 * (int(job) + 1)}"], evals={1: 10.0, 3: 9.0},
                  extra_cols={"eval/accuracy": accs}, config=config)
    rows = collect(tmp_path)
    assert [r.objective for r in rows] == [0.5, 0.75]  # best = max for accuracy
    assert [r.eval_accuracy for r in rows] == [0.25, 0.5]  # final
    text = write_report(tmp_path, plots=False).read_text()
    assert "best eval/accuracy" in text and f"Best job: `1/{RUN}` with eval/accuracy = 0.7500" in text


def test_resumed_log_rows_replace_earlier_ones(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,eval/loss,step\n0,3.0,1\n0,2.0,3\n0,2.5,3\n")
    assert read_metrics_csv(path) == {"eval/loss": {1: 3.0, 3: 2.5}}


def test_overrides_fall_back_to_hydra_file_and_runs_without_logs(tmp_path: Path) -> None:
    run = write_run(tmp_path, "0", [*COMMON, "lora.r=4"], status="running")
    (run / "status.json").write_text(json.dumps({"status": "running"}))  # no overrides recorded
    (run / "checkpoint-2").mkdir()  # never looked into: a run dir holds no other runs
    rows = collect(tmp_path)
    assert rows[0].overrides == [*COMMON, "lora.r=4"]
    assert rows[0].status == "running" and rows[0].best_eval_loss is None
    assert find_run_dirs(tmp_path) == [run]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main([str(tmp_path)]) == 2
    assert "no run dirs found" in capsys.readouterr().err
