"""The review design of the study (conf/study/review.yaml): the new conditions in the job graph, the data leak
checks, the lr choice per family on a decoded dev metric, and the paired contrasts / targets of the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nli_cot.core import stats
from nli_cot.orchestration.study import LocalJobs, main_run
from nli_cot.orchestration.study_data import (
    check_data_sets,
    drop_leaks,
    leaks,
    norm_sentence,
    prepare,
    sentences_of,
)
from nli_cot.orchestration.study_graph import StudyGraph
from nli_cot.orchestration.study_report import paired_contrasts, targets

REPO = Path(__file__).resolve().parents[1]
STUDY_DATA = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "study.yaml").data)  # conf/study.yaml data:
TEST_SETS, TRAIN_SOURCE = STUDY_DATA["test_sets"], STUDY_DATA["train_source"]


def _review_cfg(tmp_path: Path, *overrides: str) -> dict:
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("study", overrides=["study=review", f"out_dir={tmp_path}", *overrides])
    cfg.study_name = "review"  # ${hydra:runtime.choices.study}: compose sets no HydraConfig
    return OmegaConf.to_container(cfg, resolve=True)


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _fake_root(root: Path) -> None:
    """A tiny data_root: e-SNLI dev (one row shares a hypothesis with a test set), three test sets, one pool file
    (one row reuses a test id)."""
    _write(root / "esnli/dev.jsonl", [
        {"id": f"esnli-dev-{i}", "premise": f"A man number {i} rides a bike .", "hypothesis": f"Someone {i} moves .",
         "label": i % 2, "label3": "entailment" if i % 2 else "neutral", "explanations": [f"because {i}"]}
        for i in range(20)] + [
        {"id": "esnli-dev-leak", "premise": "A new premise here .", "hypothesis": "A DOG runs!", "label": 0,
         "label3": "neutral", "explanations": ["x"]}])
    _write(root / "esnli/test.jsonl", [
        {"id": f"esnli-test-{i}", "premise": f"Test premise {i} .", "hypothesis": "a dog runs" if i == 0 else f"h{i}",
         "label": i % 2, "label3": "entailment"} for i in range(6)])
    _write(root / "mnli/dev_matched.jsonl", [
        {"id": f"mnli-{i}", "premise": f"M premise {i}", "hypothesis": f"M hyp {i}", "label": i % 2,
         "label3": "entailment" if i % 2 else "contradiction"} for i in range(6)])
    _write(root / "rte/dev.jsonl", [
        {"id": f"rte-{i}", "premise": f"R premise {i}", "hypothesis": f"R hyp {i}", "label": i % 2}
        for i in range(4)])
    _write(root / "more/pool.jsonl", [
        {"id": f"pool-{i}", "premise": f"Pool premise {i}", "hypothesis": f"Pool hyp {i}", "label": i % 2,
         "label3": "entailment" if i % 2 else "neutral", "source": "pool"} for i in range(30)] + [
        {"id": "mnli-3", "premise": "unrelated premise", "hypothesis": "unrelated hyp", "label": 1,
         "label3": "entailment", "source": "pool"}])


# ----------------------------------------------------------------------------------------------- data


def test_leak_check_drops_test_ids_and_sentences_and_nothing_written_leaks(tmp_path):
    root = tmp_path / "root"
    _fake_root(root)
    out = tmp_path / "study" / "data"
    m = prepare(str(root), out, None, {"esnli_test": 3, "mnli_dev_matched": None, "rte_dev": None}, 0,
                test_sets=TEST_SETS, train_source=TRAIN_SOURCE, pool_files=["more/pool.jsonl"], n_teacher=10, dev_fraction=0.25,
                label_sets={"label_all": ["train", "pool"], "label_pool": ["teacher"]})
    assert m["train"]["dropped_leak"] == 1 and m["train"]["n"] == 20  # "A DOG runs!" == "a dog runs" normalised
    assert m["pool"]["dropped_leak"] == 1 and m["pool"]["n"] == 30  # the row that reuses the id mnli-3
    assert m["teacher"]["n"] == 10
    full = [json.loads(x) for x in (out / "test_full.jsonl").read_text().splitlines()]
    sample = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    assert len(full) == 16 and len(sample) == 3 + 6 + 4 and {r["id"] for r in sample} <= {r["id"] for r in full}
    ids, sents = {r["id"] for r in full}, sentences_of(full)
    for f in ["train_pairs.jsonl", "pool_pairs.jsonl", "teacher_pairs.jsonl"]:
        assert leaks([json.loads(x) for x in (out / f).read_text().splitlines()], ids, sents) == []
    for name in ("label_all", "label_pool"):
        d = tmp_path / "study" / "sft" / name
        st = json.loads((d / "stats.json").read_text())
        train = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
        dev = [json.loads(x) for x in (d / "dev.jsonl").read_text().splitlines()]
        assert st["label_only"] and st["train"]["count"] == len(train) and st["dev"]["count"] == len(dev)
        assert not {r["id"] for r in train} & {r["id"] for r in dev}
        assert leaks(train + dev, ids, sents) == []
    assert m["label_sets"]["label_all"]["train"]["count"] + m["label_sets"]["label_all"]["dev"]["count"] == 50
    assert len(m["leak_check_passed"]) == 6


def test_the_test_sets_are_config_every_one_leak_checked_and_mistakes_are_one_line(tmp_path):
    root = tmp_path / "root"
    _fake_root(root)
    two = {"esnli_test": TEST_SETS["esnli_test"], "rte_dev": TEST_SETS["rte_dev"]}  # a study on two test sets
    m = prepare(str(root), tmp_path / "data", None, {}, 0, test_sets=two, train_source=TRAIN_SOURCE)
    assert list(m["sets"]) == ["esnli_test", "rte_dev"] and not (tmp_path / "data" / "test_mnli_dev_matched.jsonl").exists()
    assert m["train"]["dropped_leak"] == 1  # the e-SNLI test sentence is still caught
    # a set set to null is dropped (its n_test entry may stay); a new one is one line
    cfg = _review_cfg(tmp_path, "data.test_sets.mnli_dev_matched=null", "+data.test_sets.snli_test=snli/test.jsonl")
    assert StudyGraph(cfg, tmp_path).test_sets == ["esnli_test", "rte_dev", "snli_test"]
    assert check_data_sets(cfg["data"]) == []
    for overrides, message in (
            (["+data.n_test.mnli_dev_mismatched=5"], "data.n_test: unknown test set"),
            ([f"data.test_sets.{s}=null" for s in TEST_SETS], "data.test_sets: empty"),
            ([f"data.train_source={TEST_SETS['rte_dev']}"], "it is also a test set")):
        problems = check_data_sets(_review_cfg(tmp_path, *overrides)["data"])
        assert len(problems) == 1 and message in problems[0] and "\n" not in problems[0], problems
    with pytest.raises(SystemExit, match="^error: data.test_sets: empty"):  # the study stops at start-up
        main_run(_review_cfg(tmp_path, *(f"data.test_sets.{s}=null" for s in TEST_SETS)))


def test_leak_helpers_by_hand():
    test = [{"id": "t1", "premise": "A Cat sleeps.", "hypothesis": "An animal rests"}]
    ids, sents = {"t1"}, sentences_of(test)
    rows = [{"id": "a", "premise": "a cat SLEEPS", "hypothesis": "x"}, {"id": "t1", "premise": "p", "hypothesis": "q"},
            {"id": "b", "premise": "p", "hypothesis": "q"}]
    assert norm_sentence("A Cat sleeps.") == "acatsleeps"
    assert leaks(rows, ids, sents) == ["a", "t1"]
    kept, dropped = drop_leaks(rows, ids, sents)
    assert [r["id"] for r in kept] == ["b"] and dropped == 2


def test_real_pool_is_clean_of_every_test_set(shared_data, tmp_path):
    """The shipped pool (../shared/data/more) shares no sentence with a test set; e-SNLI dev does (a few hundred
    short hypotheses), and prep drops exactly those."""
    m = prepare(str(shared_data), tmp_path / "data", None, {s: 5 for s in TEST_SETS}, 0,
                test_sets=TEST_SETS, train_source=TRAIN_SOURCE, pool_files=["more/snli_sample.jsonl", "more/cad.jsonl", "more/sick.jsonl"], n_teacher=100,
                dev_fraction=0.04, label_sets={"label_pool": ["teacher"]})
    assert m["pool"]["dropped_leak"] == 0 and m["pool"]["n"] == 37568
    assert 0 < m["train"]["dropped_leak"] < 1000


# ----------------------------------------------------------------------------------------------- graph


def test_review_graph_has_every_condition_with_its_data_and_scoring(tmp_path):
    cfg = _review_cfg(tmp_path)
    g = StudyGraph(cfg, tmp_path)
    for name in ("human", "label_all", "label_pool"):
        (tmp_path / "sft" / name).mkdir(parents=True)
        (tmp_path / "sft" / name / "stats.json").write_text(json.dumps({"train": {"count": 900}, "dev": {"count": 40}}))
    noop = {k: (lambda *a: None) for k in ("prep", "prep_cmd", "evaluate", "evaluate_cmd", "select_lr")}
    jobs = {j.name: j for j in g.jobs(noop)}
    # one grid per lr family, each on its anchor's first seed, the family waiting for the choice
    assert {f"train:label_only_s0_lr{x}" for x in ("5e-4", "1e-3", "2e-3")} <= set(jobs)
    assert "select_lr_label" in jobs["train:label_only_all_s0"].deps and "prep" in jobs["train:label_only_all_s0"].deps
    assert "select_lr_label" in jobs["predict:label_only_s0"].deps  # the grid's chosen run is label_only seed 0
    assert "select_lr" in jobs["thoughts:teacher_human"].deps
    assert "train:label_only_s0" not in jobs and "train:human_s0" not in jobs
    # seedless conditions once, seeded ones per seed
    assert {"predict:zero_shot", "predict:zero_shot_constrained", "baseline:bow", "baseline:hyp_bow"} <= set(jobs)
    assert {"baseline:cross_encoder_s0", "baseline:cross_encoder_2"} & set(jobs) == {"baseline:cross_encoder_s0"}
    assert jobs["baseline:cross_encoder_s0"].lane == "gpu" and jobs["baseline:bow"].lane == "cpu"
    # commands
    (tmp_path / "lr_choice_label.json").write_text(json.dumps({"lr": 2e-3, "run": "label_only_s0_lr2e-3"}))
    train = " ".join(g.train_cmd("label_only_all", 1, "label_only_all_s1"))
    assert "sft/label_all/train.jsonl" in train and "dataset.label_only=true" in train
    assert "optimizer.lr=0.002" in train and "trainer.max_epochs=2" in train  # epochs_by_condition
    assert "trainer.early_stopping_patience=null" in train  # patience_by_condition: the whole schedule trains
    assert "trainer.early_stopping_metric=eval/balanced_accuracy" in train and "trainer.gen_eval.enabled=true" in train
    human = " ".join(g.train_cmd("human", 1, "human_s1", lr=1e-3))
    assert "dataset.label_only=false" in human and "trainer.max_epochs=3" in human
    zs = " ".join(g.predict_cmd("zero_shot_constrained", "zero_shot_constrained"))
    assert "decoding.constrained=true" in zs and "decoding.max_new_tokens=512" in zs and "data/test.jsonl" in zs
    assert "decoding.label_probs=true" in zs
    assert "batch_size=256" in zs and f"batch_size={cfg['predict']['batch_size']}" not in zs  # zero_shot_batch_size
    assert "data/test_full.jsonl" in " ".join(g.test_file("label_only_all").parts[-2:]).replace(" ", "/")
    assert g.pairs_for_teacher().name == "teacher_pairs.jsonl"
    ce = " ".join(g.baseline_cmd("cross_encoder", "cross_encoder_s0", 0))
    assert "nli_cot.baselines" in ce and "kind=cross_encoder" in ce and "test_full.jsonl" in ce


def test_select_lr_maximises_the_decoded_dev_metric_and_flags_the_grid_edge(tmp_path):
    cfg = _review_cfg(tmp_path)
    g = StudyGraph(cfg, tmp_path)
    for lr, run in g.lr_runs("label"):
        d = g.run_dir(run) / "model"
        d.mkdir(parents=True)
        value = {5e-4: 0.71, 1e-3: 0.80, 2e-3: 0.83}[lr]
        d.joinpath("status.json").write_text(json.dumps(
            {"global_step": 100, "best": {"metric": "eval/balanced_accuracy", "value": value, "checkpoint": "c"}}))
    choice = LocalJobs(cfg, g).select_lr("label")
    assert choice["lr"] == 2e-3 and choice["at_grid_edge"] == "highest" and choice["metric"].endswith("(max)")
    assert json.loads(g.choice_path("label").read_text())["run"] == "label_only_s0_lr2e-3"
    assert g.chosen_lr("label_only_pool") == 2e-3 and g.chosen_lr("human") == cfg["train"]["lr"]


# ---------------------------------------------------------------------------------------------- report


def _evals(gold: list[int], preds_by_seed: dict, ids: list[str] | None = None) -> dict:
    ids = ids or [f"x{i}" for i in range(len(gold))]
    return {sd: {"rows": {i: {"gold": g, "pred": p, "correct": g == p, "p1": None}
                          for i, g, p in zip(ids, gold, preds, strict=True)}} for sd, preds in preds_by_seed.items()}


def test_paired_contrasts_use_shared_ids_and_holm_over_the_family():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400).tolist()
    good = [g if rng.random() < 0.9 else 1 - g for g in gold]
    coin = rng.integers(0, 2, 400).tolist()
    rcfg = {"n_resamples": 500, "confidence": 0.95, "seed": 0, "mcnemar_exact_below": 25, "tost_margin": 0.02,
            "alpha": 0.05}
    # b scored only the first 300 ids (a sample), a every id: the contrast uses the 300 shared ones
    all_evals = {s: {} for s in ("a", "b", "c")}
    for s in TEST_SETS:
        all_evals["a"][s] = _evals(gold, {0: good, 1: good})
        all_evals["b"][s] = _evals(gold[:300], {0: coin[:300]}, [f"x{i}" for i in range(300)])
        all_evals["c"][s] = _evals(gold, {0: good})
    rows = paired_contrasts(all_evals, [("a", "b"), ("a", "c")], rcfg, list(TEST_SETS))
    assert len(rows) == 2 * len(TEST_SETS) and all(r["n"] == (300 if r["vs"] == "b" else 400) for r in rows)
    ab = [r for r in rows if r["vs"] == "b"]
    assert all(r["balanced_accuracy"]["diff"] > 0.3 and r["balanced_accuracy"]["p_holm"] < 0.05 for r in ab)
    ac = [r for r in rows if r["vs"] == "c"]  # identical predictions: no difference, and equivalent
    assert all(r["balanced_accuracy"]["diff"] == 0 and r["tost"]["equivalent"] for r in ac)
    raw = [r["balanced_accuracy"]["p"] for r in rows]
    assert [r["balanced_accuracy"]["p_holm"] for r in rows] == stats.holm(raw)


def test_targets_report_met_and_unmet_with_numbers():
    gold = [0, 1] * 50
    all_evals = {"label_only_all": {s: _evals(gold, {0: gold}) for s in TEST_SETS},
                 "human": {s: _evals(gold, {0: [0] * 100}) for s in TEST_SETS}}
    cells = {"label_only_all": {s: {"accuracy": {"mean": 0.95}} for s in TEST_SETS},
             "human": {s: {"accuracy": {"mean": 0.5}, "balanced_accuracy": {"ci": [0.45, 0.55]}} for s in TEST_SETS}}
    t = {x["target"].split(" (")[0]: x for x in targets(cells, all_evals, ["human"], list(TEST_SETS))}
    assert t["label_only_all reaches >= 90% accuracy on e-SNLI test"]["met"] is True
    assert t["human: balanced-accuracy CI above 50% on every test set"]["met"] is False
    diff = t["human vs label_only_all on esnli_test"]
    assert diff["value"] == pytest.approx(-0.5) and diff["met"] is False


def test_early_stopping_waits_for_min_steps(monkeypatch):
    """The plateau of a constant answer early in training must not count towards patience."""
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import EarlyStopping

    from nli_cot.models.checkpoints import EarlyStoppingAfter

    seen = []
    monkeypatch.setattr(EarlyStopping, "_run_early_stopping_check", lambda self, trainer: seen.append(trainer.global_step))
    cb = EarlyStoppingAfter(200, monitor="eval/balanced_accuracy", mode="max", patience=4)
    for step in (25, 125, 199, 200, 225):
        cb._run_early_stopping_check(SimpleNamespace(global_step=step))
    assert seen == [200, 225]


def test_lr_by_family_fixes_a_family_lr_without_its_grid(tmp_path):
    cfg = _review_cfg(tmp_path, "train.lr_grid=[]", "train.label_lr_grid=[]", "train.lr=5e-4",
                      "train.lr_by_family.reasoning=2e-3")
    g = StudyGraph(cfg, tmp_path)
    assert g.chosen_lr("teacher_human_combined") == 2e-3 and g.chosen_lr("human") == 2e-3
    assert g.chosen_lr("label_only_all") == 5e-4  # null: train.lr
    cfg["train"]["lr_by_family"] = {"reasonin": 1e-3}
    with pytest.raises(ValueError, match="unknown family"):
        StudyGraph(cfg, tmp_path)


def test_merge_folds_another_machines_out_dir_and_refuses_other_data(tmp_path):
    from nli_cot.orchestration.study import merge_out_dir

    def out_dir(name: str, data: dict, jobs: dict, evals: list[str]) -> Path:
        d = tmp_path / name
        (d / "data").mkdir(parents=True)
        (d / "data" / "data_manifest.json").write_text(json.dumps(data))
        (d / "manifest.json").write_text(json.dumps({"invocations": [{"start": name, "pid": 1}], "jobs": jobs,
                                                     "status": {k: v["status"] for k, v in jobs.items()}}))
        for e in evals:
            (d / "eval" / e).mkdir(parents=True)
            (d / "eval" / e / "m.json").write_text(name)
        return d

    here = out_dir("here", {"n": 1}, {"train:human_s0": {"status": "done"}}, ["human_s0"])
    gpu = out_dir("gpu", {"n": 1}, {"train:human_s0": {"status": "done"}, "train:human_s2": {"status": "done"}},
                  ["human_s0", "human_s2"])
    done = merge_out_dir(gpu, here)
    assert done == {"copied": ["eval/human_s2"], "kept": ["eval/human_s0"]}
    assert (here / "eval" / "human_s0" / "m.json").read_text() == "here"  # ours is kept
    m = json.loads((here / "manifest.json").read_text())
    assert [i["start"] for i in m["invocations"]] == ["here", "gpu"] and m["status"]["train:human_s2"] == "done"
    merge_out_dir(gpu, here)  # idempotent: no second copy of the invocation
    assert len(json.loads((here / "manifest.json").read_text())["invocations"]) == 2
    other = out_dir("other", {"n": 2}, {}, [])
    with pytest.raises(SystemExit, match="different data"):
        merge_out_dir(other, here)
