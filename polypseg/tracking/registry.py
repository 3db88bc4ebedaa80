"""The MLflow Model Registry: a study's best trial becomes a version, tagged with what it was scored
by (`Score`). `champion` moves to it only when it beats the champion by the same metric on the same
data and split, or stays with the reason (`Registration.kept`). The model card, the version's
description, is built from its tags alone, so writers (`tune`, `evaluate`, `compare`) only set tags
through `update_card`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from polypseg.models.decoder import decoder_from_record
from polypseg.models.encoders import FrozenEncoder
from polypseg.tracking.pyfunc import log_segmenter_model

CHAMPION = "champion"
TABLE_PREFIX = "pranet."  # the tags of the version's table: `pranet.<set>.<figure>`
TABLE_FIGURES = ("n_images", "mdice", "miou", "wfm", "s_alpha", "mean_em", "max_em", "mae")
USE = (
    "**Intended use and limits:** a research model for comparing polyp segmentation methods "
    "under a stated protocol. It is not a medical device: not for diagnosis, screening or any "
    "clinical decision. Its figures hold for the data named above; other endoscopes, centres "
    "and populations are untested."
)


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    champion: bool
    new: bool  # False when this trial was registered by an earlier invocation
    kept: str = ""  # why the champion alias stayed where it was (empty when it moved here)


@dataclass(frozen=True)
class Score:
    metric: str
    value: float
    direction: str = "maximize"
    data: str = ""
    split: str = ""

    def tags(self) -> dict[str, str]:
        return {
            "polypseg.metric": self.metric,
            "polypseg.direction": self.direction,
            self.metric: f"{self.value:.6f}",
            "polypseg.data": self.data,
            "polypseg.split": self.split,
        }


RUN_TAGS = ("polypseg.precision", "polypseg.weights_digest", "polypseg.split_digest")


def _params(params: dict[str, str], prefixes: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k.startswith(prefixes))


def update_card(name: str, version: str, tags: dict[str, str], family: str = "") -> None:
    """Set `tags` on a version, first dropping its other `family` tags (one evaluation's rows
    never mix with an earlier one's), then rewrite its card."""
    client = mlflow.MlflowClient()
    for key in client.get_model_version(name, version).tags if family else ():
        if key.startswith(family) and key not in tags:
            client.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    card = model_card(name, version, client.get_model_version(name, version).tags)
    client.update_model_version(name, version, description=card)


def _table(tags: dict[str, str]) -> list[str]:
    from polypseg.data.sets import SETS

    rows: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        set_name, _, figure = key.removeprefix(TABLE_PREFIX).rpartition(".")
        if key.startswith(TABLE_PREFIX) and set_name:
            rows.setdefault(set_name, {})[figure] = value
    order = sorted(rows, key=lambda s: list(SETS).index(s) if s in SETS else len(SETS))
    lines = ["| Data set | " + " | ".join(TABLE_FIGURES) + " |", "|---" + "|--:" * 8 + "|"]
    for name in order:
        row = rows[name]
        cells = [f"{row.get(k, '-')} {row.get(k + '_ci', '')}".strip() for k in TABLE_FIGURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def model_card(name: str, version: str, tags: dict[str, str]) -> str:
    """A version's card (Markdown), from its tags alone."""

    def t(key: str) -> str:
        return tags.get(key, "not recorded")

    lines = [
        f"# {name} version {version}",
        "",
        f"- **Data:** {t('polypseg.data')}; split digest {t('polypseg.split')} (file lists "
        f"{t('polypseg.split_digest')})",
        f"- **Encoder:** {t('polypseg.encoder')} (weights {t('polypseg.weights_digest')}), "
        f"precision {t('polypseg.precision')}, image size {t('polypseg.image_size')}",
        f"- **Decoder:** {t('polypseg.decoder')}",
        f"- **Recipe:** {t('polypseg.recipe')}",
        f"- **Chosen by:** {tags.get('polypseg.metric', 'val_dice')} = "
        f"{tags.get(tags.get('polypseg.metric', 'val_dice'), '-')} (study "
        f"{t('polypseg.study')}, trial {t('polypseg.trial')}); test_dice {t('test_dice')}",
    ]
    if "polypseg.seeds" in tags:
        lines.append(
            f"- **Seed spread** ({tags['polypseg.seeds']} seeds, run {t('polypseg.seeds_run')}):"
            + "".join(
                f" {f} {t(f'polypseg.{f}_mean')} ± {t(f'polypseg.{f}_sd')} (min "
                f"{t(f'polypseg.{f}_min')}, max {t(f'polypseg.{f}_max')});"
                for f in ("val_dice", "test_dice")
            )
        )
    else:
        lines.append("- **Seed spread:** not measured (one seed; `[study] champion_seeds = N`)")
    lines.append(f"- **Compared:** {tags.get('polypseg.comparison', 'not yet (polypseg compare)')}")
    lines.append(f"- **Latest evaluation:** {tags.get('polypseg.evaluation', 'none yet')}")
    lines += ["", "## Per-set table (PraNet's protocol, 95 % bootstrap intervals)", ""]
    if any(key.startswith(TABLE_PREFIX) for key in tags):
        lines += _table(tags)
        lines.append(f"\nEvaluation run {t('pranet.evaluation_run')}, TTA {t('pranet.tta')}.")
    else:
        lines.append(
            f"Not evaluated yet: polypseg evaluate --model models:/{name}/{version} --sets pranet"
        )
    return "\n".join([*lines, "", USE]) + "\n"


def _why_kept(champion: ModelVersion, score: Score) -> str:
    """Why `score` does not take the champion's place; empty when it beats it."""
    tags = champion.tags
    metric = tags.get("polypseg.metric", "val_dice")  # versions tagged before the metric was
    was = f"version {champion.version}"
    if metric != score.metric:
        return f"{was} was scored by {metric}, this one by {score.metric}, so they do not compare"
    split = tags.get("polypseg.split", score.split)  # unknown on older versions: compared
    if split != score.split:
        data = tags.get("polypseg.data", "")
        was_on, now_on = (data, score.data) if data != score.data else (split, score.split)
        return f"{was} was scored on {was_on}, this one on {now_on}, so they do not compare"
    current = float(tags.get(metric, "nan"))
    higher = score.direction == "maximize"
    if not math.isfinite(current) or (score.value > current if higher else score.value < current):
        return ""
    return f"{was} has {metric} {current:.4f}, this one {score.value:.4f}"


def register_trial(
    name: str,
    *,
    study: str,
    trial: int,
    run_id: str,
    encoder: FrozenEncoder,
    image_size: int,
    score: Score,
    test_dice: float | None,
) -> Registration:
    """Register a trial's model (once); move `champion` to it, or say why it stays."""
    client = mlflow.MlflowClient()
    query = f"tag.`polypseg.study` = '{study}' and tag.`polypseg.trial` = '{trial}'"
    found = client.search_model_versions(f"name = '{name}' and {query}")
    version = found[0] if found else None
    new = version is None
    if new:
        path = download_artifacts(run_id=run_id, artifact_path="decoder/decoder.pt")
        decoder = decoder_from_record(torch.load(Path(path), map_location="cpu", weights_only=True))
        info = log_segmenter_model(encoder, decoder, image_size, name=f"trial-{trial}")
        run = client.get_run(run_id).data
        tags = {
            "polypseg.study": study,
            "polypseg.trial": str(trial),
            "polypseg.trial_run_id": run_id,
            "polypseg.encoder": encoder.name,
            "polypseg.image_size": str(image_size),
            **{k: run.tags[k] for k in RUN_TAGS if k in run.tags},
            "polypseg.decoder": _params(run.params, ("decoder.",)),
            "polypseg.recipe": _params(run.params, ("train.", "data.augment")),
            **score.tags(),
        }
        if test_dice is not None:
            tags["test_dice"] = f"{test_dice:.6f}"
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        update_card(name, str(version.version), {})
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == str(version.version):
        return Registration(name, str(version.version), True, new)
    kept = "" if champion is None else _why_kept(champion, score)
    if not kept:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return Registration(name, str(version.version), not kept, new, kept)
