"""The Kvasir-SEG data layer: pairing, reading, splitting, the Dataset and synthetic data."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.data.dataset import KvasirDataset
from polypseg.data.images import read_image
from polypseg.data.masks import read_mask
from polypseg.data.pairs import list_pairs
from polypseg.data.sets import find_dataset_root
from polypseg.data.split import split_names
from polypseg.data.synthetic import make_synthetic
from polypseg.errors import DataError


def _copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_split_of_1000_names_is_800_100_100() -> None:
    split = split_names([f"img{i:04d}.jpg" for i in range(1000)], seed=42)
    assert (len(split.train), len(split.val), len(split.test)) == (800, 100, 100)
    assert not set(split.train) & set(split.val) | set(split.train) & set(split.test)


def test_split_is_independent_of_listing_order() -> None:
    names = [f"img{i:04d}.jpg" for i in range(1000)]
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    assert split_names(shuffled, seed=42) == split_names(names, seed=42)


@pytest.mark.parametrize("n", [2, 3, 7, 10, 99, 100, 1000, 1001])
@pytest.mark.parametrize("seed", [0, 42, 2**32 - 1])
@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (0.5, 0.0, 0.5)])
def test_split_is_scikit_learns_train_test_split_twice(
    n: int, seed: int, ratios: tuple[float, float, float]
) -> None:
    """The seed notebook's protocol, reproduced without importing scikit-learn at run time."""
    from sklearn.model_selection import train_test_split

    names = sorted(f"img{i:04d}.jpg" for i in range(n))
    held = ratios[1] + ratios[2]
    train, rest = train_test_split(names, test_size=held, random_state=seed)
    if len(rest) < 2:
        val, test = rest, []  # one name left is not split (train_test_split would refuse)
    elif not ratios[1]:
        val, test = [], rest
    else:
        val, test = train_test_split(rest, test_size=ratios[2] / held, random_state=seed)
    split = split_names(names, seed, ratios)
    assert (split.train, split.val, split.test) == (tuple(train), tuple(val), tuple(test))


def test_split_changes_with_the_seed() -> None:
    names = [f"img{i:04d}.jpg" for i in range(100)]
    assert split_names(names, seed=42).test != split_names(names, seed=43).test


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12])
def test_small_sets_keep_a_nonempty_train_split(n: int) -> None:
    split = split_names([f"{i}.jpg" for i in range(n)])
    assert split.train
    assert len(split.train) + len(split.val) + len(split.test) == n


def test_an_empty_split_that_is_needed_is_a_clear_error() -> None:
    split = split_names(["a.jpg", "b.jpg"])
    with pytest.raises(DataError, match="test split is empty"):
        split.names("test")


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.8, 0.1, 0.2), (0.0, 0.5, 0.5)])
def test_bad_ratios_are_rejected(ratios: tuple[float, ...]) -> None:
    with pytest.raises(DataError, match="ratios"):
        split_names(["a.jpg"] * 3, ratios=ratios)


def test_pairing_errors_name_the_unpaired_files(synthetic_root: Path, tmp_path: Path) -> None:
    root = _copy_set(synthetic_root, tmp_path / "set")
    image = sorted((root / "images").iterdir())[0]
    mask = sorted((root / "masks").iterdir())[1]
    image.unlink()
    mask.unlink()
    with pytest.raises(DataError) as err:
        list_pairs(root)
    message = str(err.value)
    assert f"images without masks: {mask.name}" in message
    assert f"masks without images: {image.name}" in message


def test_undecodable_files_are_named(synthetic_root: Path, tmp_path: Path) -> None:
    root = _copy_set(synthetic_root, tmp_path / "set")
    broken = sorted((root / "images").iterdir())[2]
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=f"cannot be decoded: images/{broken.name}"):
        list_pairs(root)


def test_jpeg_noisy_rgb_mask_binarizes_at_128(tmp_path: Path) -> None:
    truth = np.zeros((64, 80), dtype=np.uint8)
    truth[16:48, 20:60] = 1
    Image.fromarray(truth * 255).convert("RGB").save(tmp_path / "m.jpg", quality=60)
    noisy = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert noisy.ndim == 3 and len(np.unique(noisy)) > 2  # the real masks' compression noise
    mask = read_mask(tmp_path / "m.jpg")
    assert set(np.unique(mask)) <= {0, 1}
    assert (mask != truth).mean() < 0.01


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_images_of_any_mode_read_as_rgb(tmp_path: Path, mode: str) -> None:
    array = np.linspace(0, 255, 30 * 40, dtype=np.float64).reshape(30, 40)
    if mode == "I;16":
        image = Image.fromarray((array * 257).astype(np.uint16))
    else:
        image = Image.fromarray(array.astype(np.uint8)).convert(mode)
    image.save(tmp_path / "x.png")
    rgb = read_image(tmp_path / "x.png")
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert rgb.max() > 200  # 16-bit data is scaled, not clipped to black


