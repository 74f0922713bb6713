"""One orchestrated job: a stage's composed config (a spec file) -> the stage's ``run(cfg)``.

``python -m nli_cot.orchestration.run_job <job.yaml>``: the generic runner of the study's (and the ablation
chain's) jobs. An orchestrator composes each job's config with Hydra's compose API (``compose_stage``: the stage's
config name plus overrides, ``+experiment=...`` presets included), which validates it against the stage's schema
before any job starts, and stores it as the job's spec (``write_spec``): the stage, the overrides and the composed,
resolved config. This module runs a spec in a fresh process: it composes the same overrides again (so the config
keeps its schema types and struct mode, as under ``@hydra.main``), refuses to run when the result differs from the
stored config (the conf/ files changed since the spec was written), and calls the stage's ``run(cfg)``, turning a
stage error into one line on stderr and a non-zero exit code.

Why a process per job and not the Dask worker itself: the engine gives every GPU slot its own
``CUDA_VISIBLE_DEVICES``, stops a job at the deadline by killing its process group (a thread cannot be killed), and
a finished job must not leave CUDA memory or a W&B run behind for the next one; a process gives all three.

Limits
- A stage's ``run(cfg)`` must not read ``HydraConfig`` (compose sets none): run dirs are config values
  (training's ``output_dir``), so the orchestrator passes them as overrides.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from nli_cot.core.cli import CONF_DIR, one_line

# stage -> (module with run(cfg), its config name under conf/); a user types the same job as
# `python -m nli_cot.<stage> <overrides>` (every stage has that top-level entry)
STAGES: dict[str, tuple[str, str]] = {
    "train": ("nli_cot.training.train", "config"),
    "predict": ("nli_cot.inference.predict", "predict"),
    "thoughts": ("nli_cot.teacher.thoughts", "thoughts"),
    "reflect": ("nli_cot.teacher.reflect", "reflect"),
    "sft": ("nli_cot.teacher.sft", "sft"),
    "baselines": ("nli_cot.evaluation.baselines", "baselines"),
    "evaluate": ("nli_cot.evaluation.evaluate", "evaluate"),
    "demo_data": ("nli_cot.orchestration.demo_data", "demo_data"),
}
_COMPOSE_LOCK = threading.Lock()  # Hydra's GlobalHydra is process-wide: one composition at a time
log = logging.getLogger("nli_cot.orchestration.run_job")


class JobSpecError(ValueError):
    """A job's config does not compose (a bad override, an unknown key or group option): one line."""


def stage_module(stage: str) -> Any:
    """The stage's module, imported (importing it registers its schemas)."""
    if stage not in STAGES:
        raise JobSpecError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    import nli_cot.core.config  # noqa: F401  (the training schemas, which several stages compose)

    return importlib.import_module(STAGES[stage][0])


def compose_stage(stage: str, overrides: list[str], hydra_context: bool = False) -> Any:
    """The stage's config composed with Hydra's compose API, checked (schema, closed groups, ranges).

    Works inside a Hydra app too (the study's own ``@hydra.main``): its global Hydra state is set aside and
    restored. ``hydra.*`` overrides are dropped (compose sets no run dir; run dirs are config values).
    ``hydra_context`` (the runner, in its own process): ``HydraConfig`` is set as ``@hydra.main`` sets it, so a
    stage that records its overrides (training's ``status.json``, which the ablation chain's skip reads) has them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from nli_cot.core.checks import check_config

    stage_module(stage)
    task = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    with _COMPOSE_LOCK:
        backup = get_gh_backup()
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name=STAGES[stage][1], overrides=task, return_hydra_config=hydra_context)
            if hydra_context:
                from hydra.core.hydra_config import HydraConfig
                from omegaconf import open_dict

                HydraConfig.instance().set_config(cfg)
                with open_dict(cfg):
                    del cfg["hydra"]
            check_config(cfg)
        except Exception as err:  # any composition failure is a mistake in the overrides or the config files
            raise JobSpecError(f"{stage}: {one_line(err)}") from None
        finally:
            restore_gh_from_backup(backup)
    return cfg


def write_spec(path: Path, stage: str, overrides: list[str], cfg: Any) -> Path:
    """The job's spec: stage, overrides and the composed config (resolved), written atomically as YAML."""
    from omegaconf import OmegaConf

    from nli_cot.core.records import atomic_write_text

    spec = OmegaConf.create({"stage": stage, "overrides": list(overrides),
                             "config": OmegaConf.to_container(cfg, resolve=True)})
    head = f"# job spec: python -m nli_cot.orchestration.run_job {path}\n"
    atomic_write_text(Path(path), head + OmegaConf.to_yaml(spec))
    return Path(path)


def spec_command(path: Path, stage: str, overrides: list[str], python: str | None = None) -> list[str]:
    """The job's config composed (``JobSpecError`` when it does not), stored as its spec at ``path``; the argv that
    runs it (``python -m nli_cot.orchestration.run_job <path>``): how every orchestrator starts a stage."""
    spec = write_spec(path, stage, overrides, compose_stage(stage, overrides))
    return [python or sys.executable, "-m", "nli_cot.orchestration.run_job", str(spec)]


def equivalent_command(stage: str, overrides: list[str]) -> list[str]:
    """The command a user types for the same job: ``python -m nli_cot.<stage> <overrides>``."""
    if stage not in STAGES:
        raise JobSpecError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    return ["python", "-m", f"nli_cot.{stage}", *overrides]


def load_spec(path: Path) -> tuple[str, list[str], Any]:
    """(stage, overrides, the config to run): the overrides composed again and checked against the stored config."""
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(OmegaConf.load(path))
    stage, overrides = spec["stage"], list(spec["overrides"])
    cfg = compose_stage(stage, overrides, hydra_context=True)
    now = OmegaConf.to_container(cfg, resolve=True)
    if now != spec["config"]:
        keys = sorted(k for k in set(now) | set(spec["config"]) if now.get(k) != spec["config"].get(k))
        raise JobSpecError(f"{path}: the config composes differently now (conf/ changed since the spec was "
                           f"written: {', '.join(keys)}); rebuild the job")
    return stage, overrides, cfg


def run_stage(stage: str, cfg: Any) -> int:
    """The stage's ``run(cfg)`` with its CLI's error handling: 0, or an exit code after one line on stderr."""
    module = stage_module(stage)
    if stage in ("thoughts", "reflect"):  # their CLIs turn a partial run into an exit code
        from nli_cot.teacher.stage_runner import guarded

        return guarded(module.run, cfg)
    try:
        module.run(cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        traceback.print_exc(file=sys.stdout)
        print(f"error: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nli_cot.orchestration.run_job <job.yaml>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        stage, _, cfg = load_spec(Path(args[0]))
    except (JobSpecError, OSError, KeyError) as err:
        print(f"error: {one_line(err) if not isinstance(err, JobSpecError) else err}", file=sys.stderr)
        return 2
    if stage == "train":  # where `python -m nli_cot.train` logged (Hydra's job log in its run dir)
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(cfg.output_dir) / "train.log", encoding="utf-8")
        handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().addHandler(handler)
    log.info("%s: %s", stage, args[0])
    return run_stage(stage, cfg)


if __name__ == "__main__":
    sys.exit(main())
