"""The study's condition catalogue (conf/study.yaml ``catalogue:``): the graph it derives is the one the study always
ran (pinned in tests/fixtures/study_graphs.json), a condition is added by config alone, and each catalogue mistake
stops the study in one line naming its key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import nli_cot.orchestration.study_schema  # noqa: F401  (registers the study's schema)
from nli_cot.orchestration.study import LocalJobs
from nli_cot.orchestration.study_graph import StudyGraph

REPO = Path(__file__).resolve().parents[1]
PINNED = REPO / "tests" / "fixtures" / "study_graphs.json"
# Each preset as shipped, plus variants that reach the graph's other branches: a teacher whose model is not itself
# a condition, a label family anchor trained only for its grid, equal steps without a teacher, no pool.
VARIANTS: dict[str, list[str]] = {
    "review": ["study=review"],
    "full": ["study=full"],
    "cpu": ["study=cpu"],
    "review_students_only": ["study=review", "conditions=[label_only_pool,teacher_human_correct_only,bow]"],
    "full_no_teacher": ["study=full", "conditions=[human,label_only_all]", "seeds=[0,1]",
                        "train.label_lr_grid=[1.0e-3,2.0e-3]"],
    "cpu_teacher_base": ["study=cpu", "conditions=[teacher_base_correct_only,zero_shot]", "train.equal_steps=true"],
}


def study_cfg(out: Path, *overrides: str) -> dict[str, Any]:
    """conf/study.yaml composed as ``python -m nli_cot.study`` composes it (resolved; the preset's name set by hand:
    compose sets no HydraConfig)."""
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("study", overrides=[f"out_dir={out}", *overrides])
    cfg.study_name = str(cfg.report_name)
    return OmegaConf.to_container(cfg, resolve=True)


def graph_of(cfg: dict[str, Any], out: Path) -> tuple[StudyGraph, LocalJobs, list]:
    g = StudyGraph(cfg, out, python="python")
    local = LocalJobs(cfg, g)
    jobs = g.jobs({"prep": local.prep, "prep_cmd": local.prep_cmd, "evaluate": local.evaluate,
                   "evaluate_cmd": local.evaluate_cmd, "select_lr": local.select_lr})
    return g, local, jobs


def snapshot(out: Path, *overrides: str) -> dict[str, Any]:
    """Every job of the graph: its name (in build order), lane, priority, dependencies and meta, and a hash of its
    stage and overrides (composed with the placeholders of ``validate``: SFT set sizes, checkpoints)."""
    g, local, jobs = graph_of(study_cfg(out, *overrides), out)
    here = str(out.resolve())
    g.dry = True
    try:
        rows = []
        for j in jobs:
            row: dict[str, Any] = {"name": j.name, "lane": j.lane, "priority": list(j.priority), "deps": list(j.deps),
                                   "meta": j.meta}
            if j.name in g.specs:
                stage, build = g.specs[j.name]
                spec = json.dumps([stage, [x.replace(here, "<out>") for x in build()]])
                row["spec_sha256"] = hashlib.sha256(spec.encode()).hexdigest()[:16]
            rows.append(row)
    finally:
        g.dry = False
    return {"jobs": rows, "prep": local.prep_cmd().replace(here, "<out>")}


def write_pinned(tmp: Path) -> None:
    """Re-pin (only when a graph change is meant): python -c 'from test_study_catalogue import *; write_pinned(...)'."""
    parts = []
    for name, overrides in VARIANTS.items():  # one job a line: a graph change is a readable diff
        snap = snapshot(tmp / name, *overrides)
        jobs = ",\n".join("   " + json.dumps(j) for j in snap["jobs"])
        parts.append(f' {json.dumps(name)}: {{"prep": {json.dumps(snap["prep"])},\n  "jobs": [\n{jobs}]}}')
    PINNED.write_text("{\n" + ",\n".join(parts) + "\n}\n")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_graph_from_the_catalogue_is_the_one_the_study_always_ran(variant, tmp_path):
    pinned = json.loads(PINNED.read_text())[variant]
    now = snapshot(tmp_path / variant, *VARIANTS[variant])
    assert [j["name"] for j in now["jobs"]] == [j["name"] for j in pinned["jobs"]]
    for got, want in zip(now["jobs"], pinned["jobs"], strict=True):
        assert got == want, got["name"]
    assert now["prep"] == pinned["prep"]
