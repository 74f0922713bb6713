"""Start-up checks shared by the Hydra apps: a bad override is reported in one line before Hydra runs.

Hydra's own messages for a wrong type or an unknown option are correct but span several lines; a user who typed
``lora.r=abc`` deserves one. The check composes the config with Hydra's compose API (the same schemas and YAML
files), so it cannot disagree with the real run. Multirun sweeps are left to Hydra: there each job reports alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
_HYDRA_FLAGS = ("-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--resolve",
                "--package", "-p", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--version")
_NOISE = ("reference_type", "object_type", "Config search path", "provider=", "Set the environment variable")


def one_line(err: BaseException) -> str:
    """Hydra/OmegaConf's multi-line error as one line, schema internals left out."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(_NOISE) and not ln.endswith("_schema")]
    return "; ".join(kept)


def preflight(config_name: str, argv: list[str] | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides; on a mistake print one line and exit 2."""
    from hydra import compose, initialize_config_dir

    import nli_cot.config  # noqa: F401  (registers the schemas)

    args = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] in _HYDRA_FLAGS for a in args):
        return
    overrides = [a for a in args if not a.lstrip("+~").startswith("hydra.") and not a.startswith("-")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name=config_name, overrides=overrides)
    except Exception as err:  # any composition failure is a user mistake in the overrides or config files
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
