"""What `polypseg tune` tells the user when it ends: the best trials, the study, the champion.

`TuneResult` holds a finished invocation's outcome; `best_trials_table` lays the best trials out
as plain text (one row per trial: number, state, the study's metric, each searched parameter;
its title names the data set and encoder every trial was measured on), so a user can choose
without opening the UI; `summary` is the few lines scripts read, with why the champion stayed
when it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from polypseg.tracking.registry import Registration

TABLE_ROWS = 10


@dataclass(kw_only=True)
class TuneResult:
    """What one `tune` invocation ended with (built by keyword: its fields are many)."""

    study: optuna.Study
    best: FrozenTrial | None
    registration: Registration | None
    parent_run_id: str
    images_encoded: int  # images the encoder processed in this invocation (0 on a cache hit)
    counts: dict[str, int]  # trials of the whole study, by state
    storage: str  # the storage URL, password masked
    experiment_id: str
    metric: str = "val_dice"  # the study's objective, as the spec names it
    measured_on: str = ""  # the data set and encoder: `data Kvasir-SEG, encoder sam_vit_b`
    view_key: str = ""  # the MLflow UI's saved view of the study's trials
    ran: dict[str, int] = field(default_factory=dict)  # trials this invocation ran, by state

    def summary(self) -> list[str]:
        """What `polypseg tune` prints last: the study, the best trial, the registered version."""
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

    def best_trials_table(self, rows: int = TABLE_ROWS) -> list[str]:
        """The study's best trials (those with a value), best first, as aligned text lines."""
        return best_trials_table(self.study, self.metric, rows, self.measured_on)


def _value(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_trials_table(
    study: optuna.Study, metric: str, rows: int = TABLE_ROWS, measured_on: str = ""
) -> list[str]:
    """Up to `rows` trials with a value, best first (a pruned trial's value is its last report).

    An empty list when no trial has a value yet.
    """
    scored = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.value is not None
    ]
    if not scored:
        return []
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    best = sorted(scored, key=lambda t: (sign * t.value, t.number))[:rows]
    params = list(dict.fromkeys(key for t in best for key in t.params))  # the spec's order
    header = ["trial", "state", metric, *params]
    body = [
        [
            str(t.number),
            t.state.name,
            f"{t.value:.4f}",
            *(_value(t.params.get(p, "-")) for p in params),
        ]
        for t in best
    ]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    # Numbers right-aligned, the state left-aligned: columns read down like a spreadsheet.
    lines = [
        "  ".join(
            cell.ljust(w) if i == 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in (header, *body)
    ]
    on = f"; {measured_on}" if measured_on else ""
    title = f"best {len(best)} of {len(study.trials)} trials (by {metric}{on}):"
    return [title, *lines]
