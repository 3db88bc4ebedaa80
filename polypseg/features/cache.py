"""The feature cache: the frozen encoder runs once per image, and every run reads its output.

An entry (`entry.py`) is keyed by the encoder's name, weights and compute dtype, the input size
and every image's and mask's bytes (1000 synthetic pairs hash in 0.07 s), so a changed file,
checkpoint or precision never reuses stale features. A damaged entry is deleted and rebuilt,
never used; an entry is built in a temporary folder and renamed into place when whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from polypseg.atomic import atomic_path
from polypseg.caches import cache_home
from polypseg.data.pairs import Pair, hash_pairs
from polypseg.errors import PolypsegError, first_line
from polypseg.features.builds import claim, clean_stale_builds, release
from polypseg.features.encode import encode_into
from polypseg.features.entry import FORMAT, open_entry, write_index
from polypseg.features.sets import FeatureSet
from polypseg.models.encoders import FrozenEncoder
from polypseg.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedFeatures:
    directory: Path
    names: tuple[str, ...]
    sizes: np.ndarray  # N×2 original (height, width)
    features: np.ndarray  # N×C×h×w float16
    masks: np.ndarray  # N×1×S×S uint8 (0/1)

    def feature_set(self, names: Sequence[str], pinned: bool = False) -> FeatureSet:
        """The rows of `names`, in that order, in RAM (page-locked with `pinned`)."""
        # Every caller's names come from the split the entry was built for: a KeyError is a bug.
        index = {name: row for row, name in enumerate(self.names)}
        rows = np.array([index[name] for name in names], dtype=np.int64)
        arrays = []
        for array in (self.features, self.masks):
            shape, dtype = (len(rows), *array.shape[1:]), torch.from_numpy(array[:0].copy()).dtype
            tensor = torch.empty(shape, dtype=dtype, pin_memory=pinned)
            np.take(array, rows, axis=0, out=tensor.numpy())  # straight into the (pinned) pages
            arrays.append(tensor)
        return FeatureSet(*arrays)


class FeatureCache:
    """Builds and loads cache entries under one folder (default `$POLYPSEG_CACHE/features`)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else cache_home() / "features"

    def locate(
        self,
        encoder: FrozenEncoder,
        pairs: Sequence[Pair],
        image_size: int,
        device: torch.device,
        variants: tuple[str, ...],
    ) -> tuple[str, Path]:
        """The entry's key (all its features depend on) and its folder."""
        digest = hashlib.sha256()
        dtype = str(encoder.compute_dtype(device)).removeprefix("torch.")
        header = [FORMAT, encoder.name, encoder.weights_digest, image_size, dtype]
        if variants:  # the identity's key stays what it was before augmentation existed
            header.append(list(variants))
        digest.update(json.dumps(header).encode())
        hash_pairs(digest, sorted(pairs, key=lambda p: p.name))
        key, augment = digest.hexdigest(), "".join(f"{variant}+" for variant in variants)
        return key, self.directory / f"{encoder.name}-{image_size}px-{augment}{key[:16]}"

    def get(
        self,
        encoder: FrozenEncoder,
        pairs: Sequence[Pair],
        image_size: int,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        progress: bool = True,
        verify: bool = False,
        before_build: Callable[[], None] | None = None,
        variants: Sequence[str] = (),
    ) -> CachedFeatures:
        """The entry for these images, built first when missing or damaged. `before_build` runs
        only on a miss (a hit's key proves its files decoded); with `variants`, the images under
        each variant, rows named `<variant>/<name>`."""
        device = torch.device(device)
        variants = tuple(variants)
        key, folder = self.locate(encoder, pairs, image_size, device, variants)
        if folder.exists():
            try:
                return CachedFeatures(folder, *open_entry(folder, key, verify))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("feature cache %s is corrupt (%s); rebuilding it", folder, err)
                shutil.rmtree(folder, ignore_errors=True)
        if before_build is not None:
            before_build()
        self.build(folder, key, encoder, pairs, image_size, device, batch_size, progress, variants)
        # Uncaught: an entry failing its checks right after its build is a bug, raised.
        return CachedFeatures(folder, *open_entry(folder, key))

    def build(
        self,
        folder: Path,
        key: str,
        encoder: FrozenEncoder,
        pairs: Sequence[Pair],
        image_size: int,
        device: torch.device,
        batch_size: int,
        progress: bool,
        variants: tuple[str, ...] = (),
    ) -> None:
        ordered = sorted(pairs, key=lambda p: p.name)
        names = [pair.name for pair in ordered]
        if variants:
            names = [f"{variant}/{name}" for variant in variants for name in names]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            clean_stale_builds(self.directory)
            with atomic_path(folder, directory=True) as tmp, progress_bar(enabled=progress) as bar:
                claim(tmp)
                description = f"encoding {len(ordered)} images with {encoder.name}"
                if variants:
                    description += f" × {len(variants)} variants ({', '.join(variants)})"
                task = bar.add_task(description, total=len(names))
                advance = partial(bar.advance, task)
                sizes, arrays = encode_into(
                    tmp, encoder, ordered, image_size, device, batch_size, advance, variants
                )
                release(tmp)
                body = {
                    "key": key,
                    "encoder": encoder.name,
                    "weights_digest": encoder.weights_digest,
                    "image_size": image_size,
                    "names": names,
                    "sizes": sizes,
                    "arrays": {name: asdict(record) for name, record in arrays.items()},
                }
                write_index(tmp, body)
        except OSError as err:
            raise PolypsegError(
                f"cannot write the feature cache in {self.directory} ({first_line(err)}); "
                "free space there or set POLYPSEG_CACHE to a writable disk with room"
            ) from None
