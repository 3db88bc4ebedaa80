"""`polypseg data ...`: get, generate and split Kvasir-style data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polypseg.cli.app import data_app
from polypseg.config import SEED_MAX
from polypseg.errors import PolypsegError


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
) -> None:
    """Download Kvasir-SEG from Kaggle and print the folder holding images/ and masks/."""
    from polypseg.data.kvasir import download_kvasir
    from polypseg.errors import DownloadError

    try:
        typer.echo(download_kvasir(dest))
    except DownloadError as err:
        raise DownloadError(
            f"{err}; with a copy made by hand, run "
            "`polypseg tune --set data.source=local --set data.root=DIR`, or work offline on a "
            "synthetic set: `polypseg data synth --out DIR`"
        ) from None


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder to create (images/, masks/).")],
    n: Annotated[int, typer.Option(min=1, metavar="N", help="Number of image/mask pairs.")] = 100,
    seed: Annotated[
        int,
        typer.Option(
            min=0, max=SEED_MAX, metavar="N", help="Random seed; the same seed gives the same set."
        ),
    ] = 0,
) -> None:
    """Write a synthetic Kvasir-like data set (JPEG images and masks) for offline work."""
    from polypseg.data.synthetic import make_synthetic
    from polypseg.files import check_output_dir

    check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise PolypsegError(f"--out {out} exists and is not empty; choose a new folder")
    typer.echo(make_synthetic(out, n=n, seed=seed))


@data_app.command("split")
def data_split(
    root: Annotated[Path, typer.Option(metavar="DIR", help="Folder with images/ and masks/.")],
    seed: Annotated[
        int,
        typer.Option(min=0, max=SEED_MAX, metavar="N", help="Split seed (the protocol's is 42)."),
    ] = 42,
    ratios: Annotated[
        str, typer.Option(metavar="TRAIN,VAL,TEST", help="train,val,test fractions.")
    ] = "0.8,0.1,0.1",
    out: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write the JSON manifest here.")
    ] = None,
) -> None:
    """Print `train=N val=N test=N` for a folder; --out writes the file lists as JSON."""
    from polypseg.data.kvasir import list_pairs
    from polypseg.data.split import split_names
    from polypseg.files import check_output_file, write_json

    if out is not None:
        check_output_file(out)
    split = split_names([p.name for p in list_pairs(root)], seed, _parse_ratios(ratios))
    if out is not None:
        write_json(out, split.manifest())
    typer.echo(split.summary())
