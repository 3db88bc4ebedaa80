"""What a study studies, fixed for its whole life: one objective, one data set, one encoder.

Trials are compared with each other, so all are scored by one metric on one data set and split,
over one encoder's features at one image size: a search space may not touch the keys that fix
them (`FIXED_KEYS`), and every later worker must match what a new study recorded (`StudyBase`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from polypseg.errors import PolypsegError

if TYPE_CHECKING:  # the spec loads this module before torch and mlflow are imported
    import optuna

    from polypseg.config import Config
    from polypseg.features.prepare import Prepared
    from polypseg.tracking.registry import Score

# Keys (a section ends with ".") a trial cannot change, and the reason a spec searching one is
# refused with: a value that never acts would show in the table while no trial used it.
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
    """A study's objective and what its trials are measured on, in the order a refusal names
    them."""

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
        data, root = config.data, prepared.root
        label = f"synthetic/{root.name}" if data.source == "synthetic" else root.name or str(root)
        # The split named by its file names, seed and ratios, not its folders (`sources`):
        # workers holding the data at other paths agree.
        manifest = {k: v for k, v in prepared.split.manifest().items() if k != "sources"}
        return cls(
            metric=metric,
            direction=direction,
            data="pranet" if data.protocol == "pranet" else label,
            protocol=data.protocol,
            split_seed=data.split_seed,
            ratios=[float(r) for r in data.ratios],
            image_size=data.image_size,
            encoder=prepared.encoder.name,
            weights=prepared.encoder.weights_digest[:16],
            split=hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16],
        )

    def score(self, value: float) -> Score:
        """A trial's value, as the registry compares it: by this metric, on this split."""
        from polypseg.tracking.registry import Score

        return Score(self.metric, value, self.direction, self.data, self.split)


def check_base(study: optuna.Study, base: StudyBase) -> None:
    """Record `base` on a study that has none; refuse one recorded with another objective, data
    set or encoder, naming what differs. Under the study lock: two new workers record one."""
    record = asdict(base)
    stored = dict(study.user_attrs.get(BASE_ATTR) or {})
    stored.setdefault("direction", study.direction.name.lower())  # Optuna's own, for old ones
    differ = [key for key, value in record.items() if key in stored and stored[key] != value]
    if differ:
        was = ", ".join(f"{key} {_shown(stored[key])}" for key in differ)
        now = ", ".join(f"{key} {_shown(record[key])}" for key in differ)
        raise PolypsegError(
            f"study {study.study_name!r} was made for {was}; this run has {now}: a study compares "
            "trials by one metric on one data set and encoder; resume it with the config and spec "
            "it was made with, or start another study with --study-name NAME"
        )
    if BASE_ATTR not in study.user_attrs:
        study.set_user_attr(BASE_ATTR, record)


def _shown(value: Any) -> str:
    return "/".join(f"{r:g}" for r in value) if isinstance(value, list) else str(value)
