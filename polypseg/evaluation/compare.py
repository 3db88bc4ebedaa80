"""`compare`: is a candidate better than a baseline on the same images, and how sure is that.

Each side is a model URI or a folder of saved maps, scored by `evaluate`'s own machinery; per set
both must cover the same images, checked for every set before any is scored. The per-image
differences of mDice and mIoU get a paired-bootstrap interval and Wilcoxon's p
(`uncertainty.paired_difference`), and the images each side wins are counted.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from polypseg.atomic import write_json
from polypseg.config import DataConfig, check_choice
from polypseg.errors import DataError, listing
from polypseg.evaluation.evaluate import Source, input_trees, score
from polypseg.evaluation.report import EVALUATION_EXPERIMENT
from polypseg.evaluation.scoring import KEYS
from polypseg.evaluation.sources import DataSet, MapSource, ModelSource, parse_roots
from polypseg.outputs import check_output_file, check_outputs
from polypseg.uncertainty import RESAMPLES, check_resamples, format_interval, paired_difference

SIDES = ("baseline", "candidate")
SIDE_WINS = operator.itemgetter("candidate_better", "baseline_better")
FIGURES = ("mdice", "miou")  # the names of `SetScorer.interval_keys` in the comparison


@dataclass
class Comparison:
    sets: dict[str, dict]
    run_id: str
    run_url: str

    def table(self) -> str:
        header = ["Data set", "n"]
        for label in ("mDice", "mIoU"):
            header += [f"{label} baseline", f"{label} candidate", f"Δ {label} [95 % CI]", "p"]
        lines = ["| " + " | ".join([*header, "wins (cand. / base.)"]) + " |"]
        lines.append("|---|" + "--:|" * len(header))
        for name, result in self.sets.items():
            cells = [name, str(result["n_images"])]
            for key in FIGURES:
                cells += [f"{result[side][key]:.3f}" for side in SIDES]
                cells += _delta(result["delta"][key])
            cells.append("{} / {}".format(*SIDE_WINS(result)))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def side_source(value: str, several: bool) -> Source:
    """A side: a folder of maps, or a model (a URI, or a local MLflow model folder)."""
    path = Path(value)
    if ":/" in value or (path / "MLmodel").is_file():
        return ModelSource(value, "all", DataConfig.split_seed)
    if path.is_dir():
        return MapSource(path, several)
    raise DataError(
        f"{value}: neither a model URI (models:/NAME@ALIAS, runs:/ID/model) nor a folder of maps"
    )


def _same_images(data: DataSet, sides: dict[str, Source], values: Sequence[str]) -> list:
    """Both sides' pairs of `data`, in one order; a side short of images is refused."""
    pairs = {side: source.pairs(data)[0] for side, source in sides.items()}
    stems = {side: {Path(p.name).stem: p for p in found} for side, found in pairs.items()}
    lacking = [
        f"{side} {value} has none for {listing(stems[other].keys() - stems[side].keys())}"
        for side, other, value in zip(SIDES, SIDES[::-1], values, strict=True)
        if stems[other].keys() - stems[side].keys()
    ]
    if lacking:
        raise DataError(
            f"{data.name}: both sides must score the same images; the {'; the '.join(lacking)}"
        )
    order = sorted(stems["baseline"])
    return [[stems[side][stem] for stem in order] for side in SIDES]


def _compare_set(
    baseline: list[dict], candidate: list[dict], keys: tuple[str, str], resamples: int
) -> dict:
    # Per side, one row of per-image values for each of FIGURES.
    values = {
        side: np.array([[r[key] for r in rows] for key in keys])
        for side, rows in zip(SIDES, (baseline, candidate), strict=True)
    }
    result: dict = {"n_images": len(baseline)}
    for side in SIDES:
        result[side] = dict(zip(FIGURES, values[side].mean(axis=1).tolist(), strict=True))
    result["delta"] = {
        name: asdict(paired_difference(values["baseline"][i], values["candidate"][i], resamples))
        for i, name in enumerate(FIGURES)
    }
    wins = np.sign(values["candidate"][0] - values["baseline"][0])  # by mDice
    result["candidate_better"] = int((wins > 0).sum())
    result["baseline_better"] = int((wins < 0).sum())
    return result


