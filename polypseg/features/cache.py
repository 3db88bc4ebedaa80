"""The feature cache: the frozen encoder runs once per image, and every run reads its output.

A cache entry is a folder under `$POLYPSEG_CACHE/features` holding `features.npy` (N×C×h×w
float16, memory-mapped on load), `masks.npy` (N×1×S×S uint8) and `index.json` (see `entry.py`).
Its key digests the encoder's name, weights and compute dtype, the input size and every image's
and mask's bytes, so a changed file, another checkpoint or another precision never reuses stale
features; hashing the images is cheap next to the rest (1000 synthetic pairs: 0.07 s).

A hit checks the entry cheaply, at a cost independent of its size (the index's own digest, the
arrays' sizes, headers and first and last MiB) and maps the arrays; `verify=True`
(`polypseg cache --verify`) re-reads every byte. A damaged entry is deleted and rebuilt, never
used. Entries are built in a temporary folder (`encode.py`: the feature pass) and renamed into
place when whole; the folders of builds that were killed are removed by the next build
(`builds.py`); a full or read-only disk is one `CacheError` line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from polypseg.data.kvasir import Pair, hash_pairs
from polypseg.errors import CacheError, DataError
from polypseg.features.builds import claim, clean_stale_builds, release
from polypseg.features.encode import encode_into
from polypseg.features.entry import FORMAT, open_entry, verify_entry, write_index
from polypseg.files import atomic_path, cache_home, first_line
from polypseg.models.encoders import FrozenEncoder
from polypseg.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class FeatureSet:
    """Cached features (N×C×h×w, float16) and masks (N×1×S×S, uint8 0/1) of one split."""

    features: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device) -> FeatureSet:
        """On the device once, when it fits, so epochs make no host-to-device copy per batch."""
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            needed = self.features.nbytes + self.masks.nbytes
            if needed > 0.5 * free:
                return self  # stays on the host; batches are copied as they are used
        return FeatureSet(self.features.to(device), self.masks.to(device))

    def batches(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(float32 features, float32 masks) batches on `device`, shuffled with `generator`."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        order = order.to(self.features.device)  # once per epoch, not once per batch
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            x = self.features[rows].to(device, non_blocking=True).float()
            y = self.masks[rows].to(device, non_blocking=True).float()
            yield x, y


@dataclass(frozen=True)
class CachedFeatures:
    """A loaded cache entry: memory-mapped arrays, one row per image name."""

    directory: Path
    names: tuple[str, ...]
    sizes: np.ndarray  # N×2 original (height, width)
    features: np.ndarray  # N×C×h×w float16
    masks: np.ndarray  # N×1×S×S uint8 (0/1)

    def rows(self, names: Sequence[str]) -> np.ndarray:
        index = {name: row for row, name in enumerate(self.names)}
        missing = [name for name in names if name not in index]
        if missing:
            raise DataError(f"feature cache {self.directory} lacks {', '.join(missing[:5])}")
        return np.array([index[name] for name in names], dtype=np.int64)

    def feature_set(self, names: Sequence[str]) -> FeatureSet:
        """The features (float16 N×C×h×w) and masks (uint8 N×1×S×S) of `names`, in that order."""
        rows = self.rows(names)
        return FeatureSet(torch.from_numpy(self.features[rows]), torch.from_numpy(self.masks[rows]))


class FeatureCache:
    """Builds and loads cache entries under one folder (default `$POLYPSEG_CACHE/features`)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else cache_home() / "features"

    def key(
        self,
        encoder: FrozenEncoder,
        pairs: Sequence[Pair],
        image_size: int,
        device: str | torch.device = "cpu",
    ) -> str:
        digest = hashlib.sha256()
        dtype = str(encoder.compute_dtype(torch.device(device))).removeprefix("torch.")
        header = [FORMAT, encoder.name, encoder.weights_digest, image_size, dtype]
        digest.update(json.dumps(header).encode())
        hash_pairs(digest, sorted(pairs, key=lambda p: p.name))
        return digest.hexdigest()

    def entry_dir(self, encoder: FrozenEncoder, image_size: int, key: str) -> Path:
        return self.directory / f"{encoder.name}-{image_size}px-{key[:16]}"

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
    ) -> CachedFeatures:
        """The entry for these images, built first when missing or damaged.

        `verify` re-hashes an existing entry in full instead of the cheap check. `before_build`
        runs only on a miss, before anything is encoded (`prepare` checks that every file
        decodes there: a hit's key already proves it).
        """
        device = torch.device(device)
        key = self.key(encoder, pairs, image_size, device)
        folder = self.entry_dir(encoder, image_size, key)
        cached = self.load(folder, key, verify=verify)
        if cached is not None:
            return cached
        if before_build is not None:
            before_build()
        self.build(
            folder,
            key=key,
            encoder=encoder,
            pairs=pairs,
            image_size=image_size,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
        cached = self.load(folder, key)
        if cached is None:  # pragma: no cover - a build that does not verify is a bug
            raise RuntimeError(f"feature cache {folder} failed verification right after its build")
        return cached

    def load(self, folder: Path, key: str, verify: bool = False) -> CachedFeatures | None:
        """The entry in `folder`, or None when absent; a damaged entry is deleted (None)."""
        if not folder.exists():
            return None
        try:
            if verify:
                verify_entry(folder, key)
            entry, features, masks = open_entry(folder, key)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("feature cache %s is corrupt (%s); rebuilding it", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return CachedFeatures(folder, entry.names, entry.sizes, features, masks)

    def build(
        self,
        folder: Path,
        *,
        key: str,
        encoder: FrozenEncoder,
        pairs: Sequence[Pair],
        image_size: int,
        device: torch.device,
        batch_size: int,
        progress: bool,
    ) -> None:
        """Encode every image once into a new entry, renamed into place when whole."""
        ordered = sorted(pairs, key=lambda p: p.name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            clean_stale_builds(self.directory)
            with atomic_path(folder, directory=True) as tmp, progress_bar(enabled=progress) as bar:
                claim(tmp)
                description = f"encoding {len(ordered)} images with {encoder.name}"
                task = bar.add_task(description, total=len(ordered))
                sizes, arrays = encode_into(
                    tmp,
                    encoder,
                    ordered,
                    image_size,
                    device,
                    batch_size,
                    lambda n: bar.advance(task, n),
                )
                release(tmp)
                body = {
                    "key": key,
                    "encoder": encoder.name,
                    "weights_digest": encoder.weights_digest,
                    "image_size": image_size,
                    "names": [pair.name for pair in ordered],
                    "sizes": sizes,
                    "arrays": {name: record.to_json() for name, record in arrays.items()},
                }
                write_index(tmp, body)
        except OSError as err:
            raise CacheError(
                f"cannot write the feature cache in {self.directory} ({first_line(err)}); "
                "free space there or set POLYPSEG_CACHE to a writable disk with room"
            ) from None
