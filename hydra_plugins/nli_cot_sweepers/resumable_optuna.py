"""Registers ``nli_cot.optuna_sweeper``'s resumable Optuna sweeper as a Hydra plugin (logic lives there).

Hydra imports every module of ``hydra_plugins`` at start-up, so this shim imports nothing heavy; optuna is
loaded only when the sweeper is used.
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's OptunaSweeper (same config) that continues a stored study up to ``n_trials``."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, search_space: Any, custom_search_space: str | None,
                 params: Any) -> None:
        from nli_cot.optuna_sweeper import ResumableOptunaSweeperImpl

        self.sweeper = ResumableOptunaSweeperImpl(sampler, direction, storage, study_name, n_trials, n_jobs,
                                                  max_failure_rate, search_space, custom_search_space, params)
