#!/usr/bin/env python
"""Issue #21: move ``nli_cot``'s flat modules into sub-packages that follow the data (a pure restructure).

Run from the repository root on a clean tree, then commit what it did::

    python tools/restructure.py [--dry-run] [--map NAME=PACKAGE ...] [--ruff PATH]
    git add -A && git commit -m "#21: the result of tools/restructure.py"

Re-runnable: it moves only modules still at their old top-level path, and every rewrite leaves already rewritten
text alone, so a second run changes nothing. On a tree that gained a top-level module the map below does not
name (say ``nli_cot/study_engine.py``), it prints a warning and leaves that module where it is; give it a package
with ``--map study_engine=orchestration`` (or add it to MOVES) and run again.

What it does, in order:

1. Moves (``git mv``) ``nli_cot/<name>.py`` -> ``nli_cot/<package>/<name>.py`` for every name in MOVES whose old
   file exists (and is not already one of the entry modules of step 4), and writes ``nli_cot/<package>/__init__.py``
   (a docstring, no imports) where missing.
2. In each file it moved (now one folder deeper): ``config_path="../conf"`` -> ``"../../conf"`` (Hydra's path is
   relative to the module file) and ``Path(__file__).resolve().parents[N]`` -> ``parents[N+1]``.
3. Rewrites references in every tracked text file (``git ls-files``) except ``experiments/results/`` (records of
   past runs, kept as they were written) and this script:
   - imports: ``from nli_cot.<name> import``, ``import nli_cot.<name>`` and ``from nli_cot import <a>, <b> as <c>`` (split
     into one line per package) -> the new module, always;
   - dotted names ``nli_cot.<name>[.attr]`` (``mock.patch``/``monkeypatch`` targets, ``sys.modules`` keys, logger
     names, prose) -> ``nli_cot.<package>.<name>[.attr]``, except a command's bare name (COMMANDS, nothing
     after it but a non-``.``): that is the command a user types (``python -m nli_cot.train``,
     ``run_module("nli_cot.train", ...)``, ``[python, "-m", "nli_cot.train"]``, "a run dir of nli_cot.train" in a
     message, ``logging.getLogger("nli_cot.train")``), kept as it was; the entry modules of step 4 run it;
   - paths ``nli_cot/<name>.py`` -> ``nli_cot/<package>/<name>.py``.
4. Writes an entry module ``nli_cot/<command>.py`` for every documented ``python -m nli_cot.<command>`` (COMMANDS):
   it runs the moved module as ``__main__`` with ``runpy``, so its whole ``if __name__ == "__main__":`` block
   (preflight, signal handlers, ``sys.exit(main())``) runs exactly as before. Importing an entry module does
   nothing (no re-exports): library callers import the new module.
5. Replaces the package docstring of ``nli_cot/__init__.py`` (if it is still the old one).
6. ``ruff check --select I --fix`` on the python files it changed (import order follows the new names).

Hand fixes after it (one commit on branch move21, "#21 hand fixes after tools/restructure.py", to cherry-pick
after a re-run): ``ARCHITECTURE.md`` (tree, layers, one line per module), ``tests/test_architecture.py`` (layer =
package, the import contract, every dotted reference resolves), the module list of ``README.md``'s "The pipeline"
section (bare file names such as ``train.py``). Nothing else was edited by hand.

Re-running on a newer main (e.g. after a branch replaced ``study_scheduler.py``)::

    git checkout main -- tools/restructure.py   # or take it from move21
    python tools/restructure.py                 # warns about any top-level module it has no package for
    python tools/restructure.py --map study_engine=orchestration   # if so: give it one (re-run is safe)
    git add -A && git commit -m "#21: the result of tools/restructure.py"
    git cherry-pick <the hand-fix commit>       # on a conflict in tests/test_architecture.py take move21's
                                                # version; in ARCHITECTURE.md keep one line per new module
    pytest tests/test_architecture.py           # names any module ARCHITECTURE.md lacks, any stale reference
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

PKG = "nli_cot"

# Old top-level module -> its package. Packages follow the data; a package's modules share one layer
# (ARCHITECTURE.md): core < models < the stage packages < orchestration.
MOVES: dict[str, str] = {
    # core: pure pieces every package shares (schemas, start-up checks, io, parsing, prompts, pairs, metrics)
    "config": "core", "checks": "core", "cli": "core", "records": "core", "parsing": "core", "prompts": "core",
    "pairs": "core", "metrics": "core", "stats": "core", "sweep": "core",
    # models: models and tokenizers, batched decoding, adapter checkpoint folders (shared by the stage packages)
    "modeling": "models", "smollm2": "models", "generation": "models", "checkpoints": "models",
    # teacher: pairs -> thoughts -> reflections -> SFT sets
    "teachers": "teacher", "teacher_prompts": "teacher", "stage_runner": "teacher",
    "thoughts": "teacher", "reflect": "teacher", "sft": "teacher",
    # training: SFT set -> adapter checkpoints
    "train": "training", "data": "training", "module": "training", "loggers": "training",
    "gen_eval": "training", "fastpath": "training", "loss_weights": "training",
    # inference: adapter -> predictions, an HTTP server, a hub-ready folder
    "predict": "inference", "serve": "inference", "export": "inference",
    # evaluation: predictions -> metrics, comparisons, sweep reports; the baselines' predictions
    "evaluate": "evaluation", "compare": "evaluation", "report": "evaluation", "baselines": "evaluation",
    # orchestration: recipes over the stages
    "study": "orchestration", "study_data": "orchestration", "study_graph": "orchestration",
    "study_report": "orchestration", "study_engine": "orchestration", "ablations": "orchestration",
    "demo": "orchestration", "demo_data": "orchestration", "demo_baselines": "orchestration",
    "optuna_sweeper": "orchestration",
}

# Documented `python -m nli_cot.<command>` (README, Makefile, ARCHITECTURE.md, experiments/, conf/, tests): each
# keeps a top-level entry module.
COMMANDS = ["train", "predict", "evaluate", "compare", "thoughts", "reflect", "sft", "report", "baselines",
            "export", "serve", "study", "ablations", "demo", "demo_data", "demo_baselines"]

PACKAGE_DOCS: dict[str, str] = {
    "core": "Core: the pure pieces every package shares: config schemas and start-up checks, the one io module,\n"
            "output parsing, prompts, pair reading and the split hash, metrics and statistics, sweep bookkeeping.",
    "models": "Models: models and tokenizers (built here and nowhere else), batched decoding, adapter checkpoint\n"
              "folders. Shared by the stage packages; imports only ``core``.",
    "teacher": "Teacher: pairs -> thoughts (``thoughts``) -> reflections (``reflect``) -> SFT sets (``sft``), with the\n"
               "teachers, their prompts and the runner the teacher stages share.",
    "training": "Training: SFT set -> adapter checkpoints (``train``), with its batches, LightningModule, loggers,\n"
                "decoded dev accuracy, speed levers and loss weights.",
    "inference": "Inference: base model (+ adapter) -> predictions (``predict``), an OpenAI-compatible server\n"
                 "(``serve``), a hub-ready folder with a model card (``export``).",
    "evaluation": "Evaluation: predictions -> metrics (``evaluate``), comparisons (``compare``), one report per sweep\n"
                  "(``report``); the baselines' predictions (``baselines``).",
    "orchestration": "Orchestration: recipes that run the stages in order: the study, the card's ablation chain, the\n"
                     "demo, the resumable Optuna sweeper.",
}

OLD_INIT_DOC = '''"""nli_cot: QLoRA fine-tuning of causal LMs for natural-language inference with written chain-of-thought.

