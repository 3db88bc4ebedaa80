"""How one `tune` invocation ends, after its trials: the record, the registry, the literature.

`finish` logs the study's trial counts, plots and best trial to the invocation's parent run and
registers the best trial's model, scored by the study's metric on its data (`tuning.identity`),
so the champion moves only past a model measured the same way. `score_on_literature_sets` then
gives a champion trained under `data.protocol = "pranet"` its table on PraNet's five test sets
(`evaluation.literature`).
"""

from __future__ import annotations

import mlflow
import optuna

from polypseg.config import Config
from polypseg.features.prepare import Prepared
from polypseg.tracking.registry import Registration, register_trial
from polypseg.tuning.identity import StudyBase
from polypseg.tuning.plots import log_study_plots
from polypseg.tuning.workers import SharedStudy


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials by state name, every state present (0 when none)."""
    counts = {state.name: 0 for state in optuna.trial.TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def finish(
    shared: SharedStudy, prepared: Prepared, config: Config, base: StudyBase
) -> tuple[optuna.trial.FrozenTrial | None, Registration | None]:
    """Log the best trial and study plots to the parent run; register the best model.

    Registration runs under the study lock: workers that end together register the best trial
    once, and the champion alias moves in order.
    """
    study = shared.study
    counts = trial_counts(study)
    # The whole study's trials, every worker's (this invocation's: `invocation.trials_*`).
    mlflow.log_metrics({f"study.trials_{state.lower()}": n for state, n in counts.items() if n})
    log_study_plots(study, base.metric)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return None, None
    best = study.best_trial
    mlflow.log_params({f"best.{key}": value for key, value in best.params.items()})
    mlflow.log_metrics({"best_value": best.value, "best_trial": best.number})
    with shared.lock():
        registration = register_trial(
            config.tracking.registered_model,
            study=study.study_name,
            trial=best.number,
            run_id=best.user_attrs["mlflow_run_id"],
            encoder=prepared.encoder,
            image_size=config.data.image_size,
            score=base.score(best.value),
            test_dice=best.user_attrs.get("test_dice"),
        )
    return best, registration


def score_on_literature_sets(
    config: Config, registration: Registration | None, tracking_uri: str | None, progress: bool
) -> None:
    """Under `data.protocol = "pranet"`, a new champion's table on PraNet's five test sets (a
    champion an earlier invocation registered has its table already)."""
    if config.data.protocol != "pranet" or registration is None:
        return
    if registration.champion and registration.new:
        from polypseg.evaluation.literature import evaluate_champion

        evaluate_champion(config, registration.name, registration.version, tracking_uri, progress)


def check_literature_sets(config: Config) -> None:
    """Under `data.protocol = "pranet"`, every test set's folder found (or downloaded) before
    any trial: a missing set is one line now, not a failure after the study has run."""
    if config.data.protocol == "pranet":
        from polypseg.data.protocol import set_root
        from polypseg.data.sets import SETS

        for name in SETS:
            set_root(config.data, name)
