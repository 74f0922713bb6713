"""Start-up checks shared by the Hydra apps: a bad override is reported in one line before Hydra runs.

Hydra's own messages for a wrong type or an unknown option are correct but span several lines; a user who typed
``lora.r=abc`` deserves one, with its cause ("Value 'abc' ... could not be converted to Integer"). The check
composes the config with Hydra's compose API (the same schemas and YAML files), so it cannot disagree with the
real run, then runs ``nli_cot.core.checks.check_config`` (closed groups, numeric ranges) on the result. An unknown
key of a schema group names the nearest valid key and never suggests Hydra's ``+key=value`` (the group is
closed). Multirun sweeps are left to Hydra: there each job reports alone (and each app checks its own config).
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
_HYDRA_FLAGS = ("-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--resolve",
                "--package", "-p", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--version")
_NOISE = ("reference_type", "object_type", "Config search path", "provider=", "Set the environment variable")


def _lines(err: BaseException) -> list[str]:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return [ln for ln in lines if not ln.startswith(_NOISE) and not ln.endswith("_schema")]


def _unknown_key(err: BaseException) -> str | None:
    """``lora.rank: unknown key in 'lora' (did you mean lora.r?)`` for OmegaConf's key error on a schema node."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from nli_cot.core.checks import _schema_fields, unknown_key_message

    if not isinstance(err, (ConfigAttributeError, ConfigKeyError)) or not getattr(err, "full_key", None):
        return None
    node = getattr(err, "parent_node", None)
    valid = _schema_fields(node) if node is not None else None
    if valid is None and getattr(err, "object_type", None) is not None:
        import dataclasses

        typ = err.object_type
        valid = [f.name for f in dataclasses.fields(typ)] if dataclasses.is_dataclass(typ) else None
    return unknown_key_message(str(err.full_key), valid) if valid is not None else None


def one_line(err: BaseException) -> str:
    """Hydra/OmegaConf's multi-line error as one line with its causes, schema internals left out."""
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or (cur.__context__ if not cur.__suppress_context__ else None)
    for e in chain:
        if (unknown := _unknown_key(e)) is not None:
            return unknown
    kept: list[str] = []
    for e in chain:
        for ln in _lines(e):
            if ln.startswith("To append to your config use +") or ln.startswith("full_key:"):
                continue  # the key is named already; '+' would add a key the schema does not have
            if ln not in kept:
                kept.append(ln)
    return "; ".join(kept)


def preflight(config_name: str, argv: list[str] | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides; on a mistake print one line and exit 2."""
    from hydra import compose, initialize_config_dir

    import nli_cot.core.config  # noqa: F401  (registers the schemas)

    args = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] in _HYDRA_FLAGS for a in args):
        return
    overrides = [a for a in args if not a.lstrip("+~").startswith("hydra.") and not a.startswith("-")]
    from nli_cot.core.checks import check_config

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
        check_config(cfg)
    except Exception as err:  # any composition failure is a user mistake in the overrides or config files
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
