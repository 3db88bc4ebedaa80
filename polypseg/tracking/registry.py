"""The MLflow Model Registry: a study's best trial becomes a version; the champion alias moves.

No retraining: the best trial's `decoder/decoder.pt` is put together with the shared encoder
into one pyfunc model, logged into the study's parent run and registered. The `champion` alias
moves to the new version only when its validation Dice beats the current champion's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch

from polypseg.models.decoder import SimpleDecoder
from polypseg.models.encoders import FrozenEncoder
from polypseg.tracking.pyfunc import log_segmenter_model

CHAMPION = "champion"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    champion: bool
    new: bool  # False when this trial was registered by an earlier invocation


def load_decoder(run_id: str) -> SimpleDecoder:
    """A trial's decoder, from the `decoder/decoder.pt` artifact of its run."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="decoder/decoder.pt")
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    decoder = SimpleDecoder(saved["in_channels"], saved["width"])
    decoder.load_state_dict(saved["state"])
    return decoder.eval()


def _existing(
    name: str, study: str, trial: int
) -> mlflow.entities.model_registry.ModelVersion | None:
    client = mlflow.MlflowClient()
    query = (
        f"name = '{name}' and tag.`polypseg.study` = '{study}' and tag.`polypseg.trial` = '{trial}'"
    )
    found = client.search_model_versions(query)
    return found[0] if found else None


def _champion_score(name: str) -> float | None:
    from mlflow.exceptions import MlflowException

    try:
        current = mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return float(current.tags.get("val_dice", "nan"))


def register_trial(
    name: str,
    *,
    study: str,
    trial: int,
    run_id: str,
    encoder: FrozenEncoder,
    image_size: int,
    val_dice: float,
    test_dice: float | None,
) -> Registration:
    """Register a trial's model (once) and move `champion` to it if it is the best so far."""
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
            "val_dice": f"{val_dice:.6f}",
        }
        if test_dice is not None:
            tags["test_dice"] = f"{test_dice:.6f}"
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    current = _champion_score(name)
    champion = current is None or val_dice > current
    if champion:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    else:
        aliases = client.get_model_version(name, version.version).aliases
        champion = CHAMPION in aliases
    return Registration(name, str(version.version), champion, new)
