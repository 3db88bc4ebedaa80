"""Evaluation of a model, or of any method's saved maps, on one or several polyp data sets.

Each data set gets a JSON summary, a per-image CSV and a worst-cases figure under polypseg's
protocol or PraNet's (`scoring.py`); named sets (`NAME=DIR`) also get the papers' table; all of
it goes to one MLflow run. Every report path is checked before any work, and without --out the
reports go to a folder named for the model (`report_folder`), replaced whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polypseg.config import DataConfig, check_choice, check_seed
from polypseg.data.sets import find_dataset_root
from polypseg.errors import DataError, listing
from polypseg.evaluation.predictors import registered_version
from polypseg.evaluation.report import (
    EVALUATION_EXPERIMENT,
    SetReport,
    check_report_folder,
    log_evaluation,
    table_paths,
    write_folder,
    write_set,
)
from polypseg.evaluation.scoring import KEYS, SetScorer
from polypseg.evaluation.sources import DataSet, MapSource, ModelSource, data_digest, parse_roots
from polypseg.figures import mask_panel
from polypseg.outputs import check_output_dir, check_output_file, check_outputs
from polypseg.progress import track
from polypseg.uncertainty import RESAMPLES, check_resamples, format_interval

WORST_SHOWN = 4
KINDS = ("images", "masks")  # a data set's folders, which reports must never land in
Source = ModelSource | MapSource


@dataclass
class Evaluation:
    """Every data set's report, the tables (named sets) and the MLflow run they went to."""

    sets: list[SetReport]
    tables: tuple[Path, Path] | None
    run_id: str
    run_url: str

    def printout(self) -> tuple[str, list[str]]:
        """What the CLI prints: the JSON summary (one folder) or the table (named sets) for
        stdout; where files went, masks left out and the MLflow run for stderr."""
        notes = []
        for report in self.sets:
            if missing := report.summary.get("missing_predictions"):
                notes.append(f"{report.name}: masks without a map, left out: {listing(missing)}")
            notes.append(
                f"summary: {report.json_path}  per-image: {report.csv_path}  "
                f"worst cases: {report.figure_path}"
            )
        if self.tables is not None:
            notes.append(f"tables: {self.tables[0]}  {self.tables[1]}")
        notes.append(f"evaluation run {self.run_id}: {self.run_url}")
        if self.tables is None:
            return json.dumps(self.sets[0].summary, indent=2), notes
        return self.tables[0].read_text().rstrip("\n"), notes


def _worst_figure(source: Source, pairs: list, scorer: SetScorer, name: str):  # noqa: ANN202
    by_name, key = {p.name: p for p in pairs}, scorer.interval_keys[0]
    worst = sorted(scorer.rows, key=lambda r: r[key])[:WORST_SHOWN]
    images, masks, maps = [], [], []
    for row in worst:
        pair = by_name[row["name"]]
        masks.append(scorer.read_mask(pair.mask))
        images.append(source.image(pair, masks[-1].shape))
        maps.append(source.prob_map(pair, masks[-1].shape, scorer))
    titles = [f"{r['name']}  {key} {r[key]:.3f}" for r in worst]
    title = f"{name}: the {len(worst)} of {len(scorer.rows)} images with the lowest {key}"
    return mask_panel(images, masks, maps, titles, title)


def score(source: Source, pairs: list, protocol: str, label: str, progress: bool) -> SetScorer:
    """Every pair's map from `source`, scored under `protocol`; `label` names the progress."""
    scorer = SetScorer(protocol, source.threshold)
    for pair in track(pairs, f"{label}: scoring {len(pairs)} images", enabled=progress):
        mask = scorer.read_mask(pair.mask)
        scorer.add(pair.name, source.prob_map(pair, mask.shape, scorer), mask)
    return scorer


def _score_set(
    source: Source,
    data: DataSet,
    protocol: str,
    progress: bool,
    paths: tuple[Path, Path, Path],
    resamples: int,
) -> SetReport:
    pairs, missing = source.pairs(data)
    scorer = score(source, pairs, protocol, data.name, progress)
    summary = {
        **({"name": data.name} if data.named else {}),
        "protocol": protocol,
        **source.describe(),
        "root": str(data.root.resolve()),
        **scorer.summary(resamples),
        **({"threshold": scorer.threshold} if protocol == "default" else {}),
        "data_digest": data_digest(pairs),
        **({"missing_predictions": missing} if missing else {}),
    }
    figure = _worst_figure(source, pairs, scorer, data.name)
    columns, keys = scorer.columns, scorer.summary_keys
    return SetReport(data.name, summary, scorer.rows, columns, keys, *paths, figure=figure)


def _paths(data: DataSet, folder: Path | None, out: Path | None) -> tuple[Path, Path, Path]:
    """A report folder holds `<set>.json` (`evaluation.json` for one unnamed set); without a
    folder, `--out FILE.json` names the summary and the CSV and figure go beside it."""
    json_path = folder / f"{data.name if data.named else 'evaluation'}.json" if folder else out
    return (
        json_path,
        json_path.with_suffix(".csv"),
        json_path.with_name(json_path.stem + "_worst.png"),
    )


