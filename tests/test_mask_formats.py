"""Masks in any common format are read by one rule, and the sets it cannot read are refused.

0/1 label PNGs (8 and 16 bit), VOC-style palette PNGs and masks drawn only in alpha used to read
as empty, and a run printed `test_dice=1.0000`. Here each format reads as its mask, for training
(the cached masks) and for `evaluate` under both protocols; sets (and split parts) of empty or
inverted masks, and several files for one stem, are refused before any work.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line
from PIL import Image
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import load_config
from polypseg.data.masks import check_split_masks, read_mask
from polypseg.data.pairs import check_decoding, list_pairs
from polypseg.data.split import split_names
from polypseg.errors import DataError
from polypseg.evaluation.maps import read_pranet_mask

MISSING_MODEL = "models:/no-such-model@champion"
FORMATS = ["labels8", "labels16", "palette", "alpha", "grey16"]


def _truth() -> np.ndarray:
    truth = np.zeros((24, 30), bool)
    truth[5:15, 8:20] = True
    truth[18:, 25:] = True
    return truth


def write_mask(truth: np.ndarray, path: Path, fmt: str) -> Path:
    """`truth` (H×W bool) saved in one of the formats polyp sets ship; returns the file."""
    path = path.with_suffix(".png")
    if fmt == "labels8":  # 0/1 label PNG
        Image.fromarray(truth.astype(np.uint8)).save(path)
    elif fmt == "labels16":  # 16-bit 0/1 labels
        Image.fromarray(truth.astype(np.uint16)).save(path)
    elif fmt == "palette":  # VOC style: index 1 is polyp, dark red in the palette
        image = Image.fromarray(truth.astype(np.uint8), mode="P")
        image.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254)
        image.save(path)
    elif fmt == "alpha":  # black everywhere, the polyp drawn only in alpha
        rgba = np.zeros((*truth.shape, 4), np.uint8)
        rgba[..., 3] = truth * 255
        Image.fromarray(rgba).save(path)
    elif fmt == "grey16":  # 16-bit 0/65535
        Image.fromarray(truth.astype(np.uint16) * 65535).save(path)
    else:  # "grey8": the 0/255 reference
        Image.fromarray(truth.astype(np.uint8) * 255).save(path)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_as_its_mask_under_both_protocols(tmp_path: Path, fmt: str) -> None:
    truth = _truth()
    path = write_mask(truth, tmp_path / "m", fmt)
    np.testing.assert_array_equal(read_mask(path), truth.astype(np.uint8))
    np.testing.assert_array_equal(read_pranet_mask(path), truth)


def test_the_rule_thresholds_at_half_the_range_and_reads_labels(tmp_path: Path) -> None:
    cases = {
        "g8.png": (np.array([[0, 127, 128, 255]], np.uint8), [0, 0, 1, 1]),
        "g16.png": (np.array([[0, 32767, 32768, 65535]], np.uint16), [0, 0, 1, 1]),
        "l16.png": (np.array([[0, 1, 1, 0]], np.uint16), [0, 1, 1, 0]),
        "rgb01.png": (np.array([[[0, 0, 0], [1, 1, 1], [0, 1, 0], [0, 0, 0]]], np.uint8), None),
    }
    for name, (values, expected) in cases.items():
        Image.fromarray(values).save(tmp_path / name)
        expected = expected if expected is not None else [0, 1, 1, 0]
        assert read_mask(tmp_path / name).tolist() == [expected], name


def test_alpha_is_ignored_when_the_colour_carries_the_mask(tmp_path: Path) -> None:
    truth = _truth()
    rgba = np.dstack([truth * 255] * 3 + [np.full(truth.shape, 255)]).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "opaque.png"), truth)


def test_a_palette_whose_first_colour_is_not_black_is_read_by_its_colours(tmp_path: Path) -> None:
    truth = _truth()
    image = Image.fromarray((~truth).astype(np.uint8), mode="P")  # index 0: polyp, white
    image.putpalette([255, 255, 255, 0, 0, 0] + [0, 0, 0] * 254)
    image.save(tmp_path / "white0.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "white0.png"), truth)


# --- a run and an evaluation on label masks -----------------------------------------------------


def _recoded(source: Path, dest: Path, fmt: str) -> tuple[Path, dict[str, np.ndarray]]:
    """The synthetic set with its masks saved as `fmt` ("mixed": each in the next of `FORMATS`);
    returns it and the masks by stem."""
    shutil.copytree(source / "images", dest / "images")
    (dest / "masks").mkdir()
    truths = {}
    for index, mask in enumerate(sorted((source / "masks").iterdir())):
        truths[mask.stem] = read_mask(mask).astype(bool)
        own = FORMATS[index % len(FORMATS)] if fmt == "mixed" else fmt
        write_mask(truths[mask.stem], dest / "masks" / mask.stem, own)
    return dest, truths


def _config(root: Path, tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"{root.name}.toml"
    path.write_text(re.sub(r'root = ".*"', f'root = "{root}"', text))
    return path


def test_training_reads_masks_of_every_format_as_the_same_masks(
    synthetic_root: Path, tmp_path: Path
) -> None:
    from polypseg.features.prepare import prepare

    def cached_masks(root: Path) -> np.ndarray:
        overrides = {"data.source": "local", "data.root": str(root), "data.image_size": 64}
        overrides |= {"encoder.name": "sam_tiny", "encoder.allow_random_weights": True}
        return np.asarray(prepare(load_config(None, overrides), progress=False).features.masks)

    mixed, _ = _recoded(synthetic_root, tmp_path / "mixed", "mixed")
    reference, _ = _recoded(synthetic_root, tmp_path / "grey8", "grey8")
    masks = cached_masks(mixed)
    assert 0.01 < masks.mean() < 0.7
    np.testing.assert_array_equal(masks, cached_masks(reference))


def test_a_run_on_label_masks_scores_like_one_on_0_255_masks(
    runner: CliRunner,
    synthetic_root: Path,
    tiny_config_text: str,
    tmp_path: Path,
    mlflow_store: str,
) -> None:
    dice = {}
    for fmt in ("mixed", "grey8"):
        root, _ = _recoded(synthetic_root, tmp_path / fmt, fmt)
        result = runner.invoke(
            app, ["train", "--config", str(_config(root, tmp_path, tiny_config_text))]
        )
        assert result.exit_code == 0, result.output
        dice[fmt] = float(re.search(r"test_dice=([0-9.]+)", result.stdout).group(1))
    assert dice["mixed"] == dice["grey8"] < 0.99


def test_evaluate_on_masks_of_every_format_gives_the_dice_of_0_255_masks(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path, mlflow_store: str
) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    mixed, truths = _recoded(synthetic_root, tmp_path / "mixed", "mixed")
    reference, _ = _recoded(synthetic_root, tmp_path / "grey8", "grey8")
    for stem, truth in truths.items():  # the top half of each polyp found: Dice well below 1
        found = truth.copy()
        found[truth.shape[0] // 2 :] = False
        Image.fromarray(found.astype(np.uint8) * 255).save(maps / f"{stem}.png")
    for protocol, key in (("default", "dice"), ("pranet", "mdice")):
        dice = {}
        for root in (mixed, reference):
            out = tmp_path / f"{root.name}-{protocol}.json"
            args = ["evaluate", "--predictions", str(maps), "--root", str(root), "--out", str(out)]
            result = runner.invoke(app, [*args, "--protocol", protocol])
            assert result.exit_code == 0, result.output
            dice[root.name] = json.loads(out.read_text())[key]
        assert dice["mixed"] == pytest.approx(dice["grey8"], abs=1e-12), protocol
        assert 0.1 < dice["mixed"] < 0.9, protocol


# --- sets whose masks cannot be polyp annotations -----------------------------------------------


def _set(tmp_path: Path, masks: list[np.ndarray], suffix: str = ".png", quality: int = 95) -> Path:
    root = tmp_path / "set"
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for index, mask in enumerate(masks):
        image = np.full((*mask.shape, 3), (180, 90, 80), np.uint8)
        Image.fromarray(image).save(root / "images" / f"{index:02d}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"{index:02d}{suffix}", quality=quality)
    return root


def test_label_masks_saved_as_jpeg_are_refused_before_encoding(
    runner: CliRunner, tmp_path: Path, tiny_config_text: str, isolated_cache: Path
) -> None:
    """0/1 labels through JPEG compression (quality 50) come back all 0: refused, not scored."""
    masks = []
    for shift in range(12):
        labels = np.zeros((48, 64), np.uint8)
        labels[10 + shift : 30 + shift, 8:40] = 1
        masks.append(labels)
    root = _set(tmp_path, masks, suffix=".jpg", quality=50)
    config = str(_config(root, tmp_path, tiny_config_text))
    line = one_error_line(runner.invoke(app, ["cache", "--config", config]))
    assert "all 12 masks in masks/ are empty" in line and "0/1 label images saved as JPEG" in line
    assert not list(isolated_cache.glob("**/features.npy"))  # refused before any encoding


@pytest.mark.parametrize("value", [0, 255])
def test_all_empty_or_all_full_masks_are_refused_by_the_decode_check(
    tmp_path: Path, value: int
) -> None:
    root = _set(tmp_path, [np.full((16, 16), value, np.uint8)] * 4)
    with pytest.raises(DataError, match="are empty" if value == 0 else "inverted"):
        check_decoding(root, list_pairs(root, decode=False))


def test_a_polyp_at_under_one_eighth_scale_is_not_called_empty(tmp_path: Path) -> None:
    """The decode check looks at JPEGs at 1/8 scale; a small polyp is confirmed at full scale."""
    masks = []
    for index in range(4):
        mask = np.zeros((64, 64), np.uint8)
        mask[8 * index + 3 : 8 * index + 6, 20:23] = 255  # 3×3: under half of any 8×8 block
        masks.append(mask)
    root = _set(tmp_path, masks, suffix=".jpg")
    check_decoding(root, list_pairs(root, decode=False))


def test_a_split_part_with_only_empty_masks_is_refused() -> None:
    names = [f"{i:02d}.jpg" for i in range(12)]
    split = split_names(names)
    masks = np.zeros((12, 1, 8, 8), np.uint8)
    for name in split.train:
        masks[names.index(name), 0, :3, :3] = 1
    with pytest.raises(DataError, match=r"DIR: all 1 masks in the val part are empty.*split_seed"):
        check_split_masks(split, names, masks, "DIR")
    masks[:] = 1
    masks[:, 0, 0, 0] = 0
    with pytest.raises(DataError, match="98% polyp on average"):
        check_split_masks(split, names, masks, "DIR")


def test_evaluate_refuses_a_set_of_empty_masks(
    runner: CliRunner, tmp_path: Path, mlflow_store: str
) -> None:
    root = _set(tmp_path, [np.zeros((16, 16), np.uint8)] * 3)
    maps = tmp_path / "maps"
    maps.mkdir()
    for index in range(3):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(maps / f"{index:02d}.png")
    commands = [
        ["evaluate", "--predictions", str(maps), "--root", str(root)],
        ["evaluate", "--model", MISSING_MODEL, "--root", str(root), "--split", "all"],
    ]
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "all 3 masks in" in result.stderr and "are empty" in result.stderr, args
        assert not Path("evaluation.json").exists()


# --- several files for one stem --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "names"),
    [("images", ["00.jpg", "00.png"]), ("masks", ["00.JPG", "00.png"])],
)
def test_several_files_for_one_stem_are_refused(
    runner: CliRunner, synthetic_root: Path, tmp_path: Path, kind: str, names: list[str]
) -> None:
    root = _set(tmp_path, [np.eye(16, dtype=np.uint8) * 255] * 2)
    existing = next((root / kind).glob("00.*"))
    for name in names:  # a stale second file beside the one `_set` wrote
        if not (root / kind / name).exists():
            shutil.copy(existing, root / kind / name)
    line = one_error_line(runner.invoke(app, ["data", "split", "--root", str(root)]))
    assert f"{kind}/{names[0]} and {kind}/{names[1]} share the stem 00: remove one" in line


def test_several_maps_for_one_stem_are_refused(
    runner: CliRunner, tmp_path: Path, mlflow_store: str
) -> None:
    root = _set(tmp_path, [np.eye(16, dtype=np.uint8) * 255] * 2)
    maps = tmp_path / "maps"
    maps.mkdir()
    for name in ("00.png", "00.bmp", "01.png"):
        Image.fromarray(np.eye(16, dtype=np.uint8) * 255).save(maps / name)
    result = runner.invoke(app, ["evaluate", "--predictions", str(maps), "--root", str(root)])
    assert result.exit_code == 2
    assert "maps/00.bmp and maps/00.png share the stem 00: remove one" in result.stderr
