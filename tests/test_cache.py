"""The feature cache: one encoder call per image, hits, misses on change, rebuild on corruption."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.data.masks import read_mask
from polypseg.data.pairs import list_pairs
from polypseg.features.cache import FeatureCache
from polypseg.models.encoders import encoder_architecture


@pytest.fixture
def data(synthetic_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_root, tmp_path / "set"))


def _get(cache: FeatureCache, encoder, root: Path):
    return cache.get(encoder, list_pairs(root), image_size=64, batch_size=5, progress=False)


def test_first_build_encodes_each_image_once(data: Path, tmp_path: Path) -> None:
    encoder = encoder_architecture("resnet_tiny")
    cached = _get(FeatureCache(tmp_path / "fc"), encoder, data)
    assert encoder.images_encoded == 12
    assert cached.features.shape == (12, 512, 2, 2) and cached.features.dtype == np.float16
    assert cached.masks.shape == (12, 1, 64, 64)
    assert isinstance(cached.features, np.memmap)


def test_second_get_is_a_hit_without_encoding(data: Path, tmp_path: Path) -> None:
    encoder = encoder_architecture("resnet_tiny")
    first = _get(FeatureCache(tmp_path / "fc"), encoder, data)
    second = _get(FeatureCache(tmp_path / "fc"), encoder, data)
    assert encoder.images_encoded == 12
    assert second.directory == first.directory
    np.testing.assert_array_equal(first.features, second.features)


def test_cached_features_equal_a_fresh_encoding(data: Path, tmp_path: Path) -> None:
    encoder = encoder_architecture("sam_tiny")
    cached = _get(FeatureCache(tmp_path / "fc"), encoder, data)
    from polypseg.data.dataset import KvasirDataset

    pair = next(p for p in list_pairs(data) if p.name == cached.names[3])
    item = KvasirDataset([pair], 64)[0]
    fresh = encoder(item["image"][None]).numpy()
    np.testing.assert_allclose(cached.features[3], fresh[0], atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(cached.masks[3], item["mask"].numpy())


def test_changed_image_is_a_miss(data: Path, tmp_path: Path) -> None:
    encoder = encoder_architecture("resnet_tiny")
    cache = FeatureCache(tmp_path / "fc")
    first = _get(cache, encoder, data)
    victim = sorted((data / "images").iterdir())[0]
    Image.open(victim).transpose(Image.FLIP_LEFT_RIGHT).save(victim)
    second = _get(cache, encoder, data)
    assert encoder.images_encoded == 24
    assert second.directory != first.directory
    assert not np.array_equal(first.features[0], second.features[0])


def test_other_weights_are_a_miss(data: Path, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "fc")
    encoder = encoder_architecture("resnet_tiny")
    first = _get(cache, encoder, data)
    other = encoder_architecture("resnet_tiny")
    other.backbone.resnet.conv1.weight.data.mul_(2)
    other.weights_digest = "changed"  # as a different checkpoint would give
    assert _get(cache, other, data).directory != first.directory


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_index"])
def test_corrupt_cache_is_detected_and_rebuilt(data: Path, tmp_path: Path, damage: str) -> None:
    encoder = encoder_architecture("resnet_tiny")
    cache = FeatureCache(tmp_path / "fc")
    first = _get(cache, encoder, data)
    reference = np.array(first.features)
    target = first.directory / "features.npy"
    del first
    if damage == "truncate":
        with target.open("r+b") as handle:
            handle.truncate(target.stat().st_size // 2)
    elif damage == "flip":
        raw = bytearray(target.read_bytes())
        raw[-10] ^= 0xFF
        target.write_bytes(bytes(raw))
    else:
        (target.parent / "index.json").unlink()
    rebuilt = _get(cache, encoder, data)
    assert encoder.images_encoded == 24
    np.testing.assert_array_equal(np.array(rebuilt.features), reference)


def test_interrupted_build_leaves_no_entry(data: Path, tmp_path: Path) -> None:
    encoder = encoder_architecture("resnet_tiny")
    calls = {"n": 0}
    original = encoder.backbone.forward

    def dies_on_second_batch(x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(x)

    encoder.backbone.forward = dies_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        _get(FeatureCache(tmp_path / "fc"), encoder, data)
    assert not any((tmp_path / "fc").iterdir())


def test_masks_in_cache_match_the_files(data: Path, tmp_path: Path) -> None:
    cached = _get(FeatureCache(tmp_path / "fc"), encoder_architecture("resnet_tiny"), data)
    name = cached.names[5]
    mask = read_mask(data / "masks" / name)
    resized = np.asarray(Image.fromarray(mask).resize((64, 64), Image.NEAREST))
    np.testing.assert_array_equal(cached.masks[5, 0], resized)
    assert tuple(cached.sizes[5]) == mask.shape
    subset = cached.feature_set([name, cached.names[0]])
    assert subset.features.shape[0] == 2 and subset.masks.shape == (2, 1, 64, 64)


def test_another_compute_precision_is_a_miss(data: Path, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "fc")
    encoder = encoder_architecture("resnet_tiny")
    fp32 = _get(cache, encoder, data)
    encoder.precision = "bf16"  # the same weights, features of another precision
    bf16 = _get(cache, encoder, data)
    assert bf16.directory != fp32.directory and encoder.images_encoded == 24


def test_a_prepare_hit_reads_headers_only_and_a_changed_file_is_decoded_again(
    tiny_config: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full decoding costs ~1 s per 1000 pairs: a hit skips it, as its key proves the bytes are
    those its build decoded; a changed file changes the key, so it is decoded (and refused)."""
    from polypseg.config import load_config
    from polypseg.errors import DataError
    from polypseg.features.prepare import prepare

    root = Path(shutil.copytree(synthetic_root, tmp_path / "set"))
    config = load_config(tiny_config, {"data.root": str(root)})
    decoded: list[str] = []
    load = Image.Image.load

    def counting_load(image: Image.Image):
        decoded.append(getattr(image, "filename", ""))
        return load(image)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    prepare(config, progress=False)
    assert decoded  # the build's check and the encoding decode every file
    decoded.clear()
    prepare(config, progress=False)
    assert decoded == []

    image = sorted((root / "images").iterdir())[1]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(DataError, match=f"cannot be decoded: images/{image.name}"):
        prepare(config, progress=False)


