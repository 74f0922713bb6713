"""Shared test set-up: offline everywhere, paths to the repo, its configs and the shared data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared NLI data not found at {SHARED_DATA} (it sits beside the checkout)")
    return SHARED_DATA


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """The composed (unresolved) config, exactly as `python -m nli_cot.<app>` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import nli_cot.core.config  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


@pytest.fixture(scope="session")
def tiny_model_cfg():
    return compose(["model=tiny_mistral"]).model


@pytest.fixture(scope="session")
def mistral_tokenizer(tiny_model_cfg):
    from nli_cot.models.modeling import load_tokenizer

    return load_tokenizer(tiny_model_cfg)


def run_module(module: str, args: list[str], cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m <module> <args>` the way a user would, capturing its output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
