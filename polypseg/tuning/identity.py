"""What a study studies, fixed for its whole life: one objective, one data set, one encoder.

A study compares its trials with each other, so every trial must be scored by the same metric on
the same data and split, over the features of the same encoder at the same image size. Three
things follow. `FIXED_KEYS` lists the config keys a search space may not touch, each with its
reason: the study prepares the data, the split and the feature cache once, before any trial
(`data.augment` excepted: the cache is built for the union of its choices). `StudyBase` is what a
study records when it is created (the user attribute `polypseg.base`) and what every later
worker, or a resumed run, must match: another metric, data set, split or encoder is refused,
naming the difference (`check_base`). And the same identity tags each registered version
(`StudyBase.score`), so a champion is compared only with models scored by the same metric on the
same data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from polypseg.errors import ConfigError

if TYPE_CHECKING:  # the spec loads this module before torch and mlflow are imported
    import optuna

    from polypseg.config import Config
    from polypseg.features.prepare import Prepared
    from polypseg.tracking.registry import Score

# Keys (a section ends with ".") that a trial cannot change, and why: the reason a spec that
# searches one is refused with. A searched value that never acts would show in the table and
# the params while every trial trained on the study's own value.
FIXED_KEYS = {
    "data.": "the study prepares the data, its split and the feature cache once, before any "
    "trial (of [data], only data.augment may be searched)",
    "encoder.": "the study builds the feature cache once, with one encoder; run one study per "
    "encoder",
    "train.epochs": "every trial trains for the study's own [study] epochs; set those instead",
    "train.device": "the study chooses its device once (--n-jobs spreads trials over GPUs)",
    "tracking.": "a study logs to one experiment and registers one model",
}
SEARCHABLE = ("data.augment",)  # the study caches the union of its choices (tuning.study)
BASE_ATTR = "polypseg.base"


def fixed_key_reason(key: str) -> str | None:
    """Why `key` cannot be searched, or None when a trial's value for it acts."""
    if key in SEARCHABLE:
        return None
    for fixed, reason in FIXED_KEYS.items():
        if key == fixed or (fixed.endswith(".") and key.startswith(fixed)):
            return reason
    return None


@dataclass(frozen=True)
class StudyBase:
    """A study's objective and what its trials are measured on; the fields in the order a
    refusal names them (the readable ones first, the digests last)."""

    metric: str
    direction: str
    data: str  # the data set: its folder's name, `synthetic/n100-seed0` or `pranet`
    protocol: str
    split_seed: int
    ratios: list[float]
    image_size: int
    encoder: str  # the encoder the features came from (after any fallback)
    weights: str  # its weights' digest: another checkpoint is another encoder
    split: str  # the split's digest: its file names, seed and ratios

    @classmethod
    def of(cls, metric: str, direction: str, config: Config, prepared: Prepared) -> StudyBase:
        data = config.data
        return cls(
            metric=metric,
            direction=direction,
            data=data_label(config, prepared),
            protocol=data.protocol,
            split_seed=data.split_seed,
            ratios=[float(r) for r in data.ratios],
            image_size=data.image_size,
            encoder=prepared.encoder.name,
            weights=prepared.encoder.weights_digest[:16],
            split=split_identity(prepared.split.manifest()),
        )

    def score(self, value: float) -> Score:
        """A trial's value, as the registry compares it: by this metric, on this split."""
        from polypseg.tracking.registry import Score

        return Score(self.metric, value, self.direction, self.data, self.split)


def data_label(config: Config, prepared: Prepared) -> str:
    """The data set's short name, shown in the best-trials table and on model versions."""
    if config.data.protocol == "pranet":
        return "pranet"
    if config.data.source == "synthetic":
        return f"synthetic/{prepared.root.name}"
    return prepared.root.name or str(prepared.root)


def split_identity(manifest: dict[str, Any]) -> str:
    """16 hex digits naming a split by its file names, seed and ratios. Its folders are left
    out (`sources`, under `pranet`), so workers on machines holding the data at other paths
    agree; a seed split's digest is `Split.digest()`."""
    named = {key: value for key, value in manifest.items() if key != "sources"}
    return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:16]


def check_base(study: optuna.Study, base: StudyBase) -> None:
    """Record `base` on a study that has none yet (a new one, or one older than this record);
    refuse a study recorded with another objective, data set or encoder, naming what differs.
    Call it under the study lock, so two new workers record one base."""
    record = asdict(base)
    stored = dict(study.user_attrs.get(BASE_ATTR) or {})
    stored.setdefault("direction", study.direction.name.lower())  # Optuna's own, for old ones
    differ = [key for key, value in record.items() if key in stored and stored[key] != value]
    if differ:
        was = ", ".join(f"{key} {_shown(stored[key])}" for key in differ)
        now = ", ".join(f"{key} {_shown(record[key])}" for key in differ)
        raise ConfigError(
            f"study {study.study_name!r} was made for {was}; this run has {now}: a study compares "
            "trials by one metric on one data set and encoder; resume it with the config and spec "
            "it was made with, or start another study with --study-name NAME"
        )
    if BASE_ATTR not in study.user_attrs:
        study.set_user_attr(BASE_ATTR, record)


def _shown(value: Any) -> str:
    return "/".join(f"{r:g}" for r in value) if isinstance(value, list) else str(value)
