"""How one `tune` invocation ends: the study's record on the parent run, the best model registered
(scored as `tuning.identity` says, so the champion moves only past a model measured the same way),
its seed spread when `[study] champion_seeds` asks, and what `polypseg tune` prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna
from optuna.trial import FrozenTrial

from polypseg.config import Config
from polypseg.features.prepare import Prepared
from polypseg.tracking.registry import Registration, register_trial, update_card
from polypseg.tracking.runs import log_figure, tracked_run
from polypseg.training.run import train_seeds
from polypseg.tuning.identity import StudyBase
from polypseg.tuning.plots import study_figures
from polypseg.tuning.spec import StudySpec
from polypseg.tuning.workers import SharedStudy


def finish(
    shared: SharedStudy, prepared: Prepared, config: Config, base: StudyBase, spec: StudySpec
) -> tuple[Counter[str], FrozenTrial | None, Registration | None]:
    """The study's trials by state (as logged), its best trial and that trial's registration.
    Registered under the lock: workers that end together register it once, and the champion
    moves in order."""
    study = shared.study
    counts = Counter(trial.state.name for trial in study.get_trials(deepcopy=False))
    # The whole study's trials, every worker's (this invocation's: `invocation.trials_*`).
    mlflow.log_metrics({f"study.trials_{state.lower()}": n for state, n in counts.items()})
    for name, figure in study_figures(study, base.metric).items():
        log_figure(figure, f"figures/{name}.png")
    if not counts["COMPLETE"]:
        return counts, None, None
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
    if registration.new and spec.champion_seeds > 1:  # a nested run of N seeds' children
        with tracked_run(run_name=f"trial-{best.number} seeds", nested=True):
            trained = spec.trial_config(config, best.params)
            outcome = train_seeds(prepared, trained, spec.champion_seeds)
        spread = {f"polypseg.{k}": f"{v:.4f}" for k, v in outcome.spread.items()}
        seeds = {"polypseg.seeds": str(spec.champion_seeds), "polypseg.seeds_run": outcome.run_id}
        update_card(registration.name, registration.version, {**seeds, **spread})
    return counts, best, registration


def champion_table(
    config: Config, registration: Registration | None, tracking_uri: str | None, progress: bool
) -> list[str]:
    """Under `data.protocol = "pranet"`, the champion's table on PraNet's five test sets, as
    printed: scored now for a new champion, else the one an earlier invocation wrote, if here."""
    if config.data.protocol != "pranet" or registration is None or not registration.champion:
        return []
    from polypseg.evaluation.literature import evaluate_champion

    name, version = registration.name, registration.version
    if registration.new:
        evaluate_champion(config, name, version, tracking_uri, progress)
    table = Path("evaluation") / f"{name}-v{version}" / "table.md"  # `evaluate`'s report folder
    if not table.is_file():
        return []
    return [*table.read_text().splitlines(), f"the champion's table: {table}"]


@dataclass(kw_only=True)
class TuneResult:
    study: optuna.Study
    best: FrozenTrial | None
    registration: Registration | None
    parent_run_id: str
    images_encoded: int  # images the encoder processed in this invocation (0 on a cache hit)
    counts: Counter[str]  # trials of the whole study, by state
    storage: str  # the storage URL, password masked
    experiment_id: str
    metric: str = "val_dice"  # the study's objective, as the spec names it
    measured_on: str = ""  # the data set and encoder: `data Kvasir-SEG, encoder sam_vit_b`
    view_key: str = ""  # the MLflow UI's saved view of the study's trials
    champion_table: list[str] = field(default_factory=list)  # `champion_table`'s lines

    def summary(self) -> list[str]:
        c = self.counts
        lines = [
            f"study {self.study.study_name} ({self.storage}): {sum(c.values())} trials, "
            f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed; "
            f"encoder ran on {self.images_encoded} images now"
        ]
        if self.best is not None:
            params = ", ".join(f"{k}={_value(v)}" for k, v in self.best.params.items())
            lines.append(
                f"best trial #{self.best.number}: {self.metric}={self.best.value:.4f} {params}"
            )
        if self.registration is not None:
            reg = self.registration
            champion = f" (champion: models:/{reg.name}@champion)" if reg.champion else ""
            if reg.kept:
                champion = f" (champion not moved: {reg.kept})"
            lines.append(f"registered model {reg.name} version {reg.version}{champion}")
        return lines

    def best_trials_table(self) -> list[str]:
        """The best trials with a value (a pruned one's: its last report), best first."""
        study, metric = self.study, self.metric
        frame = study.trials_dataframe(attrs=("number", "state", "value", "params"))
        if frame.empty or (frame := frame[frame.value.notna()]).empty:
            return []
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        best = frame.sort_values(["value", "number"], ascending=[minimize, True]).head(10)
        trials = study.get_trials(deepcopy=False)  # trial n is trials[n]
        # Optuna sorts the params by name; the spec's order reads better.
        params = list(dict.fromkeys(key for n in best.number for key in trials[n].params))
        best = best[["number", "state", "value", *(f"params_{key}" for key in params)]]
        best.columns = ["trial", "state", metric, *params]
        formats = {metric: "{:.4f}".format, **dict.fromkeys(params, _value)}
        table = best.to_string(index=False, na_rep="-", formatters=formats)
        on = f"; {self.measured_on}" if self.measured_on else ""
        title = f"best {len(best)} of {len(study.trials)} trials (by {metric}{on}):"
        return [title, *table.splitlines()]


def _value(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