def test_loader_workers_fit_in_the_free_dev_shm(monkeypatch, caplog) -> None:
    import torch

    from polypseg.features import encode

    monkeypatch.setattr(encode, "usable_cores", lambda: 16)
    batch_bytes = 8 * 4 * 1024**2  # 8 images and masks at 1024 px: 32 MiB
    room = {"free": 100 * batch_bytes}
    monkeypatch.setattr(encode.shutil, "disk_usage", lambda path: type("U", (), room)())
    cuda = torch.device("cuda")
    assert encode.loader_workers(cuda, 10, batch_bytes) == 8 and not caplog.records
    room["free"] = 5 * batch_bytes  # 2 batches per worker: room for 2 workers
    with caplog.at_level("WARNING"):
        assert encode.loader_workers(cuda, 10, batch_bytes) == 2
    assert "instead of 8" in caplog.text and "shm-size" in caplog.text
    room["free"] = batch_bytes
    assert encode.loader_workers(cuda, 10, batch_bytes) == 0  # decode in the main process


def test_a_compiled_encoder_sees_full_batches_only(data: Path, tmp_path: Path, monkeypatch):
    import torch

    monkeypatch.setattr(
        torch, "compile", lambda module, **kw: torch._dynamo.optimize("eager")(module)
    )
    plain = _get(FeatureCache(tmp_path / "plain"), encoder_architecture("resnet_tiny"), data)
    encoder = encoder_architecture("resnet_tiny")
    encoder.compiled = True
    sizes = []
    encoder.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    compiled = _get(FeatureCache(tmp_path / "compiled"), encoder, data)
    assert sizes == [5, 5, 5]  # 12 images in batches of 5: the last one padded
    assert encoder.images_encoded == 12
    np.testing.assert_allclose(compiled.features, plain.features, atol=1e-3)
