"""Evaluation of a model, or of any method's saved maps, on one or several polyp data sets.

`evaluate` scores either a logged or registered model (its probability map at each image's
original size, through the pyfunc's own segmenter) or a folder of saved prediction maps (any
method's, paired with `DATA/masks/` by stem), under polypseg's default protocol or PraNet's
(`scoring.py`). Each data set gets a JSON summary, a per-image CSV and a worst-cases figure;
named data sets (`NAME=DIR`) also get the papers' table; everything is logged to one MLflow run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polypseg.data.kvasir import listing
from polypseg.data.split import DEFAULT_RATIOS
from polypseg.errors import DataError
from polypseg.evaluation.report import (
    EVALUATION_EXPERIMENT,
    SetReport,
    log_evaluation,
    write_set,
    write_tables,
)
from polypseg.evaluation.scoring import SetScorer, check_protocol
from polypseg.evaluation.sources import DataSet, MapSource, ModelSource, parse_roots
from polypseg.files import check_output_file
from polypseg.progress import track

WORST_SHOWN = 4
Source = ModelSource | MapSource


@dataclass
class Evaluation:
    """Every data set's report, the tables (named sets) and the MLflow run they went to."""

    sets: list[SetReport]
    tables: tuple[Path, Path] | None
    run_id: str
    run_url: str

    @property
    def summary(self) -> dict:
        return self.sets[0].summary

    @property
    def csv_path(self) -> Path:
        return self.sets[0].csv_path

    @property
    def figure_path(self) -> Path:
        return self.sets[0].figure_path

    def printout(self) -> tuple[str, list[str]]:
        """What the CLI prints: the JSON summary (one folder) or the table (named sets) for
        stdout; where files went, masks left out and the MLflow run for stderr."""
        notes = []
        for report in self.sets:
            if missing := report.summary.get("missing_predictions"):
                notes.append(f"{report.name}: masks without a map, left out: {listing(missing)}")
            notes.append(f"per-image: {report.csv_path}  worst cases: {report.figure_path}")
        if self.tables is not None:
            notes.append(f"tables: {self.tables[0]}  {self.tables[1]}")
        notes.append(f"evaluation run {self.run_id}: {self.run_url}")
        if self.tables is None:
            return json.dumps(self.summary, indent=2), notes
        return self.tables[0].read_text().rstrip("\n"), notes


def _worst_figure(source: Source, pairs: list, scorer: SetScorer):  # noqa: ANN202 - a Figure
    from polypseg.figures import mask_panel

    by_name, key = {p.name: p for p in pairs}, scorer.rank_key
    worst = sorted(scorer.rows, key=lambda r: r[key])[:WORST_SHOWN]
    images, masks, maps = [], [], []
    for row in worst:
        pair = by_name[row["name"]]
        masks.append(scorer.read_mask(pair.mask))
        images.append(source.image(pair, masks[-1].shape))
        maps.append(source.prob_map(pair, masks[-1].shape, scorer))
    return mask_panel(images, masks, maps, [f"{r['name']}  {key} {r[key]:.3f}" for r in worst])


def _score_set(
    source: Source, data: DataSet, protocol: str, progress: bool, paths: tuple[Path, Path, Path]
) -> SetReport:
    pairs, missing = source.pairs(data)
    scorer = SetScorer(protocol, source.threshold)
    for pair in track(pairs, f"{data.name}: scoring {len(pairs)} images", enabled=progress):
        mask = scorer.read_mask(pair.mask)
        scorer.add(pair.name, source.prob_map(pair, mask.shape, scorer), mask)
    summary = {
        **({"name": data.name} if data.named else {}),
        "protocol": protocol,
        **source.describe(),
        "root": str(data.root.resolve()),
        **scorer.summary(),
        **({"threshold": scorer.threshold} if protocol == "default" else {}),
        "data_digest": source.digest(pairs),
        **({"missing_predictions": missing} if missing else {}),
    }
    figure = _worst_figure(source, pairs, scorer)
    columns, keys = scorer.columns, scorer.summary_keys
    return SetReport(data.name, summary, scorer.rows, columns, keys, *paths, figure=figure)


def _paths(data: DataSet, out: Path | None) -> tuple[Path, Path, Path]:
    if data.named:
        folder = out or Path("evaluation")
        if folder.suffix == ".json":
            raise DataError(f"--out {folder}: with NAME=DIR roots, --out is a folder")
        json_path = folder / f"{data.name}.json"
    else:
        json_path = out or Path("evaluation.json")
    return (
        json_path,
        json_path.with_suffix(".csv"),
        json_path.with_name(json_path.stem + "_worst.png"),
    )


def evaluate(
    model_uri: str | None,
    roots: Sequence[str | Path] | str | Path,
    split: str | None = None,
    out: str | Path | None = None,
    *,
    predictions: str | Path | None = None,
    protocol: str = "default",
    seed: int = 42,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    progress: bool = True,
    tracking_uri: str | None = None,
) -> Evaluation:
    """Score a model (`model_uri`) or saved maps (`predictions`) on each data set; write and
    log the reports. `roots` is one folder or `NAME=DIR` values (see `parse_roots`)."""
    from polypseg.tracking.store import setup

    sets = parse_roots([roots] if isinstance(roots, (str, Path)) else roots)
    check_protocol(protocol)
    if (model_uri is None) == (predictions is None):
        raise DataError("pass either --model URI or --predictions DIR (one of them)")
    if predictions is not None and split not in (None, "all"):
        raise DataError(f"--split {split}: --predictions scores every map it holds; drop --split")
    out = Path(out) if out is not None else None
    paths = [_paths(data, out) for data in sets]
    for json_path, _, _ in paths:
        check_output_file(json_path)  # before any work, not after it
    setup(EVALUATION_EXPERIMENT, tracking_uri)
    if model_uri is not None:
        source = ModelSource(model_uri, split or "test", seed, ratios)
    else:
        source = MapSource(Path(predictions), several=len(sets) > 1)
    reports = [
        _score_set(source, data, protocol, progress, where)
        for data, where in zip(sets, paths, strict=True)
    ]
    for report in reports:
        write_set(report)
    named = sets[0].named
    tables = write_tables(reports, reports[0].json_path.parent) if named else None
    run_id, run_url = log_evaluation(reports, tables, prefixed=named)
    return Evaluation(reports, tables, run_id, run_url)