def test_synthetic_set_is_reproducible_per_seed(tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", n=3, seed=5)
    b = make_synthetic(tmp_path / "b", n=3, seed=5)
    c = make_synthetic(tmp_path / "c", n=3, seed=6)
    for kind in ("images", "masks"):
        for fa, fb in zip(sorted((a / kind).iterdir()), sorted((b / kind).iterdir()), strict=True):
            assert fa.read_bytes() == fb.read_bytes()
    first = sorted((c / "images").iterdir())[0].read_bytes()
    assert first != sorted((a / "images").iterdir())[0].read_bytes()


def test_synthetic_set_looks_like_kvasir(synthetic_root: Path) -> None:
    pairs = list_pairs(synthetic_root)
    assert len(pairs) == 12
    sizes = {read_image(p.image).shape[:2] for p in pairs}
    assert len(sizes) > 1 and any(h != w for h, w in sizes)
    raw_mask = np.asarray(Image.open(pairs[0].mask))
    assert raw_mask.ndim == 3  # RGB JPEG masks, like the real ones
    fractions = [read_mask(p.mask).mean() for p in pairs]
    assert all(0.01 < f < 0.7 for f in fractions)


def test_synthetic_polyps_are_not_one_threshold_away(synthetic_root: Path) -> None:
    """No threshold on any one colour channel segments the polyps well: learnable, not trivial."""
    pixels, labels = [], []
    for pair in list_pairs(synthetic_root):
        pixels.append(read_image(pair.image).reshape(-1, 3))
        labels.append(read_mask(pair.mask).ravel())
    rgb, truth = np.concatenate(pixels), np.concatenate(labels).astype(bool)
    best_dice = 0.0
    for channel in range(3):
        for t in range(0, 256, 4):
            for pred in (rgb[:, channel] >= t, rgb[:, channel] < t):
                dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
                best_dice = max(best_dice, dice)
    assert best_dice < 0.75


def test_dataset_yields_resized_tensors_and_original_size(synthetic_root: Path) -> None:
    pairs = list_pairs(synthetic_root)[:3]
    names = [p.name for p in pairs]
    item = KvasirDataset(pairs, image_size=64)[1]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert set(item["mask"].unique().tolist()) <= {0, 1}
    original = read_image(next(p.image for p in list_pairs(synthetic_root) if p.name == names[1]))
    assert tuple(item["size"].tolist()) == original.shape[:2]
    assert item["name"] == names[1]


def test_nested_download_folder_is_found(synthetic_root: Path, tmp_path: Path) -> None:
    nested = tmp_path / "archive" / "versions" / "1" / "Kvasir-SEG"
    _copy_set(synthetic_root, nested)
    assert find_dataset_root(tmp_path / "archive") == nested


def test_a_folder_without_images_and_masks_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images/ and masks/"):
        find_dataset_root(tmp_path)


def test_an_image_file_that_is_not_decodable_fails_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(io.BytesIO(b"\xff\xd8\xff garbage").getvalue())
    with pytest.raises(DataError, match="bad.jpg"):
        read_image(bad)


def test_a_sideways_camera_jpeg_is_read_upright_and_pairs_with_its_upright_mask(
    tmp_path: Path,
) -> None:
    upright = np.zeros((48, 64), np.uint8)  # H×W as shown: the polyp in the top-left corner
    upright[:20, :24] = 255
    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
    stored = Image.fromarray(np.rot90(upright)).convert("RGB")  # pixels as a camera keeps them
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to show
    stored.save(tmp_path / "images" / "a.jpg", exif=exif, quality=95)
    Image.fromarray(upright).save(tmp_path / "masks" / "a.png")
    (pair,) = list_pairs(tmp_path)  # the checks compare sizes as shown: 64×48 both
    image, mask = read_image(pair.image), read_mask(pair.mask)
    assert image.shape == (48, 64, 3) and mask.shape == (48, 64)
    assert np.mean((image.mean(axis=2) > 128) == mask.astype(bool)) > 0.98
