"""The small-scale study driver (nli_cot.study): the engine's semantics on a local Dask cluster (trivial commands),
report numbers, and the whole graph on the tiny random Mistral (every condition, a learning-rate grid, resume,
deadline, a failing job)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_openai_server import FakeOpenAIServer

from nli_cot.core import metrics as M
from nli_cot.orchestration.study_engine import Engine, EngineConfig, Job, NoData, check_engine, run_job
from nli_cot.orchestration.study_graph import StudyGraph
from nli_cot.orchestration.study_report import seed_mean_ci

REPO = Path(__file__).resolve().parents[1]
SETS = ("esnli_test", "mnli_dev_matched", "rte_dev")


# ------------------------------------------------------------------------------------------- engine
# The engine's own semantics on its local Dask cluster with trivial commands (seconds, not a real stage).


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _engine(tmp_path: Path, jobs: list[Job], gpus: tuple[str, ...] = (), slots_per_gpu: int = 1, cpu_slots: int = 1,
            **kw) -> Engine:
    cfg = EngineConfig(gpus=list(gpus), slots_per_gpu=slots_per_gpu, cpu_slots=cpu_slots)
    return Engine(jobs, tmp_path / "jobs", tmp_path / "logs", tmp_path / "manifest.json", cfg, poll_s=0.05,
                  printer=kw.pop("printer", lambda s: None), python=sys.executable, **kw)


def _no_data() -> None:
    raise NoData("the SFT set is empty")


def test_engine_failure_skips_dependents_only_and_resume_skips_finished(tmp_path):
    out = tmp_path / "ran.txt"
    jobs = [
        Job("a", "cpu", (0,), argv=lambda: _py(f"open({str(out)!r}, 'a').write('a')")),
        Job("bad", "gpu", (1,), ["a"], argv=lambda: _py("import sys; sys.exit(4)")),
        Job("after_bad", "cpu", (2,), ["bad"], argv=lambda: _py("pass")),
        Job("c", "cpu", (3,), ["a"], argv=lambda: _py(f"open({str(out)!r}, 'a').write('c')")),
        Job("empty", "local", (4,), ["a"], fn=lambda: None, check=_no_data),
        Job("after_empty", "cpu", (5,), ["empty"], argv=lambda: _py("pass")),
        Job("local", "local", (6,), ["c"], fn=lambda: {"x": 1}),
    ]
    lines: list[str] = []
    s = _engine(tmp_path, jobs, printer=lines.append).run()
    assert s["counts"] == {"done": 3, "failed": 1, "skipped": 1, "no_data": 2}
    assert "exit code 4" in s["failed"]["bad"] and s["skipped"] == {"after_bad": "dependency bad failed"}
    assert any(x.startswith("[start] bad (gpu None") for x in lines) and any(x.startswith("[done] local (") for x in lines)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    rec = manifest["jobs"]["bad"]["attempts"][-1]
    assert rec["exit_code"] == 4 and rec["command"].endswith("sys.exit(4)") and rec["wall_s"] >= 0 and rec["pid"]
    assert json.loads((tmp_path / "jobs" / "local.json").read_text())["result"] == {"x": 1}
    # Second invocation: finished and no-data jobs are skipped, the failed one is tried again.
    s2 = _engine(tmp_path, jobs).run()
    assert s2["already_finished"] == 5 and out.read_text() == "ac"
    assert len(json.loads((tmp_path / "manifest.json").read_text())["jobs"]["bad"]["attempts"]) == 2


def test_engine_starts_ready_jobs_in_priority_order(tmp_path):
    """One slot: the order of starts is the graph's priority order among ready jobs, dependencies first."""
    order = tmp_path / "order.txt"

    def job(name: str, pri: tuple, deps: list[str] | None = None) -> Job:
        return Job(name, "gpu", pri, deps or [], argv=lambda: _py(f"open({str(order)!r}, 'a').write({name!r} + ' ')"))

    jobs = [job("s1_train", (1, 0)), job("s0_predict", (0, 5), ["s0_train"]), job("s0_train", (0, 1)),
            job("s0_teacher", (0, 0)), job("s1_predict", (1, 5), ["s1_train"])]
    s = _engine(tmp_path, jobs).run()
    assert s["counts"] == {"done": 5}
    # s0_predict becomes ready only after s0_train; by then s1_train (queued) was next in line
    assert order.read_text().split() == ["s0_teacher", "s0_train", "s1_train", "s0_predict", "s1_predict"]


