"""The polyp data sets by name: the one table of them, the folders that hold one, the download.

`SETS` is the table, Kvasir-SEG its first row. A data set on disk is an images folder beside a
masks folder under each copy's own names (`images/` + `masks/`, `image/` + `mask/`, `Original/`
+ `Ground Truth/`), found at or under the root given by one walk, `pair_folders`, without
renaming anything. Where a copy ships PNG and TIFF folders side by side (CVC-ClinicDB), the PNGs
are read. PraNet's own distribution (`TrainDataset/`, `TestDataset/<set>/`) is a root for any set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from polypseg.data.images import TIFF_SUFFIXES
from polypseg.errors import DataError, DownloadError, first_line, listing
from polypseg.outputs import IMAGE_FOLDERS, MASK_FOLDERS


@dataclass(frozen=True)
class PolypSet:
    name: str  # on the command line and in data.roots
    title: str  # as papers name it
    handle: str  # its public Kaggle copy
    pranet_folder: str  # its folder in PraNet's TestDataset/
    n_test: int  # images in PraNet's test set


SETS = {
    s.name: s
    for s in (
        PolypSet("kvasir", "Kvasir-SEG", "debeshjha1/kvasirseg", "Kvasir", 100),
        PolypSet("clinicdb", "CVC-ClinicDB", "balraj98/cvcclinicdb", "CVC-ClinicDB", 62),
        PolypSet("colondb", "CVC-ColonDB", "longvil/cvc-colondb", "CVC-ColonDB", 380),
        PolypSet(
            "etis", "ETIS-LaribPolypDB", "achillesrasquinha/etislarib", "ETIS-LaribPolypDB", 196
        ),
        PolypSet("cvc300", "CVC-300", "nourabentaher/cvc-300", "CVC-300", 60),
    )
}


def check_set_name(name: str, where: str = "--set") -> PolypSet:
    if name not in SETS:
        raise DataError(f"{where} {name!r}: unknown data set; use one of {', '.join(SETS)}")
    return SETS[name]


def _unreadable(root: Path, err: OSError) -> None:
    raise DataError(
        f"cannot read {err.filename} ({(err.strerror or type(err).__name__).lower()}) while "
        f"looking for images/ and masks/ under {root}; make it readable, or pass the data set's "
        "own folder as the root"
    )


def pair_folders(path: Path) -> list[tuple[Path, Path]]:
    """The (images, masks) folders at or under `path`, not looking inside a data set's own. A
    folder the walk cannot read might hold one: it is refused, named, not skipped as `os.walk`
    would."""
    found = []
    for folder, subfolders, _ in os.walk(path, onerror=partial(_unreadable, path)):
        subfolders.sort()
        picked = [
            next((Path(folder, s) for s in subfolders if s.lower() in names), None)
            for names in (IMAGE_FOLDERS, MASK_FOLDERS)
        ]
        if None not in picked:
            found.append((picked[0], picked[1]))
            subfolders.clear()
    return found


def find_dataset(path: str | Path) -> tuple[Path, Path]:
    """The (images, masks) folders of the one data set at or under `path`; several are refused,
    named, never the first taken."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"data folder {path} does not exist; pass the folder with images/ and masks/"
        )
    found = pair_folders(path)
    if len(found) == 1:
        return found[0]
    if found:
        names = listing(str(images.parent.relative_to(path)) for images, _ in found)
        raise DataError(
            f"{path} holds {len(found)} data sets (folders with images/ and masks/): {names}; "
            f"pass one of them as the root, e.g. {found[0][0].parent}"
        )
    lacking = [kind for kind in ("images", "masks") if not (path / kind).is_dir()]
    if len(lacking) == 1:  # half a data set: say which half is missing
        raise DataError(
            f"{path} has no {lacking[0]}/ folder; expected {path}/images and {path}/masks"
        )
    raise DataError(
        f"no images/ and masks/ folders under {path}; a Kvasir-style folder holds both "
        "(or create one with `polypseg data synth --out DIR`)"
    )


def find_dataset_root(path: str | Path) -> Path:
    return find_dataset(path)[0].parent


