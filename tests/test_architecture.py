"""The import contract of ``nli_cot`` (ARCHITECTURE.md): packages follow the data, and nothing reaches sideways.

Every package of ``nli_cot/`` sits in one layer. A module may import its own package and packages of lower layers;
a stage package never imports another stage package; inside a stage package nothing imports a command (a module
``python -m`` runs: a stage never imports another stage); only ``orchestration`` composes stages. Imports inside
functions count too. A new package must be given a layer here, a new module a line in ARCHITECTURE.md, and a
top-level module may only be the entry module of a documented command, so the map can't go stale.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

PKG = REPO / "nli_cot"
LAYERS: dict[str, list[str]] = {
    # pure pieces every package shares: schemas, start-up checks, io, parsing, prompts, pairs, metrics, statistics
    "core": ["core"],
    # models and tokenizers, batched decoding, adapter checkpoint folders: shared by the stage packages
    "machinery": ["models"],
    # the pipeline, in data order: pairs -> thoughts -> reflect -> sft -> train -> predict -> evaluate;
    # lm_eval_tasks: the same prompts and parser as lm-evaluation-harness tasks
    "stages": ["teacher", "training", "inference", "evaluation", "lm_eval_tasks"],
    # recipes that run stages in order: the study, the card's ablation chain, the demo, the resumable sweeper
    "orchestration": ["orchestration"],
}
RANK = {layer: i for i, layer in enumerate(LAYERS)}
LAYER_OF = {p: layer for layer, pkgs in LAYERS.items() for p in pkgs}
# The documented `python -m nli_cot.<command>`: a thin entry module each (runs the package module as __main__).
ENTRY = re.compile(r'runpy\.run_module\("nli_cot\.(\w+)\.(\w+)", run_name="__main__", alter_sys=True\)')


def _modules() -> dict[str, Path]:
    """Dotted name (``core.config``) -> file, every module inside a package of ``nli_cot``."""
    return {".".join(p.relative_to(PKG).with_suffix("").parts): p for p in sorted(PKG.glob("*/*.py"))}


def _is_command(path: Path) -> bool:
    return any(isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) and "__main__" in ast.unparse(n.test)
               for n in ast.parse(path.read_text(encoding="utf-8")).body)


def _imports(path: Path) -> set[str]:
    """The ``nli_cot`` modules ``path`` imports, as dotted names below ``nli_cot`` (``core.config``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nli_cot":
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "nli_cot" and len(parts) > 1:
                found.add(".".join(parts[1:3]))
    return found


def test_every_package_has_a_layer_and_top_level_modules_are_entries():
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert packages - set(LAYER_OF) == set(), "give the new package a layer in LAYERS and a line in ARCHITECTURE.md"
    assert set(LAYER_OF) - packages == set(), "a package in LAYERS no longer exists"
    modules = _modules()
    for path in sorted(PKG.glob("*.py")):
        if path.stem == "__init__":
            continue
        m = ENTRY.search(path.read_text(encoding="utf-8"))
        assert m, f"{path.name}: a top-level module is only the entry of a command; put the code in a package"
        assert f"{m[1]}.{m[2]}" in modules and _is_command(modules[f"{m[1]}.{m[2]}"]), path.name


def test_imports_go_down_and_no_stage_imports_another():
    modules = _modules()
    commands = {m for m, p in modules.items() if _is_command(p)}
    bad = []
    for m, path in modules.items():
        mine = m.split(".")[0]
        for dep in sorted(_imports(path)):
            theirs = dep.split(".")[0]
            if theirs not in LAYER_OF:
                bad.append(f"{m} imports nli_cot.{dep}, outside every package")
                continue
            lm, lt = LAYER_OF[mine], LAYER_OF[theirs]
            if RANK[lt] > RANK[lm]:
                bad.append(f"{m} ({lm}) imports {dep} ({lt}): upwards")
            elif lm == lt == "stages" and theirs != mine:
                bad.append(f"{m} imports {dep}: one stage package reaches into another")
            elif lm == "stages" and dep in commands and dep != m:
                bad.append(f"{m} imports {dep}: a stage never imports another stage (a command)")
    assert bad == []


def test_architecture_md_names_every_package_and_module():
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert [p for p in LAYER_OF if f"`{p}/`" not in text] == []
    missing = [m for m, p in _modules().items()
               if p.stem != "__init__" and m.split(".")[0] != "lm_eval_tasks" and f"`{p.name}`" not in text]
    assert missing == []


def _resolves(dotted: str) -> bool:
    """``nli_cot.<package>.<module>.<name>``: the longest module prefix exists as a file and defines the first attribute."""
    parts = dotted.split(".")[1:]
    for i in range(len(parts), -1, -1):
        base = PKG.joinpath(*parts[:i])
        path = base.with_suffix(".py") if i and base.with_suffix(".py").is_file() else base / "__init__.py"
        if path.is_file():
            break
    else:
        return False
    rest = parts[i:]
    if not rest:
        return True
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return rest[0] in defined


def test_every_dotted_nli_cot_reference_resolves():
    """``nli_cot.<module>[.<name>]`` and ``from nli_cot[.<module>] import <name>`` in any tracked text file (imports,
    imports inside strings of code, mock targets, commands, docs) still exist.

    ``experiments/results/`` is left out: records of past runs, written by the code of their day.
    """
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                               text=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    entries = {f"nli_cot.{p.stem}" for p in PKG.glob("*.py") if ENTRY.search(p.read_text(encoding="utf-8"))}
    bad = []
    for rel in files:
        path = REPO / rel
        if not rel or rel.startswith("experiments/results/") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        refs = [m.group(0) for m in re.finditer(r"(?<![\w.])nli_cot(?:\.\w+)+", text)]
        imported = []
        for m in re.finditer(r"(?<![\w.])(?:from (nli_cot(?:\.\w+)*) import (\w+(?: as \w+)?(?:, *\w+(?: as \w+)?)*)"
                             r"|import (nli_cot(?:\.\w+)+))", text):
            imported += [f"{m[1]}.{n}" for n in re.findall(r"(\w+)(?: as \w+)?", m[2])] if m[1] else [m[3]]
        bad += [f"{rel}: {ref}" for ref in refs + imported if not _resolves(ref)]
        bad += [f"{rel}: imports {ref}, an entry module (it exports nothing)" for ref in imported if ref in entries]
    assert bad == []
