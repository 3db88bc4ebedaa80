"""From a config to what training needs: the data folder, its split, the encoder, the cache.

`prepare` is the one place that resolves a config's data, splits it, builds the encoder and gets
the feature cache (and with `data.augment` the training images' variants), so `cache`, `train`
and `tune` share it. A study prepares once: `Prepared.feature_set` keeps each part it reads in
`SharedSets`, which every `dataclasses.replace` copy shares, so trials and `--n-jobs` threads
train on one read-only copy instead of one read per trial.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from polypseg.config import Config
from polypseg.data.dataset import KvasirDataset
from polypseg.data.masks import check_split_masks
from polypseg.data.pairs import Pair, check_decoding, list_pairs
from polypseg.data.protocol import training_data
from polypseg.data.source import resolve_root
from polypseg.data.split import Split, split_names
from polypseg.errors import PolypsegError
from polypseg.features.cache import CachedFeatures, FeatureCache, FeatureSet
from polypseg.models.encoders import FrozenEncoder, build_encoder


def resolve_device(name: str) -> torch.device:
    """ "auto" → cuda, then mps, then cpu; anything else as given, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PolypsegError(
            f"train.device = {name!r} is not a device; use auto, cpu, cuda or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PolypsegError(f"train.device = {name!r} but no CUDA GPU is visible; use auto or cpu")
    return device


class SharedSets:
    """Feature sets loaded once per key and shared read-only, by threads too: the first thread
    that asks loads a set, the others wait for it rather than load it too."""

    def __init__(self) -> None:
        self._sets: dict[tuple[str, str], FeatureSet] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], load: Callable[[], FeatureSet]) -> FeatureSet:
        with self._lock:
            if key not in self._sets:
                self._sets[key] = load()
            return self._sets[key]


@dataclass(frozen=True)
class Prepared:
    root: Path
    pairs: tuple[Pair, ...]
    split: Split
    encoder: FrozenEncoder
    fallback_reason: str | None
    features: CachedFeatures
    device: torch.device
    augmented: CachedFeatures | None = None  # the training images under `data.augment`
    # Kept by `dataclasses.replace` (a trial's copy on another device): one memo per study.
    shared: SharedSets = field(default_factory=SharedSets, compare=False, repr=False)

    def feature_set(
        self, part: str, augment: tuple[str, ...] = (), images: bool = False
    ) -> FeatureSet:
        """One part of the split (train, val or test), with `augment`'s variants (train only)
        and the images when asked: read once, moved to `device` once when it fits, the same
        tensors for every caller (never modify them)."""
        pinned = self.device.type == "cuda"
        where = "pinned" if pinned else "host"
        names = self.split.names(part)
        host = self.shared.get(
            (part, where), lambda: self.features.feature_set(names, pinned=pinned)
        )
        extra = {}
        if images:
            extra["images"] = self.shared.get((part, "images"), lambda: self.images(names))
        if augment:
            extra["variants"] = augment
            extra["augmented"] = self.shared.get(
                (part, where, *augment), lambda: self._augmented(part, augment, pinned)
            )
        if extra:
            host = FeatureSet(host.features, host.masks, **extra)
        key = (part, str(self.device), *augment, "images" if images else "")
        return self.shared.get(key, lambda: host.to(self.device))

    def images(self, names: Sequence[str]) -> torch.Tensor:
        """N×3×S×S uint8: the named images as the cache's features saw them."""
        by_name = {pair.name: pair for pair in self.pairs}
        items = KvasirDataset([by_name[name] for name in names], self.features.masks.shape[-1])
        return torch.stack([items[i]["image"] for i in range(len(items))])

    def _augmented(self, part: str, augment: tuple[str, ...], pinned: bool) -> torch.Tensor:
        """V×N×C×h×w float16: the part's features under each variant (training images only)."""
        held = self.augmented.names if self.augmented is not None else ()
        wanted = [f"{variant}/{name}" for variant in augment for name in self.split.names(part)]
        if part != "train" or not set(wanted) <= set(held):
            raise PolypsegError(
                f"data.augment = {list(augment)} for the {part} images, but the feature cache "
                "holds variants of the training images only, for the data.augment prepared; "
                "prepare with these variants (a study: list them in its choices)"
            )
        features = self.augmented.feature_set(wanted, pinned=pinned).features
        return features.view(len(augment), -1, *features.shape[1:])


def prepare(config: Config, progress: bool = True, verify: bool = False) -> Prepared:
    """The config's data, split, encoder and feature cache; `verify` re-hashes a cache hit."""
    limit = config.data.max_megapixels
    if config.data.protocol == "pranet":  # several folders: names `<set>/<file>`, see its split
        root, pairs, split = training_data(config.data)
    else:
        root = resolve_root(config.data)
        pairs = tuple(list_pairs(root, limit, decode=False))
        split = split_names([p.name for p in pairs], config.data.split_seed, config.data.ratios)
    encoder, reason = build_encoder(config.encoder)
    device = resolve_device(config.train.device)
    get = partial(
        FeatureCache().get,
        encoder,
        image_size=config.data.image_size,
        device=device,
        batch_size=config.encoder.batch_size,
        progress=progress,
        verify=verify,
    )
    # A hit's key proves these bytes decoded when its entry was built; before a build, every
    # file is decoded to its end, so a damaged one is named before any encoding starts.
    features = get(pairs, before_build=lambda: check_decoding(root, pairs, limit))
    augmented = None
    if config.data.augment:  # the training images only: validation and test never augment
        train_names = set(split.names("train"))
        train = [pair for pair in pairs if pair.name in train_names]
        augmented = get(train, variants=config.data.augment)
    # Hit or build: a part of the split whose masks (as training reads them) are all empty.
    check_split_masks(split, features.names, features.masks, str(root))
    encoder.cpu()
    # Concrete from now on (what the cache was built at): the logged model records it.
    encoder.precision = "bf16" if encoder.compute_dtype(device) == torch.bfloat16 else "fp32"
    if device.type == "cuda":  # the feature pass's blocks, held by the caching allocator
        torch.cuda.empty_cache()
    return Prepared(root, pairs, split, encoder, reason, features, device, augmented)
