"""Augmentation with a frozen encoder (`data.augment`): each training image's features under
each variant are cached once, and training draws one variant per image and epoch, pixel-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polypseg.config import load_config
from polypseg.data.dataset import KvasirDataset
from polypseg.dihedral import IDENTITY, transform
from polypseg.errors import PolypsegError
from polypseg.features.prepare import prepare

CPU = torch.device("cpu")
VARIANTS = ("hflip", "rot90")


def _config(tiny_config: Path, augment: tuple[str, ...] = VARIANTS):
    # One image per encoder call, at build and here alike: the same arithmetic, bit for bit.
    overrides = {"data.augment": list(augment), "encoder.batch_size": 1}
    return load_config(tiny_config, overrides)


def test_augment_names_are_checked(tiny_config: Path) -> None:
    with pytest.raises(PolypsegError, match="data.augment"):
        load_config(tiny_config, {"data.augment": ["mirror"]})
    assert load_config(tiny_config, {"data.augment": "hflip, rot90"}).data.augment == VARIANTS
    assert load_config(tiny_config, {"data.augment": ""}).data.augment == ()


def test_training_batches_draw_exact_transformed_features_masks_and_images(
    tiny_config: Path,
) -> None:
    config = _config(tiny_config)
    prepared = prepare(config, progress=False)
    train_names = prepared.split.names("train")
    n_all, n_train = len(prepared.pairs), len(train_names)
    # The encoder ran once per image, and once more per training image and variant: no more.
    assert prepared.encoder.images_encoded == n_all + len(VARIANTS) * n_train
    held = {name.split("/", 1)[1] for name in prepared.augmented.names}
    assert held == set(train_names)  # validation and test images are never encoded augmented

    by_name = {pair.name: pair for pair in prepared.pairs}
    items = KvasirDataset([by_name[name] for name in train_names], config.data.image_size)
    encoder = prepared.encoder
    expected = {}  # (image, variant) → (features, mask, image) as the encoder sees them
    for i in range(len(items)):
        image, mask = items[i]["image"], items[i]["mask"]
        for variant in (IDENTITY, *VARIANTS):
            seen = transform(image, variant).contiguous()
            features = encoder(seen[None]).to(torch.float16).float()[0]
            expected[i, variant] = (features, transform(mask, variant).float(), seen)
    # The synthetic images are asymmetric: every variant really is another image.
    first = [expected[0, v][2] for v in (IDENTITY, *VARIANTS)]
    assert not any(torch.equal(a, b) for k, a in enumerate(first) for b in first[k + 1 :])

    train = prepared.feature_set("train", VARIANTS, images=True)
    generator = torch.Generator().manual_seed(0)
    drawn: dict[int, set[str]] = {}
    for _ in range(6):  # epochs
        for x, y, images in train.batches(3, CPU, generator):
            for row in range(len(x)):
                (i, variant), (features, mask, _) = next(
                    (key, value)
                    for key, value in expected.items()
                    if torch.equal(value[2], images[row])
                )
                assert torch.equal(x[row], features), (i, variant)
                assert torch.equal(y[row], mask), (i, variant)
                drawn.setdefault(i, set()).add(variant)
    assert set().union(*drawn.values()) == {IDENTITY, *VARIANTS}
    assert len(drawn) == n_train  # every image, every epoch


def test_validation_never_sees_a_variant(tiny_config: Path, tiny_cache: Path) -> None:
    prepared = prepare(_config(tiny_config), progress=False)
    val = prepared.feature_set("val", images=True)
    assert val.variants == () and val.augmented is None
    names = prepared.split.names("val")
    cached = prepared.features.feature_set(names)
    x, y, _ = next(val.batches(len(names), CPU, torch.Generator().manual_seed(1)))
    order = [
        next(j for j in range(len(names)) if torch.equal(x[k], cached.features[j].float()))
        for k in range(len(names))
    ]
    assert sorted(order) == list(range(len(names)))
    with pytest.raises(PolypsegError, match="training images only"):
        prepared.feature_set("val", VARIANTS)


def test_the_cache_key_covers_the_variants(tiny_config: Path, tiny_cache: Path) -> None:
    one = prepare(_config(tiny_config, ("hflip",)), progress=False)
    two = prepare(_config(tiny_config), progress=False)
    assert one.features.directory == two.features.directory  # the identity entry is shared
    assert one.augmented.directory != two.augmented.directory
    # A trial with fewer variants reads a subset of a larger entry (a study's union).
    subset = two.feature_set("train", ("rot90",))
    assert subset.augmented.shape[0] == 1
    with pytest.raises(PolypsegError, match="vflip"):
        two.feature_set("train", ("vflip",))
