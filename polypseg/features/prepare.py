"""From a config to what training needs: the data folder, its split, the encoder, the cache.

`prepare` is the one place that resolves a config's data source, splits it, builds the encoder
(with its fallback) and gets the feature cache, so `polypseg cache`, `train` and `tune` share it;
a study calls it once and every trial reads the same cached features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from polypseg.config import Config
from polypseg.data.kvasir import Pair, check_decoding, list_pairs
from polypseg.data.source import resolve_root
from polypseg.data.split import Split, split_names
from polypseg.errors import ConfigError
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
        raise ConfigError(
            f"train.device = {name!r} is not a device; use auto, cpu, cuda or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but no CUDA GPU is visible; use auto or cpu")
    return device


@dataclass(frozen=True)
class Prepared:
    root: Path
    pairs: tuple[Pair, ...]
    split: Split
    encoder: FrozenEncoder
    fallback_reason: str | None
    features: CachedFeatures
    device: torch.device

    def feature_set(self, part: str) -> FeatureSet:
        """The cached features and masks of one part of the split (train, val or test)."""
        return self.features.feature_set(self.split.names(part))


def prepare(config: Config, progress: bool = True, verify: bool = False) -> Prepared:
    """Resolve the data, split it, build the encoder and load (or build) the feature cache.

    `verify` re-hashes an existing cache entry in full (a damaged one is rebuilt).
    """
    root = resolve_root(config.data)
    limit = config.data.max_megapixels
    pairs = tuple(list_pairs(root, limit, decode=False))
    split = split_names([p.name for p in pairs], config.data.split_seed, config.data.ratios)
    encoder, reason = build_encoder(config.encoder)
    device = resolve_device(config.train.device)
    features = FeatureCache().get(
        encoder,
        pairs,
        config.data.image_size,
        device=device,
        batch_size=config.encoder.batch_size,
        progress=progress,
        verify=verify,
        # A hit's key proves these bytes decoded when its entry was built; before a build, every
        # file is decoded to its end, so a damaged one is named before any encoding starts.
        before_build=lambda: check_decoding(root, pairs, limit),
    )
    return Prepared(root, pairs, split, encoder.cpu(), reason, features, device)