def test_engine_deadline_stops_running_job_and_starts_nothing_new(tmp_path):
    jobs = [Job("slow", "gpu", (0,), argv=lambda: _py("import time; time.sleep(60)")),
            Job("next", "gpu", (1,), ["slow"], argv=lambda: _py("pass"))]
    t0 = time.time()
    s = _engine(tmp_path, jobs, stop_at=time.time() + 8, start_margin_s=0.5, kill_grace_s=2).run()
    assert time.time() - t0 < 25
    assert s["stopped_by_deadline"] and set(s["left"]) == {"slow", "next"}
    assert json.loads((tmp_path / "manifest.json").read_text())["jobs"]["slow"]["status"] == "interrupted"
    assert not (tmp_path / "jobs" / "slow.json").exists()  # no marker: the next invocation runs it again
    # A job picked up inside the start margin does not start, and leaves no attempt behind.
    late = run_job("late", _py("pass"), "gpu", str(tmp_path / "late.log"), {}, time.time() + 5, 10, 1)
    assert late == {"status": "not_started"} and not (tmp_path / "late.log").exists()


def test_engine_sigterm_of_the_driver_stops_the_running_job(tmp_path):
    """A driver stopped by SIGTERM (``timeout``, a job system) asks its tasks to stop through a Dask Event: the
    job's process group ends, the job is recorded as interrupted and gets no marker."""
    pid_file = tmp_path / "pid"
    driver = f"""
import json, sys
from pathlib import Path
from nli_cot.orchestration.study_engine import Engine, EngineConfig, Job
tmp = Path({str(tmp_path)!r})
job = Job("slow", "gpu", (0,), argv=lambda: [sys.executable, "-c",
          "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"])
e = Engine([job], tmp / "jobs", tmp / "logs", tmp / "manifest.json", EngineConfig(), kill_grace_s=2, poll_s=0.05)
print(json.dumps(e.run()), flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=REPO, stdout=subprocess.PIPE, text=True)
    end = time.time() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.time() < end and proc.poll() is None
        time.sleep(0.1)
    job_pid = int(pid_file.read_text())
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=40)
    assert time.time() - t0 < 30
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["left"] == ["slow"] and summary["stopped_by_deadline"]
    with pytest.raises(ProcessLookupError):
        os.kill(job_pid, 0)
    assert json.loads((tmp_path / "manifest.json").read_text())["jobs"]["slow"]["status"] == "interrupted"
    assert not (tmp_path / "jobs" / "slow.json").exists()


def test_engine_gives_each_gpu_job_its_own_card_and_cpu_jobs_none(tmp_path):
    code = "import os, time; time.sleep(1.0); print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES'])"
    jobs = [Job(f"g{i}", "gpu", (i,), argv=lambda: _py(code)) for i in range(4)]
    jobs.append(Job("c", "cpu", (9,), argv=lambda: _py(code)))
    s = _engine(tmp_path, jobs, gpus=("3", "5")).run()
    assert s["counts"] == {"done": 5}
    m = json.loads((tmp_path / "manifest.json").read_text())["jobs"]
    assert sorted(m[f"g{i}"]["gpu"] for i in range(4)) == ["3", "3", "5", "5"] and m["c"]["gpu"] is None
    spans = {}
    for i in range(4):  # one job per card at a time (slots_per_gpu=1)
        r = m[f"g{i}"]
        spans.setdefault(r["gpu"], []).append((r["start"], r["end"]))
    for card in spans.values():
        (a0, a1), (b0, b1) = sorted(card)
        assert a1 <= b0
    assert (tmp_path / "logs" / "g0.log").read_text().strip().splitlines()[-1] in ("CVD=3", "CVD=5")
    assert (tmp_path / "logs" / "c.log").read_text().strip().splitlines()[-1] == "CVD="


def test_engine_sends_jobs_to_an_existing_scheduler(tmp_path):
    """engine.address: the same tasks on a scheduler started elsewhere (here a LocalCluster standing in for
    dask-jobqueue's SLURMCluster), whose workers declare the resources; an unreachable one is one line."""
    import logging

    from distributed import LocalCluster

    out = tmp_path / "ran.txt"
    jobs = [Job("a", "gpu", (0,), argv=lambda: _py(f"open({str(out)!r}, 'a').write('a')")),
            Job("b", "cpu", (1,), ["a"], argv=lambda: _py(f"open({str(out)!r}, 'a').write('b')"))]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, resources={"GPU": 1, "CPU": 1},
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        cfg = EngineConfig(address=cluster.scheduler_address, connect_timeout_s=20)
        e = Engine(jobs, tmp_path / "jobs", tmp_path / "logs", tmp_path / "m.json", cfg, poll_s=0.05,
                   printer=lambda s: None)
        s = e.run()
        assert s["counts"] == {"done": 2} and out.read_text() == "ab"
        assert len(cluster.scheduler.workers) == 1  # the driver closed its client, not the cluster
    nowhere = Engine(jobs, tmp_path / "j2", tmp_path / "l2", tmp_path / "m2.json",
                     EngineConfig(address="tcp://127.0.0.1:9", connect_timeout_s=1), printer=lambda s: None)
    with pytest.raises(SystemExit, match="engine.address tcp://127.0.0.1:9: no scheduler"):
        nowhere.run()


def test_engine_config_is_checked_in_one_line_each():
    good = {"address": None, "gpus": None, "slots_per_gpu": 2, "cpu_slots": 1, "connect_timeout_s": 60,
            "dashboard_address": None}
    assert check_engine(good) == [] and check_engine({**good, "address": "tcp://scheduler:8786", "gpus": 0}) == []
    bad = check_engine({**good, "address": "scheduler:8786", "slots_per_gpu": 0, "cpu_slots": "2", "extra": 1})
    assert len(bad) == 4 and all("\n" not in b for b in bad)
    assert any("engine.address" in b for b in bad) and any("engine.extra: unknown key" in b for b in bad)
    r = subprocess.run([sys.executable, "-m", "nli_cot.study", "stage=plan", "engine.cpu_slots=0"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode != 0 and "error: engine.cpu_slots must be an integer >= 1, got 0" in r.stderr


# ------------------------------------------------------------------------------------------- job specs


def _cpu_graph(tmp_path: Path, *overrides: str) -> StudyGraph:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import nli_cot.orchestration.study_schema  # noqa: F401  (registers the study's schema)

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("study", overrides=["study=cpu", f"out_dir={tmp_path}", *overrides])
    cfg.study_name = "cpu"  # ${hydra:runtime.choices.study}: compose sets no HydraConfig
    return StudyGraph(OmegaConf.to_container(cfg, resolve=True), tmp_path)


def test_a_jobs_spec_is_its_composed_validated_config_and_a_bad_override_fails_at_graph_build(tmp_path):
    """Every stage job's config is composed (Hydra's compose API, the stage's schema) before any job starts; at
    submission the composed config is the job's spec, which run_job composes again and runs."""
    from nli_cot.orchestration.run_job import load_spec

    noop = {k: (lambda *a: None) for k in ("prep", "prep_cmd", "evaluate", "evaluate_cmd", "select_lr")}
    g = _cpu_graph(tmp_path, "base_model=tiny_mistral", "predict.max_new_tokens=7")
    jobs = {j.name: j for j in g.jobs(noop)}
    assert g.validate(list(jobs.values())) >= 5  # sft, train, predict, thoughts, reflect (one per condition)
    argv = jobs["predict:zero_shot"].argv()
    assert argv[1:3] == ["-m", "nli_cot.orchestration.run_job"] and argv[3] == str(tmp_path / "specs" /
                                                                                     "predict_zero_shot.yaml")
    spec = yaml.safe_load(Path(argv[3]).read_text())
    assert spec["stage"] == "predict" and spec["config"]["decoding"]["max_new_tokens"] == 7
    assert spec["config"]["model"]["name_or_path"] and spec["config"]["output"].endswith("zero_shot.jsonl")
    stage, overrides, cfg = load_spec(Path(argv[3]))
    assert stage == "predict" and cfg.decoding.max_new_tokens == 7 and overrides == spec["overrides"]
    assert jobs["predict:zero_shot"].equivalent().startswith("python -m nli_cot.predict model=tiny_mistral")
    # A mistake in the study config (an override every training run gets) fails before any job, in one line.
    bad = _cpu_graph(tmp_path, 'train.extra=["trainer.bogus=1"]')
    with pytest.raises(ValueError, match=r"^job train:\S+: train: trainer.bogus: unknown key in 'trainer'") as err:
        bad.validate(bad.jobs(noop))
    assert "\n" not in str(err.value)
    r = subprocess.run([sys.executable, "-m", "nli_cot.study", "study=cpu", "stage=plan", f"out_dir={tmp_path / 'p'}",
                        'predict.extra=["decoding.bogus=1"]'], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode != 0 and r.stderr.strip().startswith("error: job predict:"), r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "decoding.bogus" in r.stderr and not r.stdout.strip()


# ---------------------------------------------------------------------------------------------- report


def test_seed_mean_ci_matches_the_project_metrics():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 200)
    preds = rng.integers(-1, 2, (3, 200))  # -1 = unparsed
    r = seed_mean_ci(gold, preds, n_resamples=200, confidence=0.95, seed=0)
    as_label = [[None if p < 0 else int(p) for p in row] for row in preds]
    f1 = [M.macro_f1(gold.tolist(), row) for row in as_label]
    acc = [M.accuracy(gold.tolist(), row) for row in as_label]
    assert r["macro_f1"]["per_seed"] == pytest.approx(f1) and r["accuracy"]["per_seed"] == pytest.approx(acc)
    assert r["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    for key in ("accuracy", "macro_f1"):
        lo, hi = r[key]["ci"]
        assert lo <= r[key]["mean"] <= hi and hi - lo < 0.2
        hlo, hhi = r[key]["ci_seeds_and_examples"]
        assert hlo <= hhi


def test_equal_steps_gives_every_condition_the_human_sets_step_budget(tmp_path):
    """A 369-example teacher set once got 6 steps against 60: equal_steps gives every run the human set's steps."""
    graph = _cpu_graph(tmp_path, "conditions=[human,teacher_base_correct_only]", "train.batch_size=64",
                       "train.grad_accum=2", "train.max_epochs=2", "train.max_steps=-1", "train.equal_steps=true")
    cfg = graph.cfg
    (tmp_path / "sft" / "human").mkdir(parents=True)
    (tmp_path / "sft" / "human" / "stats.json").write_text(json.dumps({"train": {"count": 9350}}))
    assert graph.step_budget() == (-1, 2 * 74)  # ceil(9350 / 128) = 74 steps an epoch, 2 epochs, epochs unbounded
    cfg["train"]["max_steps"] = 100
    assert graph.step_budget() == (-1, 100)  # max_steps still caps it
    cfg["train"]["equal_steps"] = False
    assert graph.step_budget() == (2, 100)
    cfg["train"]["equal_steps"] = True
    local = {k: (lambda *a: None) for k in ("prep", "prep_cmd", "evaluate", "evaluate_cmd", "select_lr")}
    jobs = {j.name: j for j in graph.jobs(local)}
    assert "sft:human" in jobs["train:teacher_base_correct_only_s0"].deps  # the budget is read from that set


# ------------------------------------------------------------------------------------- the whole graph


def _study(tmp_path: Path, url: str, *extra: str, out: str = "study") -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "nli_cot.study", "study=cpu", f"out_dir={tmp_path / out}",
        f"results_dir={tmp_path / 'results'}", "report_name=r", "base_model=tiny_mistral",
        "model_tokenizer=mistral_common_v3", "prompt_name=card", "data.n_train=16",
        "data.n_test={esnli_test: 3, mnli_dev_matched: 3, rte_dev: 3}", "data.sft_dev_fraction=0.25",
        "train.batch_size=4", "train.max_steps=2", "train.equal_steps=true", "train.eval_every_n_steps=2", "predict.batch_size=16",
        "predict.max_new_tokens=6", "teachers.max_tokens=8", "teachers.batch_size=16", "evaluate.plots=false",
        "plots=false", "evaluate.n_resamples=100", "report.n_resamples=100",
        # Both teachers answer through the scripted server: a random tiny model writes no parseable thought, so
        # its SFT sets would be empty and the teacher conditions would stop at no_data (tested separately).
        "teachers.base.group=fake", "teachers.human.group=fake", "teachers.human.prompt=step3",
        f'teachers.base.extra=["teacher.base_url={url}"]', f'teachers.human.extra=["teacher.base_url={url}"]',
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=900)


@pytest.fixture()
def teacher_url(shared_data):  # the whole-graph runs read the real pairs (data_root's default, ../shared/data)
    with FakeOpenAIServer({}, default={"label": 1}) as server:
        yield server.url


@pytest.mark.slow
@pytest.mark.acceptance
def test_study_runs_every_condition_resumes_and_reports(tmp_path, teacher_url):
    grid = "train.lr_grid=[1e-3]"  # one value: the grid path (select_lr) without paying for a second run
    first = _study(tmp_path, teacher_url, grid)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    manifest = json.loads((tmp_path / "study" / "manifest.json").read_text())
    assert set(manifest["status"].values()) == {"done"}, manifest["status"]
    assert {"select_lr", "train:human_s0_lr1e-3", "thoughts:teacher_human"} <= set(
        manifest["status"])
    thoughts = manifest["jobs"]["thoughts:teacher_human"]
    assert "nli_cot.orchestration.run_job" in thoughts["command"] and "teacher.adapter=" in thoughts["equivalent"]
    spec = yaml.safe_load((tmp_path / "study" / "specs" / "thoughts_teacher_human.yaml").read_text())
    assert spec["stage"] == "thoughts" and "checkpoint-" in spec["config"]["teacher"]["adapter"]
    train = yaml.safe_load((tmp_path / "study" / "specs" / "train_label_only_s0.yaml").read_text())["config"]
    assert train["output_dir"] == str(tmp_path / "study" / "runs" / "label_only_s0") and train["run_name"] == "model"
    report = json.loads((tmp_path / "results" / "r.json").read_text())
    assert set(report["conditions"]) == {"zero_shot", "label_only", "human", "teacher_base_combined",
                                         "teacher_base_correct_only", "teacher_human_combined",
                                         "teacher_human_correct_only"}  # the base config's list
    assert report["lr_choice"]["lr"] == 1e-3 and report["lr_choice"]["table"][0]["best_dev_loss"] is not None
    for cond in report["conditions"]:
        for s in SETS:
            c = report["cells"][cond][s]
            assert c["n"] == 3 and len(c["accuracy"]["ci"]) == 2 and len(c["macro_f1"]["ci"]) == 2
    for s in SETS:
        tests = report["mcnemar"][s]["0"]
        for cond in report["conditions"]:
            refs = {t["vs"] for t in tests if t["condition"] == cond} | {t["condition"] for t in tests
                                                                        if t["vs"] == cond}
            assert refs >= ({"label_only", "zero_shot"} - {cond}), (s, cond)
        assert all(0 <= t["p_value"] <= 1 and t["p_holm"] >= t["p_value"] for t in tests)
    contrasts = report["contrasts"]["rte_dev"]["0"]  # the card's design pairs, a McNemar family of their own
    assert {(t["condition"], t["vs"]) for t in contrasts} == {
        ("teacher_base_combined", "teacher_base_correct_only"), ("teacher_human_combined", "teacher_human_correct_only"),
        ("teacher_human_combined", "human"), ("teacher_base_correct_only", "human")}
    assert all(t["n"] == 3 and t["p_holm"] >= t["p_value"] for t in contrasts)
    md = (tmp_path / "results" / "r.md").read_text()
    assert "## Honest reading" in md and "teacher_human_correct_only" in md and "p(LO)" in md
    assert "### Design contrasts" in md
    assert report["teachers"]["teacher_base"]["pairs"] == 16 and report["sft_sets"]["human"]["train"] > 0

    # Second invocation: everything is already finished, nothing runs again.
    second = _study(tmp_path, teacher_url, grid)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resume: {len(manifest['status'])} of {len(manifest['status'])} jobs already finished" in second.stdout
    again = json.loads((tmp_path / "study" / "manifest.json").read_text())
    assert all(len(again["jobs"][n]["attempts"]) == len(manifest["jobs"][n]["attempts"]) for n in manifest["jobs"])
    # Changed method settings in the same out_dir are refused.
    changed = _study(tmp_path, teacher_url, grid, "train.lr=0.5")
    assert changed.returncode != 0 and "other settings" in changed.stderr + changed.stdout


def test_study_with_no_time_left_starts_nothing_and_says_what_is_left(tmp_path, teacher_url):
    r = _study(tmp_path, teacher_url, "deadline_s=0", "report_reserve_s=0")
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert "LEFT (" in r.stdout and "predict:zero_shot" in r.stdout and "re-run the same command" in r.stdout
    manifest = json.loads((tmp_path / "study" / "manifest.json").read_text())
    assert manifest["jobs"] == {} and not list((tmp_path / "study" / "jobs").glob("*.json"))
    assert (tmp_path / "results" / "r.md").is_file()  # the (empty) report is still written


@pytest.mark.slow
def test_study_failing_job_skips_its_dependents_and_the_rest_continue(tmp_path, teacher_url):
    r = _study(tmp_path, teacher_url, "conditions=[zero_shot,label_only]", "fail_jobs=[sft:human]")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    status = json.loads((tmp_path / "study" / "manifest.json").read_text())["status"]
    assert status["sft:human"] == "failed"
    assert status["train:label_only_s0"] == status["predict:label_only_s0"] == "skipped"
    assert status["predict:zero_shot"] == status["evaluate:zero_shot"] == "done"
    report = json.loads((tmp_path / "results" / "r.json").read_text())
    assert set(report["cells"]) == {"zero_shot"} and "FAILED  sft:human" in r.stdout
    log = (tmp_path / "study" / "study.log").read_text()  # the progress lines and the summary, in the log file too
    assert "[start] predict:zero_shot" in log and "[failed] sft:human" in log and "FAILED  sft:human" in log
