"""The import contract of ``nli_cot`` (ARCHITECTURE.md): layers follow the data, and nothing reaches sideways.

Every module sits in one layer. A module may import modules of lower layers; inside ``core`` and ``machinery``
modules may also import each other; a stage (one command of the pipeline) never imports another stage; only
``orchestration`` composes stages. Imports inside functions count too. A new module must be given a layer here
(and a line in ARCHITECTURE.md), so the map can't go stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

LAYERS: dict[str, list[str]] = {
    # pure pieces every stage shares: schemas, start-up checks, io, parsing, prompts, pairs, metrics, statistics
    "core": ["config", "checks", "cli", "records", "parsing", "prompts", "pairs", "metrics", "stats",
             "teacher_prompts", "sweep", "smollm2", "loss_weights", "fastpath"],
    # what the stages are built from: models, decoding, training data and module, teachers, the job scheduler
    "machinery": ["modeling", "generation", "data", "module", "checkpoints", "loggers", "gen_eval", "teachers",
                  "stage_runner", "study_engine"],
    # one command each, in data order: pairs -> thoughts -> reflect -> sft -> train -> predict -> evaluate
    "stages": ["thoughts", "reflect", "sft", "train", "predict", "evaluate", "compare", "report", "baselines",
               "export", "serve", "demo_data"],
    # recipes that run stages in order: the study, the card's ablation chain, the demo, the resumable sweeper
    "orchestration": ["study", "study_data", "study_graph", "study_report", "ablations", "demo", "demo_baselines",
                      "optuna_sweeper"],
}
RANK = {layer: i for i, layer in enumerate(LAYERS)}
LAYER_OF = {m: layer for layer, mods in LAYERS.items() for m in mods}
SAME_LAYER_OK = {"core", "machinery", "orchestration"}


def _imports(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nli_cot":
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "nli_cot" and parts[1] in modules:
                found.add(parts[1])
    return found - {path.stem}


def test_every_module_has_a_layer():
    modules = {p.stem for p in (REPO / "nli_cot").glob("*.py") if p.stem != "__init__"}
    assert modules - set(LAYER_OF) == set(), "give the new module a layer in LAYERS and a line in ARCHITECTURE.md"
    assert set(LAYER_OF) - modules == set(), "a module in LAYERS no longer exists"


def test_imports_go_down_and_no_stage_imports_another():
    modules = set(LAYER_OF)
    bad = []
    for m in sorted(modules):
        for dep in sorted(_imports(REPO / "nli_cot" / f"{m}.py", modules)):
            mine, theirs = LAYER_OF[m], LAYER_OF[dep]
            if RANK[theirs] > RANK[mine] or (theirs == mine and mine not in SAME_LAYER_OK):
                bad.append(f"{m} ({mine}) imports {dep} ({theirs})")
    assert bad == []


def test_architecture_md_names_every_module():
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert [m for m in LAYER_OF if f"`{m}.py`" not in text] == []
