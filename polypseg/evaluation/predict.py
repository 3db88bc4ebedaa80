"""Prediction with a logged or registered model: `<stem>.png` masks at each image's own size.

`Predictor` loads a model URI and exposes the pyfunc's own segmenter (its probability map at the
original size, thresholded as the model does); `evaluate` scores with it too. `predict` takes
files, folders or glob patterns and writes 0/255 masks, atomically, and optionally overlays.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from polypseg.data.kvasir import IMAGE_SUFFIXES, read_image
from polypseg.errors import DataError
from polypseg.files import atomic_path
from polypseg.progress import track


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
        elif path.is_file():
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


def predict(
    model_uri: str,
    inputs: Sequence[str],
    out_dir: str | Path,
    overlay: bool = False,
    tracking_uri: str | None = None,
) -> list[Path]:
    """Write `<stem>.png` (0/255) masks at each image's original size; returns their paths."""
    import mlflow

    from polypseg.tracking.store import default_tracking_uri

    images = collect_images(inputs)
    unreadable = [str(p) for p in images if not _is_image(p)]
    if unreadable:
        raise DataError(f"not images: {', '.join(unreadable[:5])}; pass image files only")
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    predictor = Predictor(model_uri)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in track(images, f"predicting {len(images)} images"):
        image = read_image(path)
        mask = predictor.mask(image)
        target = out_dir / f"{path.stem}.png"
        with atomic_path(target) as tmp:
            Image.fromarray(mask * 255).save(tmp, format="PNG")
        if overlay:
            with atomic_path(out_dir / f"{path.stem}_overlay.png") as tmp:
                Image.fromarray(tint(image, mask)).save(tmp, format="PNG")
        written.append(target)
    return written


def _is_image(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # PIL raises many types for non-images and damaged files
        return False