def _mostly_tiff(folder: Path) -> bool:
    suffixes = [p.suffix.lower() for p in folder.iterdir() if p.is_file()]
    return sum(s in TIFF_SUFFIXES for s in suffixes) * 2 > len(suffixes)


def is_pranet(root: Path) -> bool:
    return (root / "TestDataset").is_dir() or (root / "TrainDataset").is_dir()


def set_folders(name: str, root: str | Path) -> list[tuple[Path, Path, bool]]:
    """The (images, masks, from PraNet's TrainDataset) folders holding set `name` at `root`."""
    polyp, root = check_set_name(name), Path(root)
    if not root.is_dir():
        raise DataError(f"the {name} root {root} does not exist; pass the folder of {polyp.title}")
    if is_pranet(root):
        test = root / "TestDataset" / polyp.pranet_folder
        folders = [(*pair, False) for pair in pair_folders(test)] if test.is_dir() else []
        if name in ("kvasir", "clinicdb") and (root / "TrainDataset").is_dir():
            folders += [(*pair, True) for pair in pair_folders(root / "TrainDataset")]
        if not folders:
            raise DataError(f"{root} (PraNet's layout) has no TestDataset/{polyp.pranet_folder}")
        return folders
    found = pair_folders(root)
    if len(found) > 1:  # PNG/ and TIF/ copies of one set: read the PNGs
        found = [pair for pair in found if not _mostly_tiff(pair[0])] or found
    if len(found) != 1:
        shown = listing(str(images.parent.relative_to(root)) for images, _ in found) or "none"
        raise DataError(
            f"{root}: expected one folder of {polyp.title} with images/ and masks/ (or image/ + "
            f"mask/, Original/ + Ground Truth/), found {shown}; pass that folder as the {name} root"
        )
    return [(*found[0], False)]


# The default data source's way on without Kaggle: `data download`, `cache`, `train`, `tune`.
KVASIR_HINT = (
    "with a local copy of Kvasir-SEG, add `--set data.source=local --set data.root=DIR` to "
    "cache, train or tune, or run the offline demo: `polypseg tune --trials 4 --config "
    "experiments/synthetic.toml --study studies/demo_search.toml`"
)


def local_copy_hint(name: str) -> str:
    return (
        f"with a local copy of {SETS[name].title}, pass `--root {name}=DIR` (evaluate, data "
        f"split) or `--set data.roots={name}=DIR` (train, tune), or set "
        f'data.roots = {{{name} = "DIR"}} in the config'
    )


def download(name: str, dest: str | Path | None = None) -> Path:
    """Download set `name` with kagglehub (reused from its cache); the folder read. A failure is
    one `DownloadError` line, to which the caller adds how to go on."""
    import kagglehub

    polyp = check_set_name(name)
    output = str(dest) if dest is not None else None
    try:
        path = Path(kagglehub.dataset_download(polyp.handle, output_dir=output))
    except Exception as err:  # kagglehub raises many types for network and auth failures
        # A connection failure says so instead of quoting urllib3's paragraph.
        offline = isinstance(err, OSError) or "Connection" in type(err).__name__
        reason = f"no connection: {type(err).__name__}" if offline else first_line(err)
        if not offline and str(err):
            reason = f"{type(err).__name__}: {reason}"
        raise DownloadError(
            f"downloading {name} (Kaggle {polyp.handle}) failed ({reason})"
        ) from None
    images, _, _ = set_folders(name, path)[0]
    return path if is_pranet(path) else images.parent


def download_sets(name: str, dest: str | Path | None = None) -> list[str]:
    """`data download --set`: one set's folder, or `<set>=<folder>` for each of `all` (each in
    `dest/<set>`); the sets that failed in one line, each with how to go on."""
    lines, failed = [], []
    for each in SETS if name == "all" else [name]:
        try:
            folder = download(each, Path(dest) / each if dest and name == "all" else dest)
        except DownloadError as err:
            hint = KVASIR_HINT if name == "kvasir" else local_copy_hint(each)
            failed.append(f"{err}; {hint}")
        else:
            lines.append(f"{each}={folder}" if name == "all" else str(folder))
    if failed:
        raise DownloadError(" | ".join(failed))
    return lines