The data flows one way through stages, one module each:
pairs -> thoughts -> reflect -> sft -> train (data, module, checkpoints) -> predict -> evaluate -> compare/report.
"""'''
NEW_INIT_DOC = '''"""nli_cot: QLoRA fine-tuning of causal LMs for natural-language inference with written chain-of-thought.

The data flows one way through packages (ARCHITECTURE.md), one command per stage (``python -m nli_cot.<stage>``):
core -> teacher (thoughts, reflect, sft) -> training (train) -> inference (predict, serve, export)
-> evaluation (evaluate, compare, report, baselines); models is shared; orchestration runs them in order.
"""'''

ENTRY = '''"""``python -m nli_cot.{cmd}``: the code lives in ``nli_cot/{pkg}/{cmd}.py``, run here as ``__main__``."""

import runpy

if __name__ == "__main__":
    runpy.run_module("nli_cot.{pkg}.{cmd}", run_name="__main__", alter_sys=True)
'''
ENTRY_MARK = "runpy.run_module(\"nli_cot."

EXCLUDE = ("experiments/results/", "tools/restructure.py")

NAME = r"[A-Za-z_]\w*"
DOTTED = re.compile(rf"(?<![\w.]){PKG}\.({NAME})(?!\w)")
PATH = re.compile(rf"(?<![\w.]){PKG}/({NAME})\.py(?!\w)")
# At a line's start (code) or inside one (code in a string, e.g. python -c "from nli_cot import <module>; ...").
FROM_PKG = re.compile(rf"(?:^(?P<indent>[ \t]*)|(?<=[\s\"'(;`]))from {PKG} import "
                      rf"(?P<names>{NAME}(?: as {NAME})?(?:, *{NAME}(?: as {NAME})?)*)(?P<rest>.*)$", re.M)
IMPORT_CTX = re.compile(r"(?:\bfrom|\bimport)\s+$")


def git(*args: str, check: bool = True) -> str:
    return subprocess.run(["git", *args], check=check, capture_output=True, text=True).stdout


def is_entry(path: Path) -> bool:
    return path.is_file() and ENTRY_MARK in path.read_text(encoding="utf-8")


def rewrite_from_pkg(text: str, moves: dict[str, str]) -> str:
    """``from nli_cot import <a>, <b> as <c>`` -> one ``from nli_cot.<package> import ...`` line per package."""

    def one(m: re.Match[str]) -> str:
        groups: dict[str, list[str]] = {}
        for item in (s.strip() for s in m["names"].split(",")):
            name = item.split(" as ")[0]
            groups.setdefault(f"{PKG}.{moves[name]}" if name in moves else PKG, []).append(item)
        if list(groups) == [PKG]:
            return m.group(0)
        if m["indent"] is None and len(groups) > 1:  # inside a line: one statement only, no place for two
            print(f"WARNING: left as is (split it by hand): {m.group(0).strip()}", file=sys.stderr)
            return m.group(0)
        lines = [f"{m['indent'] or ''}from {mod} import {', '.join(items)}" for mod, items in groups.items()]
        lines[0] += m["rest"]  # a trailing comment stays on the first line
        return "\n".join(lines)

    return FROM_PKG.sub(one, text)


def rewrite(text: str, moves: dict[str, str], commands: set[str]) -> str:
    text = rewrite_from_pkg(text, moves)

    def dotted(m: re.Match[str]) -> str:
        name = m[1]
        if name not in moves:
            return m.group(0)
        s, e = m.start(), m.end()
        after = text[e:e + 1]
        before = text[max(0, s - 12):s]
        if name in commands and after != "." and not IMPORT_CTX.search(before):
            return m.group(0)  # the command a user types (`python -m nli_cot.train`): kept, its entry module runs it
        return f"{PKG}.{moves[name]}.{name}"

    text = DOTTED.sub(dotted, text)
    return PATH.sub(lambda m: f"{PKG}/{moves[m[1]]}/{m[1]}.py" if m[1] in moves else m.group(0), text)


def deeper(text: str) -> str:
    """A module moved one folder down: its paths relative to its own file gain one level."""
    text = text.replace('config_path="../conf"', 'config_path="../../conf"')
    return re.sub(r"Path\(__file__\)\.resolve\(\)\.parents\[(\d+)\]",
                  lambda m: f"Path(__file__).resolve().parents[{int(m[1]) + 1}]", text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    ap.add_argument("--map", action="append", default=[], metavar="NAME=PACKAGE",
                    help="extra old module -> package (a module this script's MOVES does not know)")
    ap.add_argument("--ruff", default=None, help="ruff executable (default: beside this python, else on PATH)")
    args = ap.parse_args(argv)

    root = Path(git("rev-parse", "--show-toplevel").strip())
    pkg = root / PKG
    moves = dict(MOVES)
    for item in args.map:
        name, _, package = item.partition("=")
        if not (name.isidentifier() and package.isidentifier()):
            ap.error(f"--map {item!r}: expected NAME=PACKAGE")
        moves[name] = package
    commands = set(COMMANDS)
    clash = set(moves.values()) & (set(moves) | commands)
    if clash:
        ap.error(f"a package name equals a module name: {sorted(clash)}")

    def say(msg: str) -> None:
        print(("[dry-run] " if args.dry_run else "") + msg)

    # 0. Top-level modules with no mapping: warned about, left in place.
    for p in sorted(pkg.glob("*.py")):
        if p.stem != "__init__" and p.stem not in moves and not is_entry(p):
            print(f"WARNING: {p.relative_to(root)} has no package in MOVES; left in place "
                  f"(re-run with --map {p.stem}=<package>)", file=sys.stderr)

    # 1-2. Moves, package __init__ files, paths relative to the moved files.
    changed: set[Path] = set()
    for name, package in moves.items():
        old, new = pkg / f"{name}.py", pkg / package / f"{name}.py"
        if not old.exists() or is_entry(old):
            continue
        if new.exists():
            print(f"WARNING: both {old.relative_to(root)} and {new.relative_to(root)} exist; not moved",
                  file=sys.stderr)
            continue
        say(f"git mv {old.relative_to(root)} {new.relative_to(root)}")
        if args.dry_run:
            continue
        init = pkg / package / "__init__.py"
        if not init.exists():
            init.parent.mkdir(exist_ok=True)
            init.write_text(f'"""{PACKAGE_DOCS.get(package, package.capitalize() + ".")}\n"""\n', encoding="utf-8")
            git("add", str(init))
        git("mv", str(old), str(new))
        text = new.read_text(encoding="utf-8")
        if deeper(text) != text:
            new.write_text(deeper(text), encoding="utf-8")
        changed.add(new)
        if name not in commands and '__name__ == "__main__"' in text:
            print(f"WARNING: {new.relative_to(root)} has a __main__ block but no entry module "
                  f"(add {name!r} to COMMANDS if `python -m nli_cot.{name}` is documented)", file=sys.stderr)

    # 3. References in every tracked text file.
    files = [root / f for f in git("ls-files", "-z").split("\0") if f and not f.startswith(EXCLUDE)]
    for path in files:
        if not path.is_file():
            continue
        raw = path.read_bytes()
        if b"\0" in raw:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        new_text = rewrite(text, moves, commands)
        if new_text != text:
            say(f"rewrite {path.relative_to(root)}")
            if not args.dry_run:
                path.write_text(new_text, encoding="utf-8")
                changed.add(path)

    # 4. Entry modules for the documented commands.
    for cmd in COMMANDS:
        if cmd not in moves:
            continue
        target = pkg / moves[cmd] / f"{cmd}.py"
        entry = pkg / f"{cmd}.py"
        body = ENTRY.format(cmd=cmd, pkg=moves[cmd])
        if not (target.exists() or args.dry_run) or (entry.exists() and entry.read_text(encoding="utf-8") == body):
            continue
        if entry.exists() and not is_entry(entry):
            if not args.dry_run:
                print(f"WARNING: {entry.relative_to(root)} is not an entry module; left alone", file=sys.stderr)
            continue
        say(f"write entry module {entry.relative_to(root)} -> nli_cot.{moves[cmd]}.{cmd}")
        if not args.dry_run:
            entry.write_text(body, encoding="utf-8")
            git("add", str(entry))
            changed.add(entry)

    # 5. The package docstring.
    init = pkg / "__init__.py"
    text = init.read_text(encoding="utf-8")
    if OLD_INIT_DOC in text:
        say("rewrite nli_cot/__init__.py docstring")
        if not args.dry_run:
            init.write_text(text.replace(OLD_INIT_DOC, NEW_INIT_DOC), encoding="utf-8")
            changed.add(init)

    # 6. Import order follows the new names.
    py = sorted(str(p) for p in changed if p.suffix == ".py" and p.exists())
    if py and not args.dry_run:
        ruff = args.ruff or (str(Path(sys.executable).with_name("ruff"))
                             if Path(sys.executable).with_name("ruff").exists() else shutil.which("ruff"))
        if ruff is None:
            print("WARNING: ruff not found; run `ruff check --select I --fix nli_cot tests experiments hydra_plugins`",
                  file=sys.stderr)
        else:
            subprocess.run([ruff, "check", "--quiet", "--select", "I", "--fix", *py], cwd=root, check=False)
    print(f"done: {len(changed)} files changed" + (" (dry run)" if args.dry_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
