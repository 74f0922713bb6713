"""Registers ``nli_cot.orchestration.optuna_sweeper``'s resumable Optuna sweeper as a Hydra plugin (logic lives there).

Hydra imports every module of ``hydra_plugins`` at start-up, so this shim imports nothing heavy; optuna is
loaded only when the sweeper is used.
"""

from __future__ import annotations

import importlib.util
from typing import Any

# Without hydra-optuna-sweeper (e.g. the GPU machine's bare python) there is nothing to register: define no plugin
# rather than make Hydra print an import warning at every start-up of every app.
if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
else:  # pragma: no cover - exercised only where the plugin is missing
    OptunaSweeper = None


class _Unavailable:
    """Stands in for OptunaSweeper when it is not installed (never registered: not a Hydra Plugin)."""


class ResumableOptunaSweeper(OptunaSweeper or _Unavailable):  # type: ignore[misc]
    """Hydra's OptunaSweeper (same config) that continues a stored study up to ``n_trials``."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, search_space: Any, custom_search_space: str | None,
                 params: Any) -> None:
        from nli_cot.orchestration.optuna_sweeper import ResumableOptunaSweeperImpl

        self.sweeper = ResumableOptunaSweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                                  max_failure_rate, search_space, custom_search_space, params)
