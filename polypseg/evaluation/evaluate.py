"""Evaluation of a logged or registered model, at each image's original size.

`evaluate` scores a model on a folder's test split (the training protocol's seed-42 split) or on
every pair (`all`: another polyp data set, CVC-ClinicDB or ETIS with PNG or TIFF files), and
writes a JSON summary, a per-image CSV and a worst-cases figure, logging all of it to a new
MLflow run. It goes through the pyfunc model's own code (`Predictor`): its probability map at
the original size, thresholded as the model does.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from polypseg.data.kvasir import Pair, hash_pairs, list_pairs, read_image, read_mask
from polypseg.data.split import DEFAULT_RATIOS, split_names
from polypseg.errors import DataError
from polypseg.evaluation.predict import Predictor
from polypseg.files import atomic_path, write_json
from polypseg.metrics import dice_over_thresholds, scores, structure_and_emeasure
from polypseg.progress import track

EVALUATION_EXPERIMENT = "polypseg-evaluation"
WORST_SHOWN = 4
COLUMNS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "mae",
    "mdice_thr",
    "s_alpha",
    "e_measure",
)


def image_scores(proba: np.ndarray, mask: np.ndarray, threshold: float) -> dict[str, float]:
    """Every per-image figure of the summary for one H×W probability map and 0/1 mask."""
    p = torch.from_numpy(proba)[None].double()
    m = torch.from_numpy(mask)[None].double()
    row = {k: float(v[0]) for k, v in scores(p, m, threshold).items()}
    row["mdice_thr"] = float(dice_over_thresholds(p, m)[0])
    row.update(structure_and_emeasure((proba * 255).round().astype(np.uint8), mask * 255))
    return row


def select_pairs(root: Path, split: str, seed: int, ratios: Sequence[float]) -> list[Pair]:
    pairs = list_pairs(root)
    if split == "all":
        return pairs
    if split != "test":
        raise DataError(f"--split {split!r}: use test (the held-out 10%) or all")
    names = set(split_names([p.name for p in pairs], seed, ratios).names("test"))
    return [p for p in pairs if p.name in names]


def data_digest(pairs: Iterable[Pair]) -> str:
    digest = hashlib.sha256()
    hash_pairs(digest, pairs)
    return digest.hexdigest()[:16]


@dataclass
class Evaluation:
    summary: dict
    rows: list[dict]
    json_path: Path
    csv_path: Path
    figure_path: Path


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["name", "height", "width", *COLUMNS])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})


def _worst_figure(predictor: Predictor, pairs: dict[str, Pair], rows: list[dict], path: Path):
    from polypseg.figures import mask_panel

    worst = sorted(rows, key=lambda r: r["dice"])[:WORST_SHOWN]
    images = [read_image(pairs[r["name"]].image) for r in worst]
    figure = mask_panel(
        images,
        [read_mask(pairs[r["name"]].mask) for r in worst],
        [predictor.proba(image) for image in images],
        titles=[f"{r['name']}  dice {r['dice']:.3f}" for r in worst],
    )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return figure


def evaluate(
    model_uri: str,
    root: str | Path,
    split: str = "test",
    out: str | Path = "evaluation.json",
    seed: int = 42,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    progress: bool = True,
    tracking_uri: str | None = None,
) -> Evaluation:
    """Score a model on a folder; write JSON, CSV and figure beside `out`; log an MLflow run."""
    from polypseg.tracking.store import setup

    root, out = Path(root), Path(out)
    pairs = select_pairs(root, split, seed, ratios)
    setup(EVALUATION_EXPERIMENT, tracking_uri)
    predictor = Predictor(model_uri)
    rows = []
    for pair in track(pairs, f"evaluating {len(pairs)} images", enabled=progress):
        image, mask = read_image(pair.image), read_mask(pair.mask)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask {pair.mask} is not the size of its image {pair.image}")
        row = image_scores(predictor.proba(image), mask, predictor.threshold)
        rows.append({"name": pair.name, "height": image.shape[0], "width": image.shape[1], **row})
    summary = {
        "model": model_uri,
        "root": str(root.resolve()),
        "split": split,
        "n_images": len(rows),
        **{key: float(np.mean([r[key] for r in rows])) for key in COLUMNS},
        "threshold": predictor.threshold,
        "data_digest": data_digest(pairs),
    }
    result = Evaluation(
        summary, rows, out, out.with_suffix(".csv"), out.with_name(out.stem + "_worst.png")
    )
    _write_csv(result.csv_path, rows)
    figure = _worst_figure(predictor, {p.name: p for p in pairs}, rows, result.figure_path)
    write_json(out, summary)
    _log_evaluation(result, figure)
    return result


def _model_tags(uri: str) -> dict[str, str]:
    """The registered model's name and version behind a URI, for the evaluation run's tags."""
    import mlflow

    tags = {"polypseg.model_uri": uri}
    if uri.startswith("models:/"):
        ref = uri[len("models:/") :]
        client = mlflow.MlflowClient()
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
            tags.update({"polypseg.model_name": name, "polypseg.model_version": version.version})
        elif "/" in ref:
            name, version = ref.split("/", 1)
            tags.update({"polypseg.model_name": name, "polypseg.model_version": version})
    elif uri.startswith("runs:/"):
        tags["polypseg.model_run_id"] = uri[len("runs:/") :].split("/", 1)[0]
    return tags


def _log_evaluation(result: Evaluation, figure: object) -> None:
    import mlflow

    from polypseg.tracking.runs import log_figure, tracked_run

    summary = result.summary
    tags = {
        **_model_tags(summary["model"]),
        "polypseg.data_root": summary["root"],
        "polypseg.data_digest": summary["data_digest"],
        "polypseg.split": summary["split"],
    }
    with tracked_run(
        run_name=f"evaluate-{Path(summary['root']).name}-{summary['split']}", tags=tags
    ):
        mlflow.log_metrics({k: v for k, v in summary.items() if k in COLUMNS or k == "n_images"})
        mlflow.log_artifact(str(result.json_path))
        mlflow.log_artifact(str(result.csv_path))
        log_figure(figure, "figures/worst_cases.png")
