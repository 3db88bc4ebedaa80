"""PraNet's protocol (Fan et al., MICCAI 2020), the one polyp papers report, as polypseg's split.

Training: Kvasir-SEG and CVC-ClinicDB minus PraNet's test images, named `<set>/<file>`; a seeded
`data.ratios[1]` share of them is validation, never a test set. Test: PraNet's 100 Kvasir and 62
ClinicDB images (`pranet_test_names.json`), matched by stem in any case, and the whole of the
other three sets. The sets given are identified, not assumed, so one given twice cannot leak
test images into training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from polypseg.caches import file_digest
from polypseg.config import DataConfig
from polypseg.data.pairs import Pair, set_pairs
from polypseg.data.sets import SETS, check_set_name, download, local_copy_hint
from polypseg.data.split import Split, check_ratios, hold_out
from polypseg.errors import DataError, DownloadError

TRAINING_SETS = ("kvasir", "clinicdb")
NAMES_FILE = Path(__file__).with_name("pranet_test_names.json")


@cache
def test_stems() -> dict[str, frozenset[str]]:
    lists = json.loads(NAMES_FILE.read_text())
    return {
        name: frozenset(Path(file).stem.lower() for file in lists[name]) for name in TRAINING_SETS
    }


def _stem(pair: Pair) -> str:
    return Path(pair.name.partition("/")[2]).stem.lower()


def refuse_shared_files(pools: Mapping[str, Sequence[Pair]]) -> None:
    """Refuse an image of a training set that is also in another set, by resolved path or by
    bytes (only files of one size in two sets are hashed)."""
    by_size: dict[int, list[tuple[str, Path]]] = {}
    for name, pairs in pools.items():
        for pair in pairs:
            real = Path(os.path.realpath(pair.image))
            by_size.setdefault(real.stat().st_size, []).append((name, real))
    digest = cache(file_digest)  # a file that two sets list is hashed once
    for group in (g for g in by_size.values() if len({name for name, _ in g}) > 1):
        owners: dict[str, tuple[str, Path]] = {}
        for name, real in group:
            first, where = owners.setdefault(digest(real), (name, real))
            # Test sets may share frames (CVC-300 came from CVC-ColonDB): no training leak.
            if first != name and {first, name} & set(TRAINING_SETS):
                shown = str(real) if where == real else f"{where} and {real}"
                raise DataError(
                    f"the {first} and {name} roots hold the same image ({shown}): one folder "
                    "given for two sets, or a copy of it; give each set its own folder"
                )


def missing_roots(
    names: Sequence[str], roots: Mapping[str, object], form: str = "--root {0}=DIR"
) -> None:
    """One line naming the sets `roots` lacks; `form` says how the caller's user names a set's
    folder (a command's `--root`, or the config's `data.roots`)."""
    if lacking := [name for name in names if name not in roots]:
        shown = " ".join(form.format(name) for name in lacking)
        raise DataError(
            f"no folder for {', '.join(lacking)}: pass {shown}, or download with "
            f"`polypseg data download --set {lacking[0]}`"
        )


# How a config names a set's folder, for commands that read one (train, tune, compare --config).
CONFIG_FORM = (
    'data.roots = {{{0} = "DIR"}} in the config (on the command line: '
    "`polypseg tune --set data.roots={0}=DIR`)"
)


def pranet_split(
    pools: Mapping[str, Sequence[Pair]],
    seed: int,
    ratios: Sequence[float],
    sources: Mapping[str, str | Path] | None = None,
) -> Split:
    """The split of `pools` (Kvasir and ClinicDB, whose roots the callers required); refused: an
    image in two sets, a training set with none of PraNet's test images (not it, or not whole)."""
    ratios = check_ratios(ratios)
    refuse_shared_files(pools)
    rest, test = [], []
    for name in TRAINING_SETS:
        tests = test_stems()[name]
        held = [p.name for p in pools[name] if _stem(p) in tests]
        if not held:
            example = sorted(tests)[0]
            raise DataError(
                f"the {name} folder holds none of PraNet's {len(tests)} test images (e.g. "
                f"{example}): is it {SETS[name].title}, with its original file names?"
            )
        test += held
        rest += [p.name for p in pools[name] if _stem(p) not in tests]
    train, val = hold_out(rest, ratios[1], seed)
    shown = tuple((k, str(Path(v).resolve())) for k, v in (sources or {}).items())
    return Split(seed, ratios, tuple(train), tuple(val), tuple(sorted(test)), "pranet", shown)


def test_pairs(name: str, pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs of set `name` that PraNet tests on."""
    if name not in TRAINING_SETS:
        return list(pairs)
    return [p for p in pairs if _stem(p) in test_stems()[name]]


def set_root(data: DataConfig, name: str) -> Path:
    """Set `name`'s folder (a row of `SETS`): `data.roots`, else its Kaggle copy (source kaggle)."""
    if name in data.roots:
        return Path(data.roots[name])
    if data.source != "kaggle":
        missing_roots([name], {}, CONFIG_FORM)  # raises, naming how to point at one
    try:
        return download(name)
    except DownloadError as err:
        raise DownloadError(f"{err}; {local_copy_hint(name)}") from None


def pranet_roots(data: DataConfig) -> dict[str, Path]:
    """Every set's folder (`set_root`), in the papers' column order."""
    return {name: set_root(data, name) for name in SETS}


def training_data(data: DataConfig) -> tuple[Path, tuple[Pair, ...], Split]:
    """Under `data.protocol = "pranet"`: the folder above every source (for messages), the pairs
    of both training sets, and their split."""
    roots = {name: Path(os.path.abspath(set_root(data, name))) for name in TRAINING_SETS}
    pools = {name: set_pairs(name, root, data.max_megapixels) for name, root in roots.items()}
    split = pranet_split(pools, data.split_seed, data.ratios, roots)
    pairs = tuple(p for name in TRAINING_SETS for p in pools[name])
    folders = [str(path.parent) for p in pairs for path in (p.image, p.mask)]  # all absolute
    return Path(os.path.commonpath(folders)), pairs, split


def parse_set_roots(values: Sequence[str]) -> dict[str, Path]:
    roots: dict[str, Path] = {}
    for value in values:
        name, sep, folder = str(value).partition("=")
        if not sep or not folder:
            raise DataError(
                f"--root {value}: name the set of each folder, SET=DIR, e.g. kvasir=/data/kvasir"
            )
        check_set_name(name, "--root")
        if name in roots:
            raise DataError(
                f"--root {name}= is given twice ({roots[name]} and {folder}); name each set once"
            )
        roots[name] = Path(folder)
    return roots


def split_manifest(
    roots: Mapping[str, Path], seed: int, ratios: Sequence[float]
) -> tuple[dict, str]:
    """`data split --protocol pranet`: the manifest (`test`: set → file names, every set given)
    and its counts line."""
    missing_roots(TRAINING_SETS, roots)
    # Decoded to the end, as the seed split's files are: a truncated file is found here too.
    pools = {name: set_pairs(name, roots[name], decode=True) for name in SETS if name in roots}
    split = pranet_split(pools, seed, ratios, {name: roots[name] for name in TRAINING_SETS})
    manifest = split.manifest()
    for name in (n for n in pools if n not in TRAINING_SETS):
        manifest["test"][name] = [p.name.partition("/")[2] for p in pools[name]]
        manifest["sources"][name] = str(Path(roots[name]).resolve())
    counts = " ".join(f"test.{name}={len(files)}" for name, files in manifest["test"].items())
    return manifest, f"train={len(split.train)} val={len(split.val)} {counts}"
