"""The five polyp sets by name: Kaggle copies in their own layouts, PraNet's distribution, and
`polypseg data download --set` with kagglehub replaced by fake caches laid out like each set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line
from PIL import Image
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import POLYP_SETS
from polypseg.data.pairs import set_pairs
from polypseg.data.sets import SETS


def write_pair(image: Path, mask: Path, seed: int = 0) -> None:
    """A tiny RGB image and its mask (a bright square), in the formats their suffixes say."""
    rng = np.random.default_rng(seed)
    image.parent.mkdir(parents=True, exist_ok=True)
    mask.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(image)
    square = np.zeros((20, 24), dtype=np.uint8)
    square[5:12, 6:14] = 255
    Image.fromarray(square).save(mask)


def kaggle_copies(base: Path) -> dict[str, Path]:
    """One fake kagglehub download per set, each in the layout of that set's Kaggle copy."""
    copies = {name: base / name for name in SETS}
    for stem in ("cju0u82z3cuma0835wlxrnrjv", "cjaaa"):
        k = copies["kvasir"] / "Kvasir-SEG"
        write_pair(k / "images" / f"{stem}.jpg", k / "masks" / f"{stem}.jpg")
    for stem in ("1", "2"):  # PNG/ and TIF/ copies side by side: the PNGs are read
        for kind, suffix in (("PNG", "png"), ("TIF", "tif")):
            c = copies["clinicdb"] / kind
            write_pair(c / "Original" / f"{stem}.{suffix}", c / "Ground Truth" / f"{stem}.{suffix}")
    for stem in ("1", "2", "3"):
        c = copies["colondb"] / "CVC-ColonDB"
        write_pair(c / "images" / f"{stem}.png", c / "masks" / f"{stem}.png")
    for stem in ("1", "2"):  # masks named p<stem>, as ETIS's own release names them
        e = copies["etis"] / "ETIS-LaribPolypDB"
        write_pair(e / "image" / f"{stem}.tif", e / "mask" / f"p{stem}.tif")
    for stem in ("150", "151"):  # a TIFF beside a PNG of the same stem, in one folder
        v = copies["cvc300"] / "CVC-300"
        write_pair(v / "images" / f"{stem}.png", v / "masks" / f"{stem}.png")
        write_pair(v / "images" / f"{stem}.tif", v / "masks" / f"{stem}.tif")
    return copies


@pytest.fixture
def fake_kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    import kagglehub

    copies = kaggle_copies(tmp_path / "kaggle")
    by_handle = {SETS[name].handle: folder for name, folder in copies.items()}
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, **_: str(by_handle[handle]))
    return copies


def test_the_table_names_the_config_sets() -> None:
    assert tuple(SETS) == POLYP_SETS


def test_download_all_finds_each_layout_without_renaming(
    runner: CliRunner, fake_kaggle: dict[str, Path]
) -> None:
    result = runner.invoke(app, ["data", "download", "--set", "all"])
    assert result.exit_code == 0, result.output
    folders = dict(line.split("=", 1) for line in result.stdout.strip().splitlines())
    assert list(folders) == list(SETS)
    assert folders["clinicdb"] == str(fake_kaggle["clinicdb"] / "PNG")
    names = {name: [p.name for p in set_pairs(name, folder)] for name, folder in folders.items()}
    assert names == {
        "kvasir": ["kvasir/cjaaa.jpg", "kvasir/cju0u82z3cuma0835wlxrnrjv.jpg"],
        "clinicdb": ["clinicdb/1.png", "clinicdb/2.png"],
        "colondb": ["colondb/1.png", "colondb/2.png", "colondb/3.png"],
        "etis": ["etis/1.tif", "etis/2.tif"],
        "cvc300": ["cvc300/150.png", "cvc300/151.png"],
    }
    etis = set_pairs("etis", folders["etis"])
    assert [p.mask.name for p in etis] == ["p1.tif", "p2.tif"]


def test_download_one_set_prints_its_folder(
    runner: CliRunner, fake_kaggle: dict[str, Path]
) -> None:
    result = runner.invoke(app, ["data", "download", "--set", "colondb"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(fake_kaggle["colondb"] / "CVC-ColonDB")


def test_offline_download_says_how_to_use_a_local_copy(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kagglehub

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    line = one_error_line(runner.invoke(app, ["data", "download", "--set", "clinicdb"]))
    assert "balraj98/cvcclinicdb" in line and "no connection" in line
    assert "--root clinicdb=DIR" in line and 'data.roots = {clinicdb = "DIR"}' in line
    assert "--set data.roots=clinicdb=DIR` (train, tune)" in line  # the form tune has
    line = one_error_line(runner.invoke(app, ["data", "download", "--set", "all"]))
    assert all(f"--root {name}=DIR" in line for name in SETS)


def test_an_unknown_set_is_one_line(runner: CliRunner) -> None:
    line = one_error_line(runner.invoke(app, ["data", "download", "--set", "kvasir2"]))
    assert "'kvasir2'" in line and "kvasir, clinicdb, colondb, etis, cvc300" in line


def pranet_distribution(root: Path) -> Path:
    """PraNet's own folders: both training sets mixed in TrainDataset/, test sets by name."""
    for stem in ("cjtrain1", "cjtrain2", "7", "8"):
        t = root / "TrainDataset"
        write_pair(t / "image" / f"{stem}.png", t / "mask" / f"{stem}.png")
    for folder, stem in (("Kvasir", "cju0u82z3cuma0835wlxrnrjv"), ("CVC-ClinicDB", "100")):
        t = root / "TestDataset" / folder
        write_pair(t / "images" / f"{stem}.png", t / "masks" / f"{stem}.png")
    t = root / "TestDataset" / "ETIS-LaribPolypDB"
    write_pair(t / "images" / "1.png", t / "masks" / "1.png")
    return root


def test_pranet_distribution_is_a_root_for_each_set(tmp_path: Path) -> None:
    root = pranet_distribution(tmp_path / "PraNet")
    names = {name: [p.name for p in set_pairs(name, root)] for name in ("kvasir", "clinicdb")}
    assert names == {
        "kvasir": [
            "kvasir/cjtrain1.png",
            "kvasir/cjtrain2.png",
            "kvasir/cju0u82z3cuma0835wlxrnrjv.png",
        ],
        "clinicdb": ["clinicdb/100.png", "clinicdb/7.png", "clinicdb/8.png"],
    }
    assert [p.name for p in set_pairs("etis", root)] == ["etis/1.png"]


def test_two_copies_of_one_format_are_refused_naming_them(tmp_path: Path) -> None:
    from polypseg.errors import DataError

    for copy in ("a", "b"):
        write_pair(tmp_path / copy / "images" / "1.png", tmp_path / copy / "masks" / "1.png")
    with pytest.raises(DataError, match=r"found a, b; pass that folder as the colondb root"):
        set_pairs("colondb", tmp_path)
