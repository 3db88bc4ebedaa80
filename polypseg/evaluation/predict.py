"""Prediction with a logged or registered model: `<stem>.png` masks at each image's own size.

0/255 masks, or 8-bit probability maps (`--maps`, what PraNet's protocol scores), written
atomically, and one run in the `polypseg-prediction` experiment. Every output name is known
before the model loads: none may land among the inputs, no two may share a name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from polypseg.atomic import atomic_path
from polypseg.data.images import IMAGE_SUFFIXES, read_image
from polypseg.data.pairs import is_broken_link, refuse_bad_images
from polypseg.errors import DataError
from polypseg.evaluation.predictors import MapPredictor, load_predictor
from polypseg.outputs import check_output_dir, check_outputs
from polypseg.progress import track

PREDICTION_EXPERIMENT = "polypseg-prediction"


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns → image paths, each once."""
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
    return list(dict.fromkeys(found))


def plan_outputs(
    images: Sequence[Path], out_dir: Path, overlay: bool
) -> list[tuple[Path, Path, Path | None]]:
    """Each image with the mask (and overlay) it will write; refused before any work when one
    would land among the inputs, or two would have one name (`a.png` and `a.jpg`, or `a.png`'s
    overlay and `a_overlay.png`). A data set's folders are refused by `check_outputs` itself."""
    plan = [
        (image, out_dir / f"{image.stem}.png", out_dir / f"{image.stem}_overlay.png")
        for image in images
    ]
    outputs = [(mask, str(image)) for image, mask, _ in plan]
    if overlay:
        outputs += [(tinted, f"{image} (--overlay)") for image, _, tinted in plan]
    # Each image's own folder, as given and behind a link.
    folders = {
        f: "input images" for i in images for f in (i.parent, Path(os.path.realpath(i)).parent)
    }
    check_outputs(outputs, out_dir, "rename one of them", folders=folders)
    return [(image, mask, tinted if overlay else None) for image, mask, tinted in plan]


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
    with atomic_path(path, option="--out") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def predict(
    model_uri: str,
    inputs: Sequence[str],
    out_dir: str | Path,
    overlay: bool = False,
    tracking_uri: str | None = None,
    maps: bool = False,
    engine: str = "torch",
    tta: str = "none",
) -> Prediction:
    """Write `<stem>.png` at each image's size (a 0/255 mask, or the 8-bit map), log one run."""
    out_dir = check_output_dir(out_dir)
    images = collect_images(inputs)
    plan = plan_outputs(images, out_dir, overlay)
    refuse_bad_images(images)
    # Only now torch and mlflow (~5 s): a refusal above answers at once.
    from polypseg.metrics import quantize_map
    from polypseg.tracking.store import setup

    setup(PREDICTION_EXPERIMENT, tracking_uri)
    predictor = load_predictor(model_uri, engine, tta)
    rows = []
    for path, target, tinted in track(plan, f"predicting {len(images)} images"):
        image = read_image(path)
        proba = predictor.proba(image)
        mask = (proba >= predictor.threshold).astype(np.uint8)
        _save_png(quantize_map(proba) if maps else mask * 255, target)
        row = {"input": str(path), "output": str(target), "foreground": float(mask.mean())}
        if tinted is not None:
            _save_png(tint(image, mask), tinted)
            row["overlay"] = str(tinted)
        rows.append(row)
    import mlflow

    out = out_dir.resolve()
    params = {"n_images": len(rows), "out_dir": str(out), "maps": maps, "tta": tta}
    record = {"model": predictor.describe(), "outputs": rows}
    run_id, run_url = log_prediction(
        predictor, out.name, params, lambda: mlflow.log_dict(record, "predictions.json")
    )
    written = [target for _, target, _ in plan] + [tinted for *_, tinted in plan if tinted]
    return Prediction(written, run_id, run_url)


def log_prediction(
    predictor: MapPredictor, name: str, params: dict, log: Callable[[], None]
) -> tuple[str, str]:
    """One run `predict-<name>`, tagged with the model, of `params` and what `log` logs."""
    import mlflow

    from polypseg.tracking.runs import tracked_run
    from polypseg.tracking.store import runs_url

    with tracked_run(run_name=f"predict-{name}", tags=model_tags(predictor.describe())) as run:
        mlflow.log_params(params)
        log()
    return run.info.run_id, f"{runs_url(run.info.experiment_id)}/{run.info.run_id}"