def compare(
    baseline: str,
    candidate: str,
    roots: Sequence[str | Path | DataSet] | str | Path,
    out: str | Path | None = None,
    *,
    protocol: str = "default",
    resamples: int = RESAMPLES,
    tracking_uri: str | None = None,
    progress: bool = True,
) -> Comparison:
    """Both sides scored on each data set (`roots`: as `evaluate` takes them), image by image."""
    from polypseg.tracking.store import setup

    sets = parse_roots(roots)
    check_choice("--protocol", protocol, tuple(KEYS))
    check_resamples(resamples)
    values = (baseline, candidate)
    sides = dict(zip(SIDES, (side_source(v, len(sets) > 1) for v in values), strict=True))
    maps = {}
    for side, source in sides.items():
        for data in sets if isinstance(source, MapSource) else ():
            source.folder(data)  # a missing input is named before any output is judged
            maps[source.predictions] = f"the maps of the {side}"
    if out is not None:
        out = check_output_file(out)
        fix = "choose another --out"
        check_outputs([(out, "the comparison")], out, fix, trees=input_trees(sets, maps))
    paired = [_same_images(data, sides, values) for data in sets]  # every set, before any work
    setup(EVALUATION_EXPERIMENT, tracking_uri)
    results = {}
    for data, pairs in zip(sets, paired, strict=True):
        scorers = [
            score(sides[side], found, protocol, f"{data.name} ({side})", progress)
            for side, found in zip(SIDES, pairs, strict=True)
        ]
        keys = scorers[0].interval_keys
        results[data.name] = _compare_set(scorers[0].rows, scorers[1].rows, keys, resamples)
    named = sets[0].named
    run_id, run_url = _log(results, named, values, protocol)
    _record_on_versions(results, values, run_id)
    if out is not None:
        write_json(out, results if named else next(iter(results.values())), option="--out")
    return Comparison(results, run_id, run_url)


def _log(results: dict, named: bool, values: Sequence[str], protocol: str) -> tuple[str, str]:
    """One run: `<set>/delta_mdice_mean` (plain names for one unnamed set), the JSON."""
    import mlflow
    import pandas as pd

    from polypseg.tracking.runs import tracked_run
    from polypseg.tracking.store import runs_url

    tags = {f"polypseg.{side}": value for side, value in zip(SIDES, values, strict=True)}
    tags["polypseg.protocol"] = protocol
    with tracked_run(run_name=f"compare-{'+'.join(results)}-{protocol}", tags=tags) as run:
        for name, result in results.items():  # delta.mdice.mean as <set>/delta_mdice_mean
            flat = pd.json_normalize(result, sep="_").iloc[0].items()
            mlflow.log_metrics({f"{name}/" * named + k: v for k, v in flat if v is not None})
        mlflow.log_dict(results, "comparison.json")
    return run.info.run_id, f"{runs_url(run.info.experiment_id)}/{run.info.run_id}"


def _record_on_versions(results: dict, values: Sequence[str], run_id: str) -> None:
    """The comparison on the card of each side that is a registered version (the latest one)."""
    from polypseg.evaluation.predictors import registered_version
    from polypseg.tracking.registry import update_card

    for side, value, other in zip(SIDES, values, values[::-1], strict=True):
        if found := registered_version(value, strict=False):
            sets = "; ".join(
                "{} (n {}) Δ mDice {}, p {}, images won {} / {}".format(
                    name, r["n_images"], *_delta(r["delta"]["mdice"]), *SIDE_WINS(r)
                )
                for name, r in results.items()
            )
            text = f"as the {side}, against {other} (candidate − baseline): {sets}; run {run_id}"
            update_card(found[0], found[1], {"polypseg.comparison": text})


def _delta(delta: dict) -> list[str]:
    interval = None if delta["ci_low"] is None else (delta["ci_low"], delta["ci_high"])
    return [format_interval(delta["mean"], interval), f"{delta['p_value']:.2g}"]
