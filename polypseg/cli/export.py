"""`polypseg export`: a model as an ONNX file, checked against torch and logged to its run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polypseg.cli.app import TrackingOption, app


@app.command("export")
def export(
    model: Annotated[
        str, typer.Option(metavar="URI", help="MLflow model URI: models:/polypseg@champion, ...")
    ],
    out: Annotated[Path, typer.Option(metavar="FILE", help="The .onnx file to write.")],
    format: Annotated[  # noqa: A002 - the option's name
        str, typer.Option(metavar="onnx", help="Export format (onnx).")
    ] = "onnx",
    check_images: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PATH",
            help="Images for the parity check (default: the model's data set); repeatable.",
        ),
    ] = None,
    log: Annotated[
        bool, typer.Option(help="Log the file to the model's MLflow run, beside the pyfunc.")
    ] = True,
    tracking_uri: TrackingOption = None,
) -> None:
    """Export a model (normalisation, encoder, decoder, upsampling, sigmoid; dynamic batch) to
    ONNX at its training size, check it with onnxruntime against torch, log it to its run."""
    from polypseg.errors import PolypsegError

    if format != "onnx":
        raise PolypsegError(f"--format {format!r}: onnx is the one format polypseg exports")
    from polypseg.export.onnx import PARITY_TOLERANCE, export_onnx

    result = export_onnx(model, out, check_images, tracking_uri, log=log)
    typer.echo(
        f"onnxruntime vs torch: max probability difference {result.max_difference:.2e} "
        f"(allowed {PARITY_TOLERANCE:g}) on {result.n_images} images, batch sizes "
        f"{' and '.join(map(str, result.batch_sizes))}",
        err=True,
    )
    if result.artifact_uri:
        typer.echo(f"logged to run {result.run_id}: {result.artifact_uri}", err=True)
    typer.echo(str(result.path))
