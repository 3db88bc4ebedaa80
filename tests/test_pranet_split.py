"""PraNet's split: Kvasir + ClinicDB minus PraNet's test images, a seeded val part of the rest,
the test sets by name; its lists, its config keys and what training is told of its sources."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import one_error_line
from test_sets import write_pair
from typer.testing import CliRunner

from polypseg.cli import app
from polypseg.config import DataConfig, load_config
from polypseg.data.protocol import NAMES_FILE, training_data
from polypseg.errors import PolypsegError

KVASIR_TEST = [
    "cju0u82z3cuma0835wlxrnrjv",
    "cju15wdt3zla10801odjiw7sy",
    "cju8dqkrqu83i0818ev74qpxq",
]
KVASIR_TRAIN = [f"cjy{i:022d}" for i in range(7)]
CLINIC_TEST = ["100", "14"]
CLINIC_TRAIN = ["1", "2", "3", "4", "5", "6"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pranet")
    for i, stem in enumerate(KVASIR_TEST + KVASIR_TRAIN):
        k = base / "Kvasir-SEG"
        write_pair(k / "images" / f"{stem}.jpg", k / "masks" / f"{stem}.jpg", i)
    for i, stem in enumerate(CLINIC_TEST + CLINIC_TRAIN):
        c = base / "CVC-ClinicDB"
        write_pair(c / "Original" / f"{stem}.tif", c / "Ground Truth" / f"{stem}.tif", i)
    for stem in ("1", "2", "3"):
        c = base / "CVC-ColonDB"
        write_pair(c / "images" / f"{stem}.png", c / "masks" / f"{stem}.png")
    return {
        "kvasir": base / "Kvasir-SEG",
        "clinicdb": base / "CVC-ClinicDB",
        "colondb": base / "CVC-ColonDB",
    }


def test_the_shipped_lists_are_pranets_100_and_62() -> None:
    lists = json.loads(NAMES_FILE.read_text())
    assert len(set(lists["kvasir"])) == 100 and len(set(lists["clinicdb"])) == 62
    assert "DengPingFan/PraNet" in lists["provenance"]
    assert set(KVASIR_TEST) <= set(lists["kvasir"]) and set(CLINIC_TEST) <= set(lists["clinicdb"])


def test_split_holds_out_exactly_pranets_test_images(
    runner: CliRunner, roots: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "split.json"
    args = ["data", "split", "--protocol", "pranet", "--out", str(out)]
    args += [f"--root={name}={folder}" for name, folder in roots.items()]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "train=11 val=2 test.kvasir=3 test.clinicdb=2 test.colondb=3"
    manifest = json.loads(out.read_text())
    assert manifest["test"] == {
        "kvasir": sorted(f"{s}.jpg" for s in KVASIR_TEST),
        "clinicdb": ["100.tif", "14.tif"],
        "colondb": ["1.png", "2.png", "3.png"],
    }
    rest = {f"kvasir/{s}.jpg" for s in KVASIR_TRAIN} | {f"clinicdb/{s}.tif" for s in CLINIC_TRAIN}
    assert set(manifest["train"]) | set(manifest["val"]) == rest
    assert not set(manifest["train"]) & set(manifest["val"])
    # The seed's draw, pinned: the val part never changes for these names.
    assert manifest["val"] == [
        "kvasir/cjy0000000000000000000005.jpg",
        "kvasir/cjy0000000000000000000003.jpg",
    ]
    assert manifest["protocol"] == "pranet" and set(manifest["sources"]) == set(roots)


def test_a_missing_training_set_is_named_in_one_line(
    runner: CliRunner, roots: dict[str, Path]
) -> None:
    args = ["data", "split", "--protocol", "pranet", "--root", f"kvasir={roots['kvasir']}"]
    line = one_error_line(runner.invoke(app, args))
    assert line.startswith("error: no folder for clinicdb: pass --root clinicdb=DIR")


def test_an_unknown_set_name_is_one_line(runner: CliRunner, roots: dict[str, Path]) -> None:
    args = ["data", "split", "--protocol", "pranet", "--root", f"kvasirseg={roots['kvasir']}"]
    line = one_error_line(runner.invoke(app, args))
    assert "--root 'kvasirseg': unknown data set" in line


def test_a_folder_without_pranets_test_images_is_refused(
    runner: CliRunner, roots: dict[str, Path]
) -> None:
    args = ["data", "split", "--protocol", "pranet"]
    args += ["--root", f"kvasir={roots['colondb']}", "--root", f"clinicdb={roots['clinicdb']}"]
    line = one_error_line(runner.invoke(app, args))
    assert "none of PraNet's 100 test images" in line and "Kvasir-SEG" in line


def test_training_data_names_every_source(roots: dict[str, Path]) -> None:
    data = DataConfig(
        source="local",
        protocol="pranet",
        roots={"kvasir": str(roots["kvasir"]), "clinicdb": str(roots["clinicdb"])},
    )
    root, pairs, split = training_data(data)
    assert root == roots["kvasir"].parent
    assert len(pairs) == 18 and len(split.test) == 5
    assert dict(split.sources) == {k: str(roots[k].resolve()) for k in ("kvasir", "clinicdb")}
    # The split's digest (the run's tag, the MLflow dataset's digest) names its folders too.
    assert split.digest() != dataclasses.replace(split, sources=()).digest()


def test_config_keys_are_checked_in_one_line(tmp_path: Path) -> None:
    config = load_config(None, {"data.protocol": "pranet", "data.roots": "kvasir=/a,clinicdb=/b"})
    assert config.data.roots == {"kvasir": "/a", "clinicdb": "/b"}
    with pytest.raises(PolypsegError, match="data.protocol = 'papers'; use one of seed, pranet"):
        load_config(None, {"data.protocol": "papers"})
    with pytest.raises(PolypsegError, match="data.roots names kvasirseg; the sets are kvasir"):
        load_config(None, {"data.roots": {"kvasirseg": "/a"}})
    with pytest.raises(PolypsegError, match="needs data.roots for clinicdb"):
        load_config(
            None, {"data.protocol": "pranet", "data.source": "local", "data.roots": "kvasir=/a"}
        )
    with pytest.raises(PolypsegError, match="not a valid table of names to folders"):
        load_config(None, {"data.roots": 3})
    toml = tmp_path / "p.toml"
    toml.write_text('[data]\nprotocol = "pranet"\nroots = {kvasir = "/k", clinicdb = "/c"}\n')
    assert load_config(toml).data.roots == {"kvasir": "/k", "clinicdb": "/c"}
