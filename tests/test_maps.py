"""Reading prediction maps and TIFFs Pillow cannot decode, and pairing maps with masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, UnidentifiedImageError

from polypseg.data.images import decode, pixels, read_image, unit_range
from polypseg.errors import DataError
from polypseg.evaluation.maps import (
    pair_maps,
    read_map,
    read_pranet_mask,
    resize_map,
)
from polypseg.metrics import pranet_image_scores


def read_array(path: Path) -> np.ndarray:
    return pixels(decode(path))


def _pillow_fails(path: Path) -> None:
    with pytest.raises(UnidentifiedImageError):
        Image.open(path).load()


def test_a_float_rgb_tiff_pillow_refuses_is_read_with_tifffile(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 9, 3)).astype(np.uint8)
    path = tmp_path / "frame.tif"
    tifffile.imwrite(path, rgb.astype(np.float32) / 255, photometric="rgb")
    _pillow_fails(path)
    np.testing.assert_allclose(read_array(path), rgb / 255, atol=1e-7)
    assert np.array_equal(read_image(path), rgb)


def test_planar_signed_rgb_tiff_is_read_channels_last(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 32767, (7, 5, 3)).astype(np.int16)
    path = tmp_path / "planar.tiff"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    _pillow_fails(path)
    assert np.array_equal(read_array(path), rgb)
    assert read_image(path).shape == (7, 5, 3)


def test_a_file_neither_library_reads_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(DataError, match="broken.tif"):
        read_array(bad)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError, match="notes.png"):
        read_image(text)


def test_unit_range_is_im2double() -> None:
    assert unit_range(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert unit_range(np.array([0, 32768, 65535], np.uint16))[1] == 32768 / 65535
    assert unit_range(np.array([True, False])).tolist() == [1.0, 0.0]
    assert unit_range(np.array([0.25], np.float32)).tolist() == [0.25]
    assert unit_range(np.array([0.0, 127.5])).tolist() == [0.0, 0.5]  # floats beyond 1 are 0-255


def test_maps_of_any_depth_read_as_their_first_channel(tmp_path: Path) -> None:
    grey16 = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_map(tmp_path / "deep.png"), grey16 / 65535)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 50  # PraNet reads channel 1 (red) of a colour map
    Image.fromarray(rgb).save(tmp_path / "colour.bmp")
    np.testing.assert_allclose(read_map(tmp_path / "colour.bmp"), np.full((2, 2), 200 / 255))
    tifffile.imwrite(tmp_path / "float.tif", np.array([[0.0, 0.5]]))  # float64: Pillow refuses
    _pillow_fails(tmp_path / "float.tif")
    np.testing.assert_array_equal(read_map(tmp_path / "float.tif"), [[0.0, 0.5]])


def test_maps_are_resized_bilinearly_to_the_mask() -> None:
    np.testing.assert_allclose(resize_map(np.array([[0.0, 1.0]]), (1, 4)), [[0, 0.25, 0.75, 1]])
    same = np.eye(3)
    assert resize_map(same, (3, 3)) is same


def test_pranet_masks_are_rgb2gray_above_128(tmp_path: Path) -> None:
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0], rgb[0, 1], rgb[0, 2] = 128, 129, (255, 60, 120)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    # 0.2989*255 + 0.5870*60 + 0.1140*120 = 124.7 -> 125: background.
    assert read_pranet_mask(tmp_path / "m.png").tolist() == [[False, True, False]]
    deep = np.array([[0, 129, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert read_pranet_mask(tmp_path / "deep.png").tolist() == [[False, True, True]]


def _data(tmp_path: Path, stems: list[str]) -> Path:
    (tmp_path / "data" / "masks").mkdir(parents=True)
    for stem in stems:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(
            tmp_path / "data" / "masks" / f"{stem}.png"
        )
    return tmp_path / "data"


def test_maps_pair_with_masks_by_stem(tmp_path: Path) -> None:
    root = _data(tmp_path, ["a", "b", "c"])
    maps = tmp_path / "maps"
    maps.mkdir()
    for stem in ("a", "c"):
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(maps / f"{stem}.jpg")
    (maps / "notes.txt").write_text("not a map, not an image suffix: ignored")
    pairs, missing = pair_maps(maps, root)
    assert [(p.name, p.image.name) for p in pairs] == [("a.png", "a.jpg"), ("c.png", "c.jpg")]
    assert missing == ["b.png"]
    assert resize_map(read_map(pairs[0].image), (4, 4)).shape == (4, 4)


def test_a_map_without_mask_is_named(tmp_path: Path) -> None:
    root = _data(tmp_path, ["a"])
    maps = tmp_path / "maps"
    maps.mkdir()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(maps / "stray.png")
    with pytest.raises(DataError, match=r"maps without a mask .*stray\.png"):
        pair_maps(maps, root)
    with pytest.raises(DataError, match="no masks/ folder"):
        pair_maps(maps, tmp_path / "maps")


def test_a_tiff_map_scores_like_the_same_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    levels = rng.integers(0, 256, (9, 11)).astype(np.uint8)
    truth = rng.random((9, 11)) < 0.4
    Image.fromarray(levels).save(tmp_path / "map.png")
    tifffile.imwrite(
        tmp_path / "map.tif", np.dstack([levels] * 3).astype(np.float64) / 255, photometric="rgb"
    )
    _pillow_fails(tmp_path / "map.tif")
    png = pranet_image_scores(read_map(tmp_path / "map.png"), truth)
    tif = pranet_image_scores(read_map(tmp_path / "map.tif"), truth)
    assert png.row() == pytest.approx(tif.row(), abs=1e-12)


def test_float_masks_in_0_1_are_not_black(tmp_path: Path) -> None:
    from polypseg.data.images import read_image
    from polypseg.data.masks import read_mask

    mask = np.zeros((6, 5), np.float32)
    mask[2:4, 1:3] = 1.0
    tifffile.imwrite(tmp_path / "m32.tif", mask)  # Pillow reads float32 grey itself ("F")
    tifffile.imwrite(tmp_path / "m64.tif", mask.astype(np.float64))  # Pillow refuses float64
    for name in ("m32.tif", "m64.tif"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), mask.astype(np.uint8))
        assert read_image(tmp_path / name).max() == 255
