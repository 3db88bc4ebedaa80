"""`polypseg data ...`: get, generate and split Kvasir-style data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polypseg.cli.app import data_app
from polypseg.config import DATA_PROTOCOLS, DataConfig, check_choice, check_seed
from polypseg.errors import PolypsegError

PRANET_MIN_N = 5  # one test image per training set, and enough left to train and validate


def _parse_ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise PolypsegError(f"--ratios {text!r}: expected three numbers like 0.8,0.1,0.1") from None


@data_app.command("download")
def data_download(
    dest: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Copy the data set here (default: kagglehub's cache)."),
    ] = None,
    name: Annotated[
        str,
        typer.Option(
            "--set",
            metavar="kvasir|clinicdb|colondb|etis|cvc300|all",
            help="Which polyp data set; all: the five of the papers' table, each in DEST/<set>.",
        ),
    ] = "kvasir",
) -> None:
    """Download a polyp data set (default Kvasir-SEG) from Kaggle and print its folder."""
    from polypseg.data.sets import download_sets

    for line in download_sets(name, dest):
        typer.echo(line)


@data_app.command("synth")
def data_synth(
    out: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Folder to create (images/, masks/).")
    ] = None,
    n: Annotated[
        int, typer.Option(min=1, metavar="N", help="Image/mask pairs (pranet: per set).")
    ] = 100,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Random seed; the same seed gives the same set.")
    ] = 0,
    layout: Annotated[
        str,
        typer.Option(
            metavar="kvasir|pranet",
            help="kvasir: one set; pranet: the five sets in PraNet's layout, with its test names.",
        ),
    ] = "kvasir",
    video: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write a short colonoscopy-like MP4 clip instead."),
    ] = None,
) -> None:
    """Write a synthetic Kvasir-like data set (JPEG images and masks) for offline work, the five
    sets in PraNet's layout (--layout pranet), or a short clip for `predict --video` (--video)."""
    from polypseg.data.synthetic import make_pranet_layout, make_synthetic
    from polypseg.outputs import check_output_dir, check_output_file

    check_seed(seed)  # not typer's min/max: click's error is four lines
    check_choice("--layout", layout, ("kvasir", "pranet"))
    if (out is None) == (video is None):
        raise PolypsegError("pass --out DIR (a data set) or --video FILE.mp4 (a clip), one of them")
    if video is not None:
        if layout != "kvasir":
            raise PolypsegError("--layout makes a data set (--out DIR), not a clip; drop one")
        typer.echo(_write_clip(check_output_file(video, "--video"), seed))
        return
    check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise PolypsegError(f"--out {out} exists and is not empty; choose a new folder")
    if layout == "pranet" and n < PRANET_MIN_N:
        raise PolypsegError(
            f"--n {n}: --layout pranet needs at least {PRANET_MIN_N} pairs per set (a fifth are "
            "test images, the rest train and validate)"
        )
    make = make_pranet_layout if layout == "pranet" else make_synthetic
    typer.echo(make(out, n=n, seed=seed, option="--out"))


def _write_clip(path: Path, seed: int) -> Path:
    from fractions import Fraction

    from polypseg.atomic import atomic_path
    from polypseg.data.synthetic import synthetic_clip
    from polypseg.evaluation.video import OverlayWriter

    if path.suffix.lower() != ".mp4":
        raise PolypsegError(f"--video {path}: name an .mp4 file")
    with atomic_path(path, option="--video") as tmp:
        frames = synthetic_clip(seed)
        first = next(frames)
        writer = OverlayWriter(tmp, first.shape[1], first.shape[0], Fraction(10))
        for frame in (first, *frames):
            writer.write(frame)
        writer.close()
    return path


@data_app.command("split")
def data_split(
    root: Annotated[
        list[str],
        typer.Option(
            metavar="DIR|SET=DIR",
            help="Folder with images/ and masks/; under --protocol pranet SET=DIR, repeatable.",
        ),
    ],
    protocol: Annotated[
        str, typer.Option(metavar="seed|pranet", help="seed (one folder), or the papers' split.")
    ] = "seed",
    seed: Annotated[
        int,
        typer.Option(metavar="N", help=f"Split seed (the protocol's is {DataConfig.split_seed})."),
    ] = DataConfig.split_seed,
    ratios: Annotated[
        str, typer.Option(metavar="TRAIN,VAL,TEST", help="train,val,test fractions.")
    ] = ",".join(f"{r:g}" for r in DataConfig.ratios),
    out: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write the JSON manifest here.")
    ] = None,
) -> None:
    """Print `train=N val=N test=N` for a folder; --out writes the file lists as JSON.
    --protocol pranet: Kvasir + ClinicDB minus PraNet's test images, and the test sets given."""
    from polypseg.atomic import write_json
    from polypseg.data.pairs import list_pairs
    from polypseg.data.split import split_names
    from polypseg.outputs import check_output_file

    check_seed(seed)
    if out is not None:
        check_output_file(out)  # no data set, store or cache, whichever the protocol
    check_choice("--protocol", protocol, DATA_PROTOCOLS)
    if protocol == "pranet":
        from polypseg.data.protocol import parse_set_roots, split_manifest

        manifest, counts = split_manifest(parse_set_roots(root), seed, _parse_ratios(ratios))
    elif len(root) != 1:
        raise PolypsegError("--root: one folder, or --protocol pranet with SET=DIR folders")
    else:
        names = [p.name for p in list_pairs(Path(root[0]))]
        split = split_names(names, seed, _parse_ratios(ratios))
        manifest, counts = split.manifest(), split.summary()
    if out is not None:
        write_json(out, manifest, option="--out")
    typer.echo(counts)
