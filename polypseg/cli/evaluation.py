"""`polypseg evaluate` and `predict`: scoring and using a logged or registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polypseg.cli.app import TrackingOption, app

ModelOption = typer.Option(
    "--model",
    metavar="URI",
    help="MLflow model URI: models:/polypseg@champion, models:/polypseg/3, runs:/<id>/model.",
)


@app.command("evaluate")
def evaluate(
    root: Annotated[
        list[str],
        typer.Option(
            metavar="DIR|NAME=DIR",
            help="Data set (masks/, images/); repeat as NAME=DIR for the papers' table.",
        ),
    ],
    model: Annotated[str | None, ModelOption] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Any method's saved maps, paired with masks/ by stem."),
    ] = None,
    protocol: Annotated[
        str, typer.Option(metavar="default|pranet", help="default, or pranet: as papers report.")
    ] = "default",
    split: Annotated[
        str | None, typer.Option(metavar="test|all", help="--model only: test (default) or all.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="JSON (default evaluation.json); a folder for NAME=DIR."),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Split seed of --split test.")] = 42,
    tracking_uri: TrackingOption = None,
) -> None:
    """Score a model, or any method's saved maps, on one or several data sets: JSON summary,
    per-image CSV, worst cases (and table.md/csv), all logged to a new MLflow run."""
    from polypseg.evaluation.evaluate import evaluate as run_evaluate

    options = {"predictions": predictions, "protocol": protocol, "seed": seed}
    result = run_evaluate(model, root, split, out, tracking_uri=tracking_uri, **options)
    stdout, notes = result.printout()
    typer.echo("\n".join(notes), err=True)
    typer.echo(stdout)


@app.command("predict")
def predict(
    model: Annotated[str, ModelOption],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the <stem>.png files.")],
    images: Annotated[
        list[str],
        # Described in the docstring: typer would print the argument's type, `<list[str]>`.
        typer.Argument(metavar="IMAGE", hidden=True, help="Image files, folders or globs."),
    ],
    overlay: Annotated[
        bool, typer.Option(help="Also write <stem>_overlay.png, the mask over the image.")
    ] = False,
    maps: Annotated[
        bool, typer.Option(help="8-bit probability maps instead of 0/255 masks.")
    ] = False,
    tracking_uri: TrackingOption = None,
) -> None:
    """Predict polyp masks (or maps) for IMAGE... (image files, folders or glob patterns), each
    at its image's original size; prints the files written."""
    from polypseg.evaluation.predict import predict as run_predict

    result = run_predict(model, images, out, overlay, tracking_uri, maps=maps)
    typer.echo("\n".join(str(path) for path in result.written))
    typer.echo(f"prediction run {result.run_id}: {result.run_url}", err=True)
