"""The feature cache: the frozen encoder runs once per image, and every run reads its output.

A cache entry is a folder under `$POLYPSEG_CACHE/features` holding `features.npy` (N×C×h×w
float16, memory-mapped on load), `masks.npy` (N×1×S×S uint8) and `index.json` (names, original
sizes, file hashes). Its key digests the encoder's name and weights, the input size and every
image's and mask's bytes, so a changed file or another checkpoint never reuses stale features.
Entries are built in a temporary folder and renamed into place; `index.json` records the hashes
of the arrays, and an entry whose files do not match is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from polypseg.data.dataset import KvasirDataset
from polypseg.data.kvasir import Pair, hash_pairs
from polypseg.errors import DataError
from polypseg.files import atomic_path, cache_home, file_digest
from polypseg.models.encoders import FrozenEncoder
from polypseg.progress import progress_bar

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout changes: old entries then simply miss
ARRAYS = ("features.npy", "masks.npy")


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
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size].to(self.features.device)
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

    def key(self, encoder: FrozenEncoder, pairs: Sequence[Pair], image_size: int) -> str:
        digest = hashlib.sha256()
        header = [FORMAT, encoder.name, encoder.weights_digest, image_size]
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
    ) -> CachedFeatures:
        """The entry for these images, built first when missing or corrupt."""
        key = self.key(encoder, pairs, image_size)
        folder = self.entry_dir(encoder, image_size, key)
        cached = self.load(folder, key)
        if cached is not None:
            return cached
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

    def load(self, folder: Path, key: str) -> CachedFeatures | None:
        """The entry in `folder`, or None when absent; a corrupt entry is deleted (None)."""
        if not folder.exists():
            return None
        try:
            return self._verified(folder, key)
        except (OSError, ValueError, KeyError) as err:
            log.warning("feature cache %s is corrupt (%s); rebuilding it", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def _verified(self, folder: Path, key: str) -> CachedFeatures:
        index = json.loads((folder / "index.json").read_text())
        if index["key"] != key:
            raise ValueError("its key does not match its folder")
        for name in ARRAYS:
            if file_digest(folder / name) != index["sha256"][name]:
                raise ValueError(f"{name} does not match its recorded hash")
        features = np.load(folder / "features.npy", mmap_mode="r")
        masks = np.load(folder / "masks.npy", mmap_mode="r")
        names = tuple(index["names"])
        if features.shape[0] != len(names) or masks.shape[0] != len(names):
            raise ValueError("array lengths do not match the index")
        return CachedFeatures(folder, names, np.array(index["sizes"]), features, masks)

    def build(
        self,
        folder: Path,
        *,
        key: str,
        encoder: FrozenEncoder,
        pairs: Sequence[Pair],
        image_size: int,
        device: str | torch.device,
        batch_size: int,
        progress: bool,
    ) -> None:
        """Encode every image once, in batches, into a new entry renamed into place when whole."""
        ordered = sorted(pairs, key=lambda p: p.name)
        names = [pair.name for pair in ordered]
        loader = DataLoader(KvasirDataset(ordered, image_size), batch_size=batch_size)
        encoder.to(device)
        sizes: list[list[int]] = []
        with atomic_path(folder, directory=True) as tmp, progress_bar(enabled=progress) as bar:
            task = bar.add_task(
                f"encoding {len(names)} images with {encoder.name}", total=len(names)
            )
            features = masks = None
            for batch in loader:
                out = encoder(batch["image"].to(device)).to("cpu", torch.float16).numpy()
                if features is None:
                    features = np.lib.format.open_memmap(
                        tmp / "features.npy", "w+", np.float16, (len(names), *out.shape[1:])
                    )
                    masks = np.lib.format.open_memmap(
                        tmp / "masks.npy", "w+", np.uint8, (len(names), 1, image_size, image_size)
                    )
                start = len(sizes)
                features[start : start + len(out)] = out
                masks[start : start + len(out)] = batch["mask"].numpy()
                sizes.extend(batch["size"].tolist())
                bar.advance(task, len(out))
            features.flush()
            masks.flush()
            del features, masks
            index = {
                "format": FORMAT,
                "key": key,
                "encoder": encoder.name,
                "weights_digest": encoder.weights_digest,
                "image_size": image_size,
                "names": names,
                "sizes": sizes,
                "sha256": {name: file_digest(tmp / name) for name in ARRAYS},
            }
            (tmp / "index.json").write_text(json.dumps(index))
