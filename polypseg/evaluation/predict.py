"""Prediction with a logged or registered model: `<stem>.png` masks at each image's own size.

`Predictor` loads a model URI and exposes the pyfunc's own segmenter (its probability map at the
original size, thresholded as the model does) and which model it is (`describe`); `evaluate`
scores with it too. `predict` takes files, folders or glob patterns and writes 0/255 masks, or
8-bit probability maps (`maps`, what other methods publish and PraNet's protocol scores),
atomically, optionally overlays, and logs one run to the `polypseg-prediction` experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from polypseg.data.checks import is_broken_link, refuse_bad_images
from polypseg.data.kvasir import IMAGE_SUFFIXES, read_image
from polypseg.errors import DataError
from polypseg.files import atomic_path, check_output_dir
from polypseg.progress import track

PREDICTION_EXPERIMENT = "polypseg-prediction"


class Predictor:
    """A loaded model's segmenter: probability maps and masks at an image's own size."""

    def __init__(self, uri: str) -> None:
        from polypseg.tracking.pyfunc import load_model

        self.uri = uri
        self.model = load_model(uri)
        wrapped = self.model.unwrap_python_model()
        self.segmenter, self.threshold = wrapped.segmenter, wrapped.threshold

    def proba(self, image: np.ndarray) -> np.ndarray:
        return self.segmenter.predict_proba(image)

    def mask(self, image: np.ndarray) -> np.ndarray:
        return self.segmenter.predict_mask(image, self.threshold)

    def describe(self) -> dict[str, str | None]:
        """The model behind the URI: registered name, resolved version, the run that logged it.

        A registry URI is resolved now (an alias or `latest` to its version number), so a report
        says which model it scored even after the alias moves.
        """
        import mlflow

        described: dict[str, str | None] = {
            "model": self.uri,
            "model_name": None,
            "model_version": None,
            "model_run_id": self.model.metadata.run_id,
        }
        if self.uri.startswith("models:/"):
            name, _, alias = self.uri[len("models:/") :].partition("@")
            client = mlflow.MlflowClient()
            if alias:
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = name.partition("/")
                if number == "latest":
                    found = client.search_model_versions(f"name = '{name}'")
                    number = str(max(int(v.version) for v in found))
                version = client.get_model_version(name, number)
            described.update(model_name=name, model_version=str(version.version))
            described["model_run_id"] = version.run_id or described["model_run_id"]
        return described


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns → image paths; unique stems required."""
    import glob

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if any(ch in item for ch in "*?[") and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(item))
            if not matches:
                raise DataError(f"{item} matches no file")
            found.extend(matches)
        elif path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(images)
        elif path.is_file() or is_broken_link(path):
            found.append(path)
        else:
            raise DataError(f"{path} does not exist")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems and stems[path.stem] != path:
            raise DataError(f"{stems[path.stem]} and {path} would both write {path.stem}.png")
        stems[path.stem] = path
    return list(stems.values())


def tint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the predicted polyp tinted green, for a glance at what was found."""
    tinted = image.astype(np.float32)
    tinted[mask == 1] = 0.55 * tinted[mask == 1] + 0.45 * np.array([0, 255, 0])
    return tinted.round().astype(np.uint8)


def model_tags(described: dict[str, str | None]) -> dict[str, str]:
    """`Predictor.describe()` as run tags: `polypseg.model_uri`, `polypseg.model_name`, ..."""
    renamed = {"model": "model_uri"}
    return {
        f"polypseg.{renamed.get(key, key)}": str(value)
        for key, value in described.items()
        if value is not None
    }


@dataclass
class Prediction:
    """What `predict` wrote (masks or maps, then overlays) and the MLflow run it logged."""

    written: list[Path]
    run_id: str
    run_url: str


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def predict(
    model_uri: str,
    inputs: Sequence[str],
    out_dir: str | Path,
    overlay: bool = False,
    tracking_uri: str | None = None,
    maps: bool = False,
) -> Prediction:
    """Write `<stem>.png` at each image's original size: a 0/255 mask, or with `maps` the 8-bit
    probability map (what PraNet-protocol evaluation scores); log one MLflow run."""
    from polypseg.evaluation.scoring import quantize_map
    from polypseg.tracking.store import setup

    out_dir = check_output_dir(out_dir)
    images = collect_images(inputs)
    refuse_bad_images(images)
    setup(PREDICTION_EXPERIMENT, tracking_uri)
    predictor = Predictor(model_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs, overlays, rows = [], [], []
    for path in track(images, f"predicting {len(images)} images"):
        image = read_image(path)
        proba = predictor.proba(image)
        mask = (proba >= predictor.threshold).astype(np.uint8)
        target = out_dir / f"{path.stem}.png"
        _save_png(quantize_map(proba) if maps else mask * 255, target)
        outputs.append(target)
        row = {"input": str(path), "output": str(target), "foreground": float(mask.mean())}
        if overlay:
            overlays.append(out_dir / f"{path.stem}_overlay.png")
            _save_png(tint(image, mask), overlays[-1])
            row["overlay"] = str(overlays[-1])
        rows.append(row)
    run_id, run_url = _log_prediction(predictor, out_dir, rows, maps)
    return Prediction(outputs + overlays, run_id, run_url)


def _log_prediction(predictor: Predictor, out_dir: Path, rows: list[dict], maps: bool):
    import mlflow

    from polypseg.tracking.runs import tracked_run
    from polypseg.tracking.store import runs_url

    described = predictor.describe()
    tags = model_tags(described)
    with tracked_run(run_name=f"predict-{out_dir.resolve().name}", tags=tags) as run:
        mlflow.log_params({"n_images": len(rows), "out_dir": str(out_dir.resolve()), "maps": maps})
        mlflow.log_dict({"model": described, "outputs": rows}, "predictions.json")
    return run.info.run_id, f"{runs_url(run.info.experiment_id)}/{run.info.run_id}"
