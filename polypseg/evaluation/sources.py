"""Where the maps an evaluation scores come from: a model, or a folder of any method's maps.

`ModelSource` runs a model on each image of a data set's split at its original size; `MapSource`
pairs saved maps with the set's masks by stem. Both give the pairs, a pair's map at its mask's
size, the image for the worst-cases figure and a digest of the files scored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from polypseg.data.images import read_image
from polypseg.data.pairs import (
    Pair,
    files_by_stem,
    hash_pairs,
    list_pairs,
    refuse_implausible_masks,
)
from polypseg.data.sets import SETS, find_dataset_root
from polypseg.data.split import split_names
from polypseg.errors import DataError
from polypseg.evaluation.maps import pair_maps, read_map, resize_map
from polypseg.evaluation.predictors import load_predictor
from polypseg.evaluation.scoring import SetScorer

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class DataSet:
    """A data folder to score; `named` when given as NAME=DIR (the papers' table rows)."""

    name: str
    root: Path
    named: bool = False
    # Listed already (a protocol's test images, `literature.py`): scored as they are.
    listed: tuple[Pair, ...] | None = None


def parse_roots(roots: Sequence[str | Path | DataSet] | str | Path) -> list[DataSet]:
    """`--root` values: one plain `DIR`, or any number of `NAME=DIR` with distinct names;
    `DataSet`s listed already (`literature.test_sets`) are taken as they are."""
    roots = [roots] if isinstance(roots, (str, Path)) else roots
    if roots and all(isinstance(r, DataSet) for r in roots):
        return list(roots)
    sets = []
    for value in roots:
        name, sep, folder = str(value).partition("=")
        if sep and _NAME.fullmatch(name):
            sets.append(DataSet(name, Path(folder), named=True))
        elif sep and "/" not in name:
            raise DataError(f"--root {value}: a data set name uses letters, digits, . _ -")
        else:
            sets.append(DataSet(Path(value).name or str(value), Path(value)))
    if not sets:
        raise DataError("no --root given; pass DIR or NAME=DIR (repeatable)")
    if len(sets) > 1 and not all(s.named for s in sets):
        raise DataError("several --root values must each be NAME=DIR (e.g. Kvasir=/data/Kvasir)")
    if len({s.name for s in sets}) < len(sets):
        raise DataError(f"--root names repeat: {', '.join(s.name for s in sets)}")
    return sets


def select_pairs(root: Path, split: str, seed: int) -> list[Pair]:
    pairs = list_pairs(root)
    if split == "all":
        return pairs
    if split != "test":
        raise DataError(f"--split {split!r}: use test (the held-out 10%) or all")
    names = set(split_names([p.name for p in pairs], seed).names("test"))
    return [p for p in pairs if p.name in names]


def data_digest(pairs: Sequence[Pair]) -> str:
    digest = hashlib.sha256()
    hash_pairs(digest, pairs)
    return digest.hexdigest()[:16]


class ModelSource:
    """A model's maps: its probability map of each image, at the image's own size."""

    def __init__(
        self, model_uri: str, split: str, seed: int, engine: str = "torch", tta: str = "none"
    ) -> None:
        self.model_uri, self.engine, self.tta = model_uri, engine, tta
        self.split, self.seed = split, seed

    @cached_property
    def predictor(self) -> Any:  # a Predictor, loaded on first use: the data is checked first
        return load_predictor(self.model_uri, self.engine, self.tta)

    @property
    def threshold(self) -> float:
        return self.predictor.threshold

    def describe(self) -> dict:
        return {**self.predictor.describe(), "split": self.split, "tta": self.tta}

    def pairs(self, data: DataSet) -> tuple[list[Pair], list[str]]:
        if data.listed is not None:
            pairs, where = list(data.listed), f"the {data.name} test set at {data.root}"
        else:
            pairs = select_pairs(data.root, self.split, self.seed)
            where = f"{data.root}/masks" + (" (the test split)" if self.split == "test" else "")
        refuse_implausible_masks([pair.mask for pair in pairs], where)
        return pairs, []

    def image(self, pair: Pair, shape: tuple[int, int]) -> np.ndarray:
        image = read_image(pair.image)
        if image.shape[:2] != shape:
            raise DataError(f"mask {pair.mask} is not the size of its image {pair.image}")
        return image

    def prob_map(self, pair: Pair, shape: tuple[int, int], scorer: SetScorer) -> np.ndarray:
        return scorer.model_map(self.predictor.proba(self.image(pair, shape)))


class MapSource:
    """Saved maps of any method: `predictions/` (one set) or `predictions/<NAME>/` (several)."""

    threshold = 0.5

    def __init__(self, predictions: Path, several: bool) -> None:
        self.predictions, self.several = Path(predictions), several
        self._images: dict[Path, dict[str, Path]] = {}

    def describe(self) -> dict:
        return {"predictions": str(self.predictions.resolve()), "split": "all"}

    def folder(self, data: DataSet) -> Path:
        """The set's maps: `DIR/<NAME>/` (a named set of the table also in PraNet's folder name,
        `DIR/CVC-ClinicDB/`), else, for one set, `DIR` itself."""
        own = self.predictions / data.name
        titled = self.predictions / SETS[data.name].pranet_folder if data.name in SETS else own
        for folder in (own, titled) if data.named else ():
            if folder.is_dir():
                return folder
        if self.several:
            raise DataError(
                f"no folder {own} for data set {data.name}: with several data sets, a folder of "
                f"maps holds one subfolder per set, DIR/<NAME>/ (PraNet's results/<method>/<NAME>/)"
            )
        return self.predictions

    def pairs(self, data: DataSet) -> tuple[list[Pair], list[str]]:
        """The maps with their masks, checked before scoring: one file per stem in each folder
        (`images/` too, shown in the figure), masks not all empty."""
        root = data.root if (data.root / "masks").is_dir() else find_dataset_root(data.root)
        pairs, missing = pair_maps(self.folder(data), root)
        self._figure_images(root / "images")
        refuse_implausible_masks([pair.mask for pair in pairs], f"{root}/masks")
        return pairs, missing

    def _figure_images(self, folder: Path) -> dict[str, Path]:
        if folder not in self._images:
            self._images[folder] = files_by_stem(folder) if folder.is_dir() else {}
        return self._images[folder]

    def image(self, pair: Pair, shape: tuple[int, int]) -> np.ndarray:
        """The data set's image when `images/` has it (for the figure), else plain grey."""
        found = self._figure_images(pair.mask.parent.parent / "images").get(pair.mask.stem)
        image = read_image(found) if found is not None else None
        if image is None or image.shape[:2] != shape:
            return np.full((*shape, 3), 128, dtype=np.uint8)
        return image

    def prob_map(self, pair: Pair, shape: tuple[int, int], scorer: SetScorer) -> np.ndarray:
        return resize_map(read_map(pair.image), shape)
