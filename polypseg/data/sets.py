"""The five polyp data sets of the literature by name: where to download them, how to read them.

`SETS` is the one table (data, not logic): each set's name on the command line and in
`data.roots`, its title, its public Kaggle copy and its folder in PraNet's `TestDataset/`. Each
copy keeps its own folder names (`images/` + `masks/`, `image/` + `mask/`, `Original/` +
`Ground Truth/`), found here without renaming anything. Where a copy ships PNG and TIFF side by
side (CVC-ClinicDB's `PNG/` and `TIF/` folders, or `X.png` beside `X.tif`), the PNG is read: the
same pixels, and the format every reader opens. Masks named `p<stem>` (ETIS and CVC-ColonDB's
original releases) pair with image `<stem>`. PraNet's own distribution (`TrainDataset/{image,
mask}` with both training sets mixed, `TestDataset/<set>/{images,masks}`) is a root for any set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from polypseg.data.checks import DEFAULT_MAX_MEGAPIXELS, listing, pair_problems
from polypseg.data.kvasir import Pair, _reason, one_per_stem, stem_groups
from polypseg.errors import DataError, DownloadError


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
IMAGE_FOLDERS = ("images", "image", "original")  # compared in lower case
MASK_FOLDERS = ("masks", "mask", "ground truth", "groundtruth")
TIFF = (".tif", ".tiff")


def check_set_name(name: str, where: str = "--set") -> PolypSet:
    if name not in SETS:
        raise DataError(f"{where} {name!r}: unknown data set; use one of {', '.join(SETS)}")
    return SETS[name]


def _pick(folder: Path, names: tuple[str, ...]) -> Path | None:
    found = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() in names]
    return found[0] if found else None


def _pair_folders(path: Path) -> list[tuple[Path, Path]]:
    """(images, masks) folders at or under `path`, by any of the known names."""
    found = []
    for folder, subfolders, _ in os.walk(path):
        subfolders.sort()
        images, masks = _pick(Path(folder), IMAGE_FOLDERS), _pick(Path(folder), MASK_FOLDERS)
        if images is not None and masks is not None:
            found.append((images, masks))
            subfolders.clear()
    return found


def _mostly_tiff(folder: Path) -> bool:
    suffixes = [p.suffix.lower() for p in folder.iterdir() if p.is_file()]
    return sum(s in TIFF for s in suffixes) * 2 > len(suffixes)


def _is_pranet(root: Path) -> bool:
    return (root / "TestDataset").is_dir() or (root / "TrainDataset").is_dir()


def _pranet_train(name: str, stem: str) -> bool:
    """Whose image a file of PraNet's mixed TrainDataset is: CVC-ClinicDB's are numbered
    (`1.png`), Kvasir-SEG's are its 25-character ids."""
    return stem.isdigit() == (name == "clinicdb")


def set_folders(name: str, root: str | Path) -> list[tuple[Path, Path, bool]]:
    """The (images, masks, from PraNet's TrainDataset) folders holding set `name` at `root`."""
    polyp, root = check_set_name(name), Path(root)
    if not root.is_dir():
        raise DataError(f"the {name} root {root} does not exist; pass the folder of {polyp.title}")
    if _is_pranet(root):
        test = root / "TestDataset" / polyp.pranet_folder
        folders = [(*pair, False) for pair in _pair_folders(test)] if test.is_dir() else []
        if name in ("kvasir", "clinicdb") and (root / "TrainDataset").is_dir():
            folders += [(*pair, True) for pair in _pair_folders(root / "TrainDataset")]
        if not folders:
            raise DataError(f"{root} (PraNet's layout) has no TestDataset/{polyp.pranet_folder}")
        return folders
    found = _pair_folders(root)
    if len(found) > 1:  # PNG/ and TIF/ copies of one set: read the PNGs
        found = [pair for pair in found if not _mostly_tiff(pair[0])] or found
    if len(found) != 1:
        shown = listing(str(images.parent.relative_to(root)) for images, _ in found) or "none"
        raise DataError(
            f"{root}: expected one folder of {polyp.title} with images/ and masks/ (or image/ + "
            f"mask/, Original/ + Ground Truth/), found {shown}; pass that folder as the {name} root"
        )
    return [(*found[0], False)]


