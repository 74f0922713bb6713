"""Sweeps end to end on the tiny model: parallel and submitit launchers, a failing job, re-run skipping, and an
Optuna search killed after 3 trials that resumes to 6. Every report number is checked against the job's own files."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_inprocess, run_module

from nli_cot.core.sweep import already_finished, objective, split_override
from nli_cot.evaluation.report import collect, write_report

RUN = "Mistral_Thinking_Abl1"
TINY = ["+experiment=abl1", "model=tiny_mistral", "dataset=sample", "logger=csv", "optimizer=adamw",
        "trainer.max_steps=2", "trainer.save_steps=2", "trainer.eval_every_n_steps=1",
        "trainer.per_device_batch_size=2", "trainer.grad_accum=1", "trainer.eval_batch_size=2",
        "trainer.log_every_n_steps=1", "dataset.max_train_examples=8", "dataset.max_eval_examples=2"]
GRID = ["lora.r=4,8", "optimizer.lr=1e-3,3e-3"]


@pytest.fixture(autouse=True)
def one_thread_per_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # Parallel jobs on a 2-core box: one torch thread each, or they fight over the cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ------------------------------------------------------------------------------------------------ unit


def test_already_finished_matches_overrides_but_not_resume(tmp_path: Path) -> None:
    status = {"status": "finished", "overrides": ["lora.r=4", "+experiment=abl1"], "metrics": {"eval/loss": 2.0},
              "best": {"metric": "eval/loss", "value": 1.5, "checkpoint": "checkpoint-2"}}
    (tmp_path / "status.json").write_text(json.dumps(status))
    assert already_finished(tmp_path, ["+experiment=abl1", "lora.r=4", "resume=auto"]) == status
    assert already_finished(tmp_path, ["+experiment=abl1", "lora.r=8"]) is None
    assert objective(status, "eval/loss") == 1.5  # the best checkpoint's value, not the last one
    assert objective(status, "train/loss") is None
    (tmp_path / "status.json").write_text(json.dumps({**status, "status": "running"}))
    assert already_finished(tmp_path, ["+experiment=abl1", "lora.r=4"]) is None


def test_reaping_interrupted_trials(tmp_path: Path) -> None:
    import optuna

    from nli_cot.orchestration.optuna_sweeper import counted_trials, reap_interrupted

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for value in (1.0, 2.0):
        trial = study.ask()
        study.tell(trial, value)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # a config that failed: it counts
    running = study.ask()  # left RUNNING by a killed sweeper
    job = tmp_path / str(running.number) / RUN
    job.mkdir(parents=True)
    (job / "status.json").write_text(json.dumps({"status": "running"}))
    assert reap_interrupted(study, tmp_path) == [running.number]
    assert study.trials[running.number].state == optuna.trial.TrialState.FAIL
    assert counted_trials(study) == 3
    assert json.loads((job / "status.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize(("mode", "direction"), [("min", "minimize"), ("max", "maximize")])
def test_optuna_preset_follows_the_monitored_metric(mode: str, direction: str) -> None:
    from conftest import CONF
    from hydra import compose, initialize_config_dir

    from nli_cot.core.config import register_configs

    register_configs()
    overrides = ["+experiment=abl1", "+sweep=optuna", f"trainer.early_stopping_mode={mode}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.nli_cot_sweepers.resumable_optuna.ResumableOptunaSweeper"
    assert sweeper.direction == direction
    assert sweeper.storage == "sqlite:///multirun/search/abl1_search/optuna.db"
    assert set(sweeper.params) == {"optimizer.lr", "lora.r", "lora.alpha", "lora.dropout", "optimizer.warmup_ratio"}


# ------------------------------------------------------------------------------------------------ helpers


def sweep(args: list[str], sweep_dir: Path, inprocess: bool = False) -> subprocess.CompletedProcess:
    """`python -m nli_cot.train -m ...`: a fresh interpreter where a launcher starts its own workers; Hydra's basic
    launcher runs its jobs in the calling process, so there ``inprocess`` runs the same `__main__` here."""
    run = run_inprocess if inprocess else run_module
    proc = run("nli_cot.train", ["-m", *TINY, *args, f"hydra.sweep.dir={sweep_dir}"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def own_logs(run_dir: Path) -> tuple[list[float], list[float]]:
    """(eval losses, tokens/s values) read straight from the job's CSV log."""
    with (run_dir / "logs" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    evals = [float(r["eval/loss"]) for r in rows if r.get("eval/loss")]
    tokens = [float(r["perf/real_tokens_per_s"]) for r in rows if r.get("perf/real_tokens_per_s")]
    return evals, tokens


def check_report(sweep_dir: Path, expected: dict[str, dict[str, float]], failed: dict[str, str] | None = None) -> str:
    """The report lists every job with its own overrides, and its numbers are the job's own."""
    text = write_report(sweep_dir).read_text()
    rows = {r.job: r for r in collect(sweep_dir)}
    assert set(rows) == {f"{n}/{RUN}" for n in [*expected, *(failed or {})]}
    for num, params in expected.items():
        row = rows[f"{num}/{RUN}"]
        run_dir = sweep_dir / num / RUN
        assert row.status == "finished"
        got = dict(split_override(o) for o in row.overrides)
        assert {k: float(got[k]) for k in params} == params
        evals, tokens = own_logs(run_dir)
        status = json.loads((run_dir / "status.json").read_text())
        assert row.best_eval_loss == min(evals) and row.final_eval_loss == evals[-1]
        assert row.tokens_per_s == statistics.median(tokens)
        assert row.wall_s == status["wall_s"]
        assert row.objective == status["best"]["value"] == min(evals)
        assert row.best_checkpoint == str(run_dir / status["best"]["checkpoint"])
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {num}/{RUN} |"))
        assert f"| {min(evals):.4f} | {evals[-1]:.4f} |" in line
        for key, value in params.items():
            assert f"{key}={got[key]}" in status["overrides"]  # the job ran with what the row says
            assert float(value) == float(got[key])
    for num, error in (failed or {}).items():
        row = rows[f"{num}/{RUN}"]
        assert row.status == "failed" and error in row.error
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {num}/{RUN} |"))
        assert "| failed |" in line and error in line
    return text


GRID_JOBS = {"0": {"lora.r": 4, "optimizer.lr": 1e-3}, "1": {"lora.r": 4, "optimizer.lr": 3e-3},
             "2": {"lora.r": 8, "optimizer.lr": 1e-3}, "3": {"lora.r": 8, "optimizer.lr": 3e-3}}


# ------------------------------------------------------------------------------------------------ launchers


@pytest.mark.slow
def test_local_parallel_four_jobs_and_rerun_skips_them(tmp_path: Path) -> None:
    sweep([*GRID, "hydra/launcher=local_parallel"], tmp_path)
    text = check_report(tmp_path, GRID_JOBS)
    assert "4 jobs: 4 finished." in text and (tmp_path / "report" / "loss_curves.png").is_file()
    before = {n: (tmp_path / n / RUN / "status.json").read_text() for n in GRID_JOBS}
    # The same sweep again (same dir), with resume=auto as one would after a crash: nothing is retrained.
    sweep([*GRID, "hydra/launcher=local_parallel", "resume=auto"], tmp_path)
    assert {n: (tmp_path / n / RUN / "status.json").read_text() for n in GRID_JOBS} == before
    logs = "".join((tmp_path / n / "train.log").read_text() for n in GRID_JOBS)
    assert logs.count("already finished with these overrides") == 4


@pytest.mark.slow
def test_submitit_local_jobs(tmp_path: Path) -> None:
    """Each job in its own submitit process, the report's numbers each job's own. Two jobs: the 2x2 grid's expansion
    is Hydra's sweeper, not the launcher's, and is checked with four jobs by the local_parallel test above."""
    sweep(["lora.r=4,8", "optimizer.lr=1e-3", "hydra/launcher=local_submitit"], tmp_path)
    assert (tmp_path / ".submitit").is_dir()
    check_report(tmp_path, {"0": {"lora.r": 4, "optimizer.lr": 1e-3}, "1": {"lora.r": 8, "optimizer.lr": 1e-3}})


@pytest.mark.slow
def test_a_failing_job_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    """Jobs are separate (each its own dir, its own adapter) and a failing one spares the others (was also
    test_train_e2e.py::test_multirun_jobs_are_separate_and_a_failing_job_spares_the_others)."""
    proc = sweep(["lora.r=4,0,8"], tmp_path, inprocess=True)  # lora.r=0 fails validation in job 1 only
    assert proc.returncode == 0
    statuses = [json.loads((tmp_path / n / RUN / "status.json").read_text())["status"] for n in ("0", "1", "2")]
    assert statuses == ["finished", "failed", "finished"]
    for job, r in (("0", 4), ("2", 8)):
        assert json.loads((tmp_path / job / RUN / "checkpoint-2" / "adapter_config.json").read_text())["r"] == r
    check_report(tmp_path, {"0": {"lora.r": 4}, "2": {"lora.r": 8}}, failed={"1": "lora.r must be > 0, got 0"})


# ------------------------------------------------------------------------------------------------ optuna


def _study(sweep_dir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="abl1_search", storage=f"sqlite:///{sweep_dir}/optuna.db")


def _complete(sweep_dir: Path) -> int:
    import optuna

    try:
        return len(_study(sweep_dir).get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    except Exception:  # not created yet, or locked mid-write
        return 0


@pytest.mark.slow
def test_optuna_search_killed_after_three_resumes_to_six(tmp_path: Path) -> None:
    import optuna

    from nli_cot.orchestration.optuna_sweeper import counted_trials

    args = ["-m", *TINY, "+sweep=optuna", "hydra.sweeper.n_trials=6", f"hydra.sweep.dir={tmp_path}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    proc = subprocess.Popen([sys.executable, "-m", "nli_cot.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 900
    try:
        while _complete(tmp_path) < 3:
            assert proc.poll() is None, "the search ended before 3 trials"
            assert time.monotonic() < deadline, "3 trials did not complete in time"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = _study(tmp_path)
    assert counted_trials(first) == 3 < 6

    resumed = run_inprocess("nli_cot.train", args)  # the kill is the process boundary; the resume need not be
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    study = _study(tmp_path)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 6 and counted_trials(study) == 6
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(study.trials) == 6 + len(interrupted) and len(interrupted) <= 1
    assert len({t.params["optimizer.lr"] for t in complete}) == 6  # the resumed run proposed new points
    for trial in complete:  # job dir n is trial n, and it ran the trial's parameters
        run_dir = tmp_path / str(trial.number) / RUN
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "finished" and f"lora.r={trial.params['lora.r']}" in status["overrides"]
        assert trial.value == pytest.approx(min(own_logs(run_dir)[0]))
    rows = collect(tmp_path)
    assert sum(r.status == "finished" for r in rows) == 6
    assert all(r.status == "interrupted" for r in rows if r.status != "finished")
