"""The card's ablations as one ordered chain: ``python -m nli_cot.ablations [options] [overrides]``.

Abl0.1 -> Abl0.2 (warm-started from Abl0.1's final checkpoint) -> Abl1, as listed in ``conf/ablations.yaml``.

Features
- Each stage's config is composed with Hydra's compose API (``+experiment=<stage> <overrides>``, the training
  config and schema) when the chain is planned, so a bad override stops the chain before anything starts; right
  before the stage runs, its config (with the warm start from its dependency's final checkpoint) is stored as
  ``<output_dir>/<run_name>/job.yaml`` and run by ``python -m nli_cot.orchestration.run_job <job.yaml>`` in its own
  process (training's ``run(cfg)``), writing ``<output_dir>/<run_name>/``; command-line overrides apply to every
  stage. The log shows the equivalent ``python -m nli_cot.train ...`` command.
- Dependencies are checked before anything starts: a stage that warm-starts from another needs that run
  finished and its final (highest-step) checkpoint complete (``adapter_config.json``,
  ``adapter_model.safetensors``, ``trainer_state.json``); otherwise the chain refuses with one line naming what is
  missing. A dependency that runs in the same chain is checked again right before its dependant starts, and a
  failed stage stops the chain.
- Re-running the chain skips stages that finished with the same overrides, and continues an interrupted stage
  from its last checkpoint (``resume=auto``).
- ``--stages abl0_2`` runs a part of the chain; ``--dry-run`` prints the plan and commands only.

Limits
- Stages run one after another on this machine (for a cluster, run each stage with the slurm launcher).
- A stage's identity is its overrides: after editing a YAML file, use a new ``--output-dir``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nli_cot.core.cli import CONF_DIR, one_line
from nli_cot.core.sweep import comparable, read_status, split_override
from nli_cot.orchestration.run_job import JobSpecError, equivalent_command, spec_command

log = logging.getLogger("nli_cot.ablations")

DEFAULT_CHAIN = CONF_DIR / "ablations.yaml"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
# Set by the chain per run, so not part of a stage's identity when deciding to skip it.
_CHAIN_KEYS = ("init_adapter_from", "resume", "output_dir")


@dataclass
class ChainStage:
    experiment: str = field(default="???", metadata={"help": "The experiment preset (conf/experiment/) this stage trains."})
    warm_start_from: str | None = field(
        default=None,
        metadata={"help": "An earlier stage whose final checkpoint this one starts from (init_adapter_from)."},
    )


@dataclass
class ChainConfig:
    """The chain file (conf/ablations.yaml): checked against this schema when it is read (load_chain)."""

    output_dir: str = field(
        default="outputs/ablations", metadata={"help": "Each stage's run dir is <output_dir>/<its run_name>."}
    )
    stages: list[ChainStage] = field(default_factory=list, metadata={"help": "The stages, run in this order."})


class ChainError(RuntimeError):
    """Why the chain refuses to start or stops (one line)."""


@dataclass
class Stage:
    experiment: str
    warm_start_from: str | None
    run_name: str
    run_dir: Path
    overrides: list[str]  # +experiment=... and the user's overrides
    action: str = "run"  # run | resume | skip (finished before, or outside the selection) | done (ran now)


Runner = Callable[[list[str]], int]


def subprocess_runner(cmd: list[str]) -> int:
    """Run one stage in a fresh process (frees the GPU and closes its W&B run between stages)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, env=env).returncode


def load_chain(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise ChainError(f"{path}: chain config not found")
    from omegaconf.errors import OmegaConfBaseException

    try:
        chain = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ChainConfig), OmegaConf.load(path)),
                                       resolve=True)
    except OmegaConfBaseException as err:
        raise ChainError(f"{path}: {one_line(err)}") from None
    names = [s["experiment"] for s in chain.get("stages", [])]
    for s in chain.get("stages", []):
        dep = s.get("warm_start_from")
        if dep and (dep not in names or names.index(dep) > names.index(s["experiment"])):
            raise ChainError(f"{path}: stage {s['experiment']} warm-starts from {dep}, which is not an earlier stage")
    return chain


def compose_run_name(experiment: str, overrides: list[str]) -> str:
    """The run_name training would use for this stage (composing the config also catches bad overrides early)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import nli_cot.core.config  # noqa: F401  (importing it registers the training schemas)

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"+experiment={experiment}", *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ or err.__context__  # Hydra's own line names the override, its cause the reason
        reason = f"; {one_line(cause)}" if cause is not None else ""
        raise ChainError(f"stage {experiment}: {one_line(err)}{reason}") from err
    return str(cfg.run_name)


def final_checkpoint(stage: Stage, dependant: str) -> Path:
    """The final checkpoint of a finished run, or ChainError saying why it can't be used."""
    need = f"{dependant} needs {stage.experiment}'s final checkpoint"
    status = read_status(stage.run_dir)
    folders = sorted(
        ((int(m.group(1)), p) for p in stage.run_dir.glob("checkpoint-*") if (m := _CKPT_RE.match(p.name))),
    ) if stage.run_dir.is_dir() else []
    if not folders:
        raise ChainError(f"{need}, but {stage.run_dir} holds no checkpoint: run {stage.experiment} first "
                         f"(python -m nli_cot.ablations --stages {stage.experiment},{dependant} ...)")
    if status is not None and status.get("status") != "finished":
        raise ChainError(f"{need}, but {stage.run_dir}/status.json says {status.get('status')!r}: its last "
                         f"checkpoint is not final (re-run the chain to finish {stage.experiment})")
    from nli_cot.models.checkpoints import ADAPTER_FILES, TRAINER_STATE

    last = folders[-1][1]
    missing = [name for name in (*ADAPTER_FILES, TRAINER_STATE) if not (last / name).is_file()]
    if missing:
        raise ChainError(f"{need}, but {last} is half-written (missing {', '.join(missing)}); "
                         f"delete {stage.run_dir} and run {stage.experiment} again")
    return last


