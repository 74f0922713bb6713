"""Hydra's Optuna sweeper, made to continue an interrupted search: ``hydra/sweeper=optuna_resumable``.

The Hydra plugin class is ``hydra_plugins.nli_cot_sweepers.resumable_optuna.ResumableOptunaSweeper`` (Hydra
loads plugins only from that namespace); the behaviour is here.

The plugin (hydra-optuna-sweeper) already stores trials in ``storage`` under ``study_name``, but a second run of
the same command runs ``n_trials`` more trials, numbers its jobs from 0 again (into the dirs of the first run's
jobs) and leaves the trial that was running at the kill as RUNNING forever. This subclass, before sweeping:

- marks trials left RUNNING by a killed sweeper as FAIL with user attr ``interrupted`` (and their job's
  ``status.json`` as ``interrupted``), and does not count them;
- treats ``n_trials`` as the size of the study: it runs only the trials still missing (finished, pruned and
  failed trials count, so a config that always fails can't loop forever);
- numbers jobs from the study's trial count, so job dir ``<sweep dir>/<n>`` is trial ``n``;
- reseeds a seeded sampler, which would otherwise propose its first trials again;
- creates the parent folder of a ``sqlite:///`` storage file (Hydra creates the sweep dir only at launch).

Limits
- One sweeper process per study at a time: a RUNNING trial is taken to be a dead one.
- Job dir n = trial n holds only while a study is used with one sweep dir (conf/sweep/optuna.yaml ties both).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"
_SQLITE = "sqlite:///"


def _mark_job_interrupted(sweep_dir: Path, number: int) -> None:
    from nli_cot.core.records import write_json_atomic

    for status_file in (sweep_dir / str(number)).glob("*/status.json"):
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            continue
        if status.get("status") == "running":
            write_json_atomic(status_file, {**status, "status": INTERRUPTED,
                                            "error": "the sweeper was stopped while this trial ran"})


def counted_trials(study: Any) -> int:
    """Trials that used up the budget: finished, pruned or failed, but not interrupted ones."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in done and not t.user_attrs.get(INTERRUPTED) for t in study.trials)


def reap_interrupted(study: Any, sweep_dir: Path | None = None) -> list[int]:
    """Mark RUNNING trials (left by a killed sweeper) as failed + interrupted; returns their numbers."""
    from optuna.trial import TrialState

    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        if sweep_dir is not None:
            _mark_job_interrupted(sweep_dir, trial.number)
        reaped.append(trial.number)
    return reaped


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    """The plugin's sweeper implementation with the resume rules of this module's docstring."""

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        if isinstance(self.storage, str) and self.storage.startswith(_SQLITE):
            Path(self.storage[len(_SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
        if self.storage and self.study_name:
            try:
                study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            except KeyError:  # a new study: the plugin creates it
                study = None
            if study is not None and study.trials:
                reaped = reap_interrupted(study, Path(self.sweep_dir))
                done = counted_trials(study)
                log.info("study %s: %d trials counted, %d interrupted trial(s) %s marked failed; %d to run",
                         self.study_name, done, len(reaped), reaped, max(0, self.n_trials - done))
                self.n_trials = max(0, self.n_trials - done)
                self.job_idx = len(study.trials)
                if hasattr(self.sampler, "reseed_rng"):
                    self.sampler.reseed_rng()
        super().sweep(arguments)
