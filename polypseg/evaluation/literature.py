"""One table per model: PraNet's five test sets, scored under its protocol, kept on the model.

`evaluate_sets` scores a model on named sets' test images (`data.protocol`) as `evaluate
--protocol pranet` scores any set, and writes the table on the registered version as tags
(`pranet.kvasir.mdice = 0.912`) and in its card (`tracking.registry.model_card`), which the
MLflow UI shows on the version's page; each evaluation replaces the whole family, so rows never
mix evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polypseg.config import Config, load_config
from polypseg.data.pairs import set_pairs
from polypseg.data.protocol import missing_roots, parse_set_roots, pranet_roots, test_pairs
from polypseg.data.sets import SETS
from polypseg.errors import DataError
from polypseg.evaluation.evaluate import Evaluation, evaluate
from polypseg.evaluation.sources import DataSet
from polypseg.tracking.registry import TABLE_FIGURES, TABLE_PREFIX, update_card

ALL = "pranet"  # --sets pranet: the five sets, in the papers' column order


def parse_sets(text: str) -> list[str]:
    if text.strip() == ALL:
        return list(SETS)
    names = list(dict.fromkeys(part.strip() for part in text.split(",")))
    if unknown := [name for name in names if name not in SETS]:  # "" too: `--sets ''`, `a,,b`
        raise DataError(
            f"--sets {text}: unknown data set {unknown[0]!r}; use {ALL} (all five) or names among "
            f"{', '.join(SETS)}"
        )
    return names


def test_sets(names: Sequence[str], roots: Mapping[str, str | Path]) -> list[DataSet]:
    missing_roots(names, roots)
    sets = []
    for name in names:
        chosen = test_pairs(name, set_pairs(name, roots[name]))
        if not chosen:
            raise DataError(
                f"the {name} folder {roots[name]} holds none of PraNet's test images; is it "
                f"{SETS[name].title}, with its original file names?"
            )
        sets.append(DataSet(name, Path(roots[name]), named=True, listed=tuple(chosen)))
    return sets


def record_on_version(result: Evaluation) -> None:
    """The table as tags and card of the registered version scored (none for a run's model)."""
    first = result.sets[0].summary
    name, version = first.get("model_name"), first.get("model_version")
    if not name or not version:
        return
    tags = {}
    for report in result.sets:
        for key in TABLE_FIGURES:
            value = report.summary[key]
            tags[f"{TABLE_PREFIX}{report.name}.{key}"] = (
                str(value) if key == "n_images" else f"{value:.3f}"
            )
            if interval := report.summary.get(f"{key}_ci"):  # mdice, miou: "[0.851, 0.937]"
                tags[f"{TABLE_PREFIX}{report.name}.{key}_ci"] = "[{:.3f}, {:.3f}]".format(*interval)
    tags["pranet.evaluation_run"] = result.run_id
    tags["pranet.tta"] = str(first.get("tta", "none"))
    update_card(name, version, tags, family=TABLE_PREFIX)


def evaluate_sets(
    model_uri: str,
    sets: str | Sequence[str],
    roots: Mapping[str, str | Path],
    out: str | Path | None = None,
    **options: Any,
) -> Evaluation:
    """Score, write, log and record on the version the table; `options`: `evaluate`'s."""
    names = parse_sets(sets) if isinstance(sets, str) else list(sets)
    data = test_sets(names, roots)
    result = evaluate(model_uri, data, "pranet", out, protocol="pranet", **options)
    record_on_version(result)
    return result


def evaluate_champion(
    config: Config, name: str, version: str, tracking_uri: str | None = None, progress: bool = True
) -> Evaluation:
    """The five-set table of a registered version with the config's roots (Kaggle copies when
    `data.source` is kaggle): what `tune` does for its champion under `data.protocol = pranet`."""
    roots = pranet_roots(config.data)
    uri = f"models:/{name}/{version}"
    return evaluate_sets(uri, list(roots), roots, tracking_uri=tracking_uri, progress=progress)


def set_roots(root_values: Sequence[str], config_path: str | Path | None) -> dict[str, str | Path]:
    """The config's `data.roots`, then `--root SET=DIR`."""
    roots: dict[str, str | Path] = {}
    if config_path is not None:
        roots.update(load_config(config_path).data.roots)
    roots.update(parse_set_roots(root_values))
    return roots
