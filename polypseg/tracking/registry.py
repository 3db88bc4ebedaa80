"""The MLflow Model Registry: a study's best trial becomes a version; the champion alias moves.

The best trial's decoder and the shared encoder become one pyfunc model, logged into the study's
parent run and registered, tagged with what it was scored by (`Score`). `champion` moves to it
only when it beats the champion by the same metric on the same data and split; otherwise the
champion stays, with the reason (`Registration.kept`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from polypseg.models.decoder import Decoder, decoder_from_record
from polypseg.models.encoders import FrozenEncoder
from polypseg.tracking.pyfunc import log_segmenter_model

CHAMPION = "champion"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    champion: bool
    new: bool  # False when this trial was registered by an earlier invocation
    kept: str = ""  # why the champion alias stayed where it was (empty when it moved here)


@dataclass(frozen=True)
class Score:
    """What a version is compared by: `metric`'s `value` on data set `data`, split `split`."""

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


def load_decoder(run_id: str) -> Decoder:
    """A trial's decoder, from its run's `decoder/decoder.pt` artifact."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="decoder/decoder.pt")
    return decoder_from_record(torch.load(Path(path), map_location="cpu", weights_only=True))


def _existing(
    name: str, study: str, trial: int
) -> mlflow.entities.model_registry.ModelVersion | None:
    client = mlflow.MlflowClient()
    query = (
        f"name = '{name}' and tag.`polypseg.study` = '{study}' and tag.`polypseg.trial` = '{trial}'"
    )
    found = client.search_model_versions(query)
    return found[0] if found else None


def _champion(name: str) -> mlflow.entities.model_registry.ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _why_kept(champion: mlflow.entities.model_registry.ModelVersion, score: Score) -> str:
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
    version = _existing(name, study, trial)
    new = version is None
    if new:
        info = log_segmenter_model(encoder, load_decoder(run_id), image_size, name=f"trial-{trial}")
        tags = {
            "polypseg.study": study,
            "polypseg.trial": str(trial),
            "polypseg.trial_run_id": run_id,
            "polypseg.encoder": encoder.name,
            "polypseg.image_size": str(image_size),
            **score.tags(),
        }
        if test_dice is not None:
            tags["test_dice"] = f"{test_dice:.6f}"
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    champion = _champion(name)
    if champion is not None and str(champion.version) == str(version.version):
        return Registration(name, str(version.version), True, new)
    kept = "" if champion is None else _why_kept(champion, score)
    if not kept:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return Registration(name, str(version.version), not kept, new, kept)