def _files(folder: Path) -> dict[str, Path]:
    """One file per stem; a PNG beside a TIFF of the same stem is the one read."""
    groups = stem_groups(folder)
    for stem, files in groups.items():
        if len(files) > 1 and any(f.suffix.lower() == ".png" for f in files):
            groups[stem] = [f for f in files if f.suffix.lower() not in TIFF]
    return one_per_stem(groups, folder)


def folder_pairs(images_dir: Path, masks_dir: Path) -> list[Pair]:
    """The pairs of one images/masks folder pair, by stem (a mask `p<stem>` pairs too)."""
    images, masks = _files(images_dir), _files(masks_dir)
    for stem in [s for s in masks if s not in images and s[:1] == "p" and s[1:] in images]:
        masks[stem[1:]] = masks.pop(stem)
    problems = []
    if lonely := images.keys() - masks.keys():
        problems.append(f"images without masks: {listing(images[s].name for s in lonely)}")
    if lonely := masks.keys() - images.keys():
        problems.append(f"masks without images: {listing(masks[s].name for s in lonely)}")
    if not images:
        problems.append(f"no image files in {images_dir.name}/")
    if problems:
        raise DataError(f"{images_dir.parent}: " + "; ".join(problems))
    return [Pair(images[s].name, images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]


def set_pairs(
    name: str, root: str | Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> list[Pair]:
    """Every pair of set `name` at `root`, named `<name>/<image file name>`, headers checked."""
    pairs = []
    for images_dir, masks_dir, mixed in set_folders(name, root):
        found = folder_pairs(images_dir, masks_dir)
        if mixed:
            found = [p for p in found if _pranet_train(name, Path(p.name).stem)]
        if problems := pair_problems(found, images_dir.parent, max_megapixels, decode=False):
            raise DataError(f"{images_dir.parent}: " + "; ".join(problems))
        pairs += [Pair(f"{name}/{p.name}", p.image, p.mask) for p in found]
    if len({p.name for p in pairs}) < len(pairs):
        raise DataError(f"{root}: the same {name} file name in two folders; keep one copy")
    return sorted(pairs, key=lambda p: p.name)


def local_copy_hint(name: str) -> str:
    return (
        f"with a local copy of {SETS[name].title}, pass `--root {name}=DIR` or set "
        f'data.roots = {{{name} = "DIR"}} in the config'
    )


def download_set(name: str, dest: str | Path | None = None) -> Path:
    """Download set `name` with kagglehub (reused from its cache); returns the folder read."""
    import kagglehub

    polyp = check_set_name(name)
    output = str(dest) if dest is not None else None
    try:
        path = Path(kagglehub.dataset_download(polyp.handle, output_dir=output))
    except Exception as err:  # kagglehub raises many types for network and auth failures
        raise DownloadError(
            f"downloading {name} (Kaggle {polyp.handle}) failed ({_reason(err)}); "
            + local_copy_hint(name)
        ) from None
    images, _, _ = set_folders(name, path)[0]
    return path if _is_pranet(path) else images.parent


def download_sets(name: str, dest: str | Path | None = None) -> list[str]:
    """`data download --set`: one set's folder, or `<set>=<folder>` for each of `all` (each in
    `dest/<set>`); the sets that failed are named in one line, each with how to go on."""
    if name != "all":
        return [str(download_set(name, dest))]
    lines, failed = [], []
    for each in SETS:
        try:
            folder = download_set(each, Path(dest) / each if dest is not None else None)
        except DownloadError as err:
            failed.append(str(err))
        else:
            lines.append(f"{each}={folder}")
    if failed:
        raise DownloadError(" | ".join(failed))
    return lines