def _decide(stage: Stage) -> str:
    """skip a finished identical run, resume an interrupted one, else run; refuse to mix two different runs."""
    status = read_status(stage.run_dir)
    if status is None:
        return "run"
    recorded = [o for o in status.get("overrides", []) if split_override(o)[0] not in _CHAIN_KEYS]
    if comparable(recorded) != comparable(stage.overrides):
        raise ChainError(f"{stage.run_dir} holds a run of {stage.experiment} with other overrides "
                         f"({' '.join(recorded) or 'none recorded'}): choose another --output-dir")
    if status.get("status") == "finished":
        return "skip"
    from nli_cot.models.checkpoints import latest_resumable

    return "resume" if latest_resumable(stage.run_dir) else "run"


def plan(chain: dict[str, Any], output_dir: Path, overrides: list[str],
         only: list[str] | None = None) -> tuple[list[Stage], dict[str, Stage]]:
    """(the stages to go through, each with its action; every stage by name). Raises ChainError before any start."""
    names = [s["experiment"] for s in chain["stages"]]
    for name in only or []:
        if name not in names:
            raise ChainError(f"--stages: unknown stage {name!r} (stages: {', '.join(names)})")
    stages = {}
    for spec in chain["stages"]:
        name = spec["experiment"]
        run_name = compose_run_name(name, overrides)
        stage = Stage(name, spec.get("warm_start_from"), run_name, output_dir / run_name,
                      [f"+experiment={name}", *overrides])
        stage.action = "skip"  # stages outside the selection are only read
        stages[name] = stage
    selected = [stages[n] for n in names if not only or n in only]
    for stage in selected:
        stage.action = _decide(stage)
    running = {s.experiment for s in selected if s.action != "skip"}
    for stage in selected:
        dep = stage.warm_start_from
        # A dependency produced by this chain is checked when it is done; any other must be usable now.
        if stage.action == "run" and dep and dep not in running:
            _decide(stages[dep])  # refuses a dependency trained with other overrides (another model, data...)
            final_checkpoint(stages[dep], stage.experiment)
    return selected, stages


def stage_overrides(stage: Stage, output_dir: Path, stages: dict[str, Stage]) -> list[str]:
    """The stage's training overrides: the chain's, its warm start (or its own resume), and the run dir."""
    extra: list[str] = []
    if stage.action == "resume":
        extra = ["resume=auto", "init_adapter_from=null"]  # its own checkpoint holds the adapter already
    elif stage.warm_start_from:
        extra = [f"init_adapter_from={final_checkpoint(stages[stage.warm_start_from], stage.experiment)}"]
    return [*stage.overrides, *extra, f"output_dir={output_dir}"]


def stage_command(stage: Stage, output_dir: Path, stages: dict[str, Stage]) -> list[str]:
    """The stage's config composed and stored as its spec (``<run_dir>/job.yaml``); the runner's command."""
    try:
        return spec_command(stage.run_dir / "job.yaml", "train", stage_overrides(stage, output_dir, stages))
    except JobSpecError as err:
        raise ChainError(f"stage {stage.experiment}: {err}") from None


def run_chain(chain: dict[str, Any], output_dir: Path, overrides: list[str], only: list[str] | None = None,
              dry_run: bool = False, runner: Runner = subprocess_runner) -> list[Stage]:
    """Plan, then run the stages in order; returns them with their final action."""
    output_dir = Path(output_dir).resolve()
    selected, by_name = plan(chain, output_dir, overrides, only)
    for stage in selected:
        if stage.action == "skip":
            log.info("%s: already finished in %s, skipped", stage.experiment, stage.run_dir)
            continue
        if dry_run and stage.warm_start_from and by_name[stage.warm_start_from].action != "skip":
            log.info("%s: would run after %s, from its final checkpoint", stage.experiment, stage.warm_start_from)
            continue
        equivalent = equivalent_command("train", stage_overrides(stage, output_dir, by_name))
        log.info("%s: %s", stage.experiment, shlex.join(equivalent))
        if dry_run:
            continue
        cmd = stage_command(stage, output_dir, by_name)
        log.info("%s: %s", stage.experiment, shlex.join(cmd))
        code = runner(cmd)
        status = (read_status(stage.run_dir) or {}).get("status")
        if code != 0 or status != "finished":
            raise ChainError(f"{stage.experiment} did not finish (exit {code}, status {status!r}; see "
                             f"{stage.run_dir}/status.json): later stages not started")
        stage.action = "done"
    return selected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nli_cot.ablations", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every stage, e.g. model=tiny_mistral")
    parser.add_argument("--chain", type=Path, default=DEFAULT_CHAIN, help="chain config (default: conf/ablations.yaml)")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: the chain config's output_dir")
    parser.add_argument("--stages", default=None, help="comma-separated subset, e.g. abl0_2,abl1")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and commands, run nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        chain = load_chain(args.chain)
        output_dir = args.output_dir or Path(chain.get("output_dir", "outputs/ablations"))
        only = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        run_chain(chain, output_dir, args.overrides, only, args.dry_run)
    except ChainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
