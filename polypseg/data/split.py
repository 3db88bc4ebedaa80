"""The train/val/test split: a pure function of the sorted file names, the seed and the ratios.

It follows the seed notebook's `train_test_split` (train vs. the rest, then val vs. test,
`random_state=seed`), done by `_cut` itself (a test holds it to scikit-learn's output), since
importing scikit-learn took 2.4 s of every command that splits.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from polypseg.config import DataConfig, ratios_problem
from polypseg.errors import DataError


@dataclass(frozen=True)
class Split:
    seed: int
    ratios: tuple[float, float, float]
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    # "pranet": names are `<set>/<file>` from several folders, `sources` (set, folder) pairs.
    protocol: str = "seed"
    sources: tuple[tuple[str, str], ...] = ()

    def names(self, part: str) -> tuple[str, ...]:
        if part not in ("train", "val", "test"):
            raise DataError(f"unknown split {part!r}; use train, val or test")
        names = getattr(self, part)
        if not names:
            total = len(self.train) + len(self.val) + len(self.test)
            raise DataError(
                f"the {part} split is empty ({total} pairs, ratios {list(self.ratios)}); "
                "add images or raise that part's ratio"
            )
        return names

    def manifest(self) -> dict:
        """The file lists; under `pranet` also the protocol, sources and test part by set."""
        manifest = {
            "seed": self.seed,
            "ratios": list(self.ratios),
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
        }
        if self.protocol != "seed":
            test: dict[str, list[str]] = {source: [] for source, _ in self.sources}
            for name in self.test:
                source, _, file = name.partition("/")
                test.setdefault(source, []).append(file)
            manifest.update(protocol=self.protocol, sources=dict(self.sources), test=test)
        return manifest

    def summary(self) -> str:
        return f"train={len(self.train)} val={len(self.val)} test={len(self.test)}"

    def digest(self) -> str:
        """16 hex digits naming this exact split (seed, ratios, file lists), for tags and inputs."""
        payload = json.dumps(self.manifest(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if problem := ratios_problem(ratios):
        raise DataError(f"ratios {problem}")
    return (float(ratios[0]), float(ratios[1]), float(ratios[2]))


def _cut(names: list[str], test_size: float, seed: int) -> tuple[list[str], list[str]]:
    """`train_test_split(names, test_size=test_size, random_state=seed)`, leaving small sets
    whole instead of raising."""
    if test_size <= 0 or len(names) < 2:
        return names, []
    if test_size >= 1:
        return [], names
    n_test = math.ceil(test_size * len(names))
    if n_test >= len(names):  # scikit-learn would refuse an empty train part
        return names[:1], names[1:]
    order = np.random.RandomState(seed).permutation(len(names))
    return [names[i] for i in order[n_test:]], [names[i] for i in order[:n_test]]


def hold_out(names: Iterable[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """The sorted `names` cut into (kept, held out), as `split_names` draws val and test."""
    return _cut(sorted(set(names)), fraction, seed)


def split_names(
    names: Iterable[str],
    seed: int = DataConfig.split_seed,
    ratios: Sequence[float] = DataConfig.ratios,
) -> Split:
    ratios = check_ratios(ratios)
    ordered = sorted(set(names))
    if not ordered:
        raise DataError("no pairs to split; the data folder has no image/mask pairs")
    train, rest = _cut(ordered, ratios[1] + ratios[2], seed)
    if not train:
        train, rest = rest[:1], rest[1:]
    held = ratios[1] + ratios[2]
    val, test = _cut(rest, ratios[2] / held if held else 0.0, seed)
    return Split(seed, ratios, tuple(train), tuple(val), tuple(test))