def report_folder(model_uri: str | None, predictions: str | Path | None) -> Path:
    """Where an evaluation goes without --out: `evaluation/<model>-v<version>/` for a registered
    model, `run-<id>` for a run's, the .onnx file's or the maps folder's name otherwise."""
    if predictions is not None:
        label = f"maps-{Path(predictions).resolve().name}"
    elif model_uri.startswith("runs:/"):
        label = f"run-{model_uri[len('runs:/') :].split('/')[0]}"
    elif model_uri.startswith("models:/"):
        found = registered_version(model_uri, strict=False)
        label = f"{found[0]}-v{found[1]}" if found else model_uri[len("models:/") :]
    else:
        label = Path(model_uri).stem
    return Path("evaluation") / re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")


def _data_roots(root: Path) -> set[Path]:
    """`root` and the data set folder found at or under it, when there is one."""
    try:
        return {root, find_dataset_root(root)}
    except DataError:  # named later, where the data set is read
        return {root}


def input_trees(sets: Sequence[DataSet], maps: dict[Path, str]) -> dict[Path, str]:
    """The folders no report may land in: each data set's `images/` and `masks/`, the maps."""
    trees = {
        root / kind: f"the {kind} of data set {root}"
        for data in sets
        for root in _data_roots(data.root)
        for kind in KINDS
    }
    return {**trees, **maps}


def _check_outputs(
    sets: list[DataSet],
    paths: list[tuple[Path, Path, Path]],
    predictions: str | Path | None,
    out: Path | None,
    folder: Path | None,
) -> None:
    """Every report writable, none among the inputs, no two with one name (a set named table)."""
    labels = ("the summary", "the per-image CSV", "the worst cases")  # `_paths`' order
    outputs = [
        (path, f"{label} of {data.name}")
        for data, where in zip(sets, paths, strict=True)
        for path, label in zip(where, labels, strict=True)
    ]
    if folder is not None:
        check_output_dir(folder)
        check_report_folder(folder)
    if folder is not None and sets[0].named:
        outputs += zip(table_paths(folder), ("the table", "the table's CSV"), strict=True)
    maps = {} if predictions is None else {Path(predictions): "the maps scored (--predictions)"}
    fix = "rename that data set (NAME=DIR)" if sets[0].named else "give --out a .json name"
    check_outputs(outputs, out or paths[0][0], fix, trees=input_trees(sets, maps))
    for path, _ in outputs if folder is None else ():
        check_output_file(path)


def evaluate(
    model_uri: str | None,
    roots: Sequence[str | Path | DataSet] | str | Path,
    split: str | None = None,
    out: str | Path | None = None,
    *,
    predictions: str | Path | None = None,
    protocol: str = "default",
    seed: int = DataConfig.split_seed,
    progress: bool = True,
    tracking_uri: str | None = None,
    engine: str = "torch",
    tta: str = "none",
    resamples: int = RESAMPLES,
) -> Evaluation:
    """Score a model or saved maps (`predictions`) on each of `roots` (`parse_roots`); write
    and log the reports, mDice and mIoU with `resamples`' bootstrap intervals."""
    from polypseg.tracking.store import setup

    sets = parse_roots(roots)
    check_choice("--protocol", protocol, tuple(KEYS))
    check_resamples(resamples)
    if (model_uri is None) == (predictions is None):
        raise DataError("pass either --model URI or --predictions DIR (one of them)")
    if predictions is not None and split not in (None, "all"):
        raise DataError(f"--split {split}: --predictions scores every map it holds; drop --split")
    check_seed(seed)
    out = Path(out) if out is not None else None
    if sets[0].named and out is not None and out.suffix == ".json":
        raise DataError(f"--out {out}: with NAME=DIR roots, --out is a folder")
    maps = None if predictions is None else MapSource(Path(predictions), several=len(sets) > 1)
    for data in sets if maps is not None else ():
        maps.folder(data)  # a missing input is named before any output is judged
    if out is None:  # named for what made it; a registered model's version is looked up
        if model_uri is not None and model_uri.startswith("models:/"):
            setup(EVALUATION_EXPERIMENT, tracking_uri)
        folder = report_folder(model_uri, predictions)
    else:
        folder = out if sets[0].named else None
    paths = [_paths(data, folder, out) for data in sets]
    _check_outputs(sets, paths, predictions, out, folder)  # before any work, not after it
    setup(EVALUATION_EXPERIMENT, tracking_uri)
    source = maps or ModelSource(model_uri, split or "test", seed, engine, tta)
    reports = [
        _score_set(source, data, protocol, progress, where, resamples)
        for data, where in zip(sets, paths, strict=True)
    ]
    named = sets[0].named
    if folder is None:
        write_set(reports[0])  # --out FILE.json: one set, its files replaced each whole
    else:
        write_folder(reports, folder, tables=named)
    tables = table_paths(folder) if named else None
    run_id, run_url = log_evaluation(reports, tables, prefixed=named)
    _note_on_version(reports, protocol, run_id)
    return Evaluation(reports, tables, run_id, run_url)


def _note_on_version(reports: Sequence[SetReport], protocol: str, run_id: str) -> None:
    """A registered version's card names its latest evaluation, whatever its protocol."""
    from polypseg.tracking.registry import update_card

    first = reports[0].summary
    if not (first.get("model_name") and first.get("model_version")):
        return
    keys = KEYS[protocol][2]
    rows = [
        f"{r.name}: n={r.summary['n_images']}, "
        + ", ".join(f"{k} {format_interval(r.summary[k], r.summary.get(f'{k}_ci'))}" for k in keys)
        for r in reports
    ]
    note = f"{'; '.join(rows)} ({protocol} protocol, run {run_id})"
    update_card(first["model_name"], str(first["model_version"]), {"polypseg.evaluation": note})
