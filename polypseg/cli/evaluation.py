"""`polypseg evaluate`, `compare` and `predict`: scoring, comparing and using models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polypseg.cli.app import TrackingOption, app
from polypseg.config import DataConfig
from polypseg.errors import DataError, PolypsegError
from polypseg.uncertainty import RESAMPLES

ModelOption = typer.Option(
    metavar="URI",
    help="MLflow model URI: models:/polypseg@champion, models:/polypseg/3, runs:/<id>/model.",
)
TtaOption = Annotated[
    str,
    typer.Option(
        metavar="none|flip|dihedral",
        help="Test-time augmentation: the mean map over the image and its mirror (flip) or its "
        "8 symmetries (dihedral); each variant costs one more encoder pass per image.",
    ),
]
ResamplesOption = Annotated[
    int,
    typer.Option(
        metavar="N",
        help="Bootstrap resamples of each 95 % interval (percentile, over images, seeded).",
    ),
]
EngineOption = Annotated[
    str,
    typer.Option(metavar="torch|onnx", help="torch, or onnx: --model is a `polypseg export` file."),
]
RootOption = Annotated[
    list[str] | None,
    typer.Option(
        metavar="DIR|NAME=DIR",
        help="Data set (masks/, images/); repeat as NAME=DIR for the papers' table.",
    ),
]
SetsOption = Annotated[
    str | None,
    typer.Option(
        metavar="pranet|SET,...",
        help="PraNet's test sets by name (roots: --root SET=DIR, --config's data.roots).",
    ),
]
ConfigRootsOption = Annotated[
    Path | None,
    typer.Option(metavar="FILE", help="Experiment TOML whose data.roots --sets uses."),
]
ProtocolOption = Annotated[
    str | None, typer.Option(metavar="default|pranet", help="default, or pranet: as papers report.")
]


@app.command("evaluate")
def evaluate(
    root: RootOption = None,
    model: Annotated[str | None, ModelOption] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Any method's saved maps, paired with masks/ by stem."),
    ] = None,
    protocol: ProtocolOption = None,
    split: Annotated[
        str | None, typer.Option(metavar="test|all", help="--model only: test (default) or all.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="A folder, replaced whole (default evaluation/<model>-v<version>/), or, for one "
            "DIR, a .json file.",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Split seed of --split test.")
    ] = DataConfig.split_seed,
    tracking_uri: TrackingOption = None,
    engine: EngineOption = "torch",
    sets: SetsOption = None,
    config: ConfigRootsOption = None,
    tta: TtaOption = "none",
    resamples: ResamplesOption = RESAMPLES,
) -> None:
    """Score a model, or any method's saved maps, on one or several data sets: JSON summary,
    per-image CSV, worst cases (and table.md/csv), all logged to a new MLflow run; mDice and
    mIoU with 95 % bootstrap intervals. --sets: the papers' table of a model under PraNet's
    protocol, also kept on its model version."""
    _refuse_missing_roots(root or [])
    from polypseg.evaluation.evaluate import evaluate as run_evaluate

    options = {"tracking_uri": tracking_uri, "engine": engine, "tta": tta, "resamples": resamples}
    if sets is not None:
        from polypseg.evaluation.literature import evaluate_sets, set_roots

        if predictions is not None or model is None:
            raise PolypsegError("--sets scores a --model URI (saved maps: --root NAME=DIR)")
        if protocol not in (None, "pranet") or split is not None:
            given = f"--protocol {protocol}" if split is None else f"--split {split}"
            raise PolypsegError(
                f"{given}: --sets scores each set's PraNet test images under PraNet's protocol; "
                "drop it, or score folders with --root NAME=DIR"
            )
        result = evaluate_sets(model, sets, set_roots(root or [], config), out, **options)
    else:
        options.update(predictions=predictions, seed=seed, protocol=protocol or "default")
        result = run_evaluate(model, root or [], split, out, **options)
    stdout, notes = result.printout()
    typer.echo("\n".join(notes), err=True)
    typer.echo(stdout)


@app.command("compare")
def compare(
    # Described in the docstring: typer would print their type, `<str>`.
    baseline: Annotated[str, typer.Argument(metavar="BASELINE", hidden=True)],
    candidate: Annotated[str, typer.Argument(metavar="CANDIDATE", hidden=True)],
    root: RootOption = None,
    sets: SetsOption = None,
    config: ConfigRootsOption = None,
    protocol: ProtocolOption = None,
    out: Annotated[
        Path | None, typer.Option(metavar="FILE.json", help="Also write the comparison here.")
    ] = None,
    resamples: ResamplesOption = RESAMPLES,
    tracking_uri: TrackingOption = None,
) -> None:
    """Is CANDIDATE better than BASELINE on the same images? Each is a model URI or a folder
    of saved maps. Per set: each side's mDice and mIoU, the paired difference with its 95 %
    bootstrap interval, Wilcoxon's p and the images each side wins; logged to a new MLflow
    run. With --sets, a maps folder holds one subfolder per set (PraNet's
    results/<method>/<Set>/)."""
    _refuse_missing_roots(root or [])
    from polypseg.evaluation.compare import compare as run_compare

    data: list = root or []
    if sets is not None:
        from polypseg.evaluation.literature import parse_sets, set_roots, test_sets

        if protocol not in (None, "pranet"):
            raise PolypsegError(f"--protocol {protocol}: --sets scores under PraNet's protocol")
        data, protocol = test_sets(parse_sets(sets), set_roots(data, config)), "pranet"
    options = {"resamples": resamples, "tracking_uri": tracking_uri}
    result = run_compare(baseline, candidate, data, out, protocol=protocol or "default", **options)
    typer.echo(f"comparison run {result.run_id}: {result.run_url}", err=True)
    typer.echo(result.table())


@app.command("predict")
def predict(
    model: Annotated[str, ModelOption],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the <stem>.png files.")],
    images: Annotated[
        list[str] | None,
        # Described in the docstring: typer would print the argument's type, `<list[str]>`.
        typer.Argument(metavar="IMAGE", hidden=True, help="Image files, folders or globs."),
    ] = None,
    overlay: Annotated[
        bool, typer.Option(help="Also write <stem>_overlay.png, the mask over the image.")
    ] = False,
    maps: Annotated[
        bool, typer.Option(help="8-bit probability maps instead of 0/255 masks.")
    ] = False,
    tracking_uri: TrackingOption = None,
    engine: EngineOption = "torch",
    video: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="A video: <stem>_overlay.mp4 and <stem>_frames.csv."),
    ] = None,
    tta: TtaOption = "none",
) -> None:
    """Predict polyp masks (or maps) for IMAGE... (image files, folders or glob patterns), each
    at its image's original size, or --video FILE frame by frame; prints the files written."""
    from polypseg.evaluation.predict import predict as run_predict

    if video is None and not images:
        raise DataError("nothing to predict: give IMAGE... (files, folders, globs) or --video FILE")
    if video is not None:
        if images or maps:
            raise DataError("--video FILE takes no IMAGE arguments nor --maps; predict those apart")
        from polypseg.evaluation.video import predict_video

        clip = predict_video(model, video, out, engine, tracking_uri=tracking_uri, tta=tta)
        typer.echo(f"{clip.overlay}\n{clip.table}")
        speed = (
            f"{clip.frames} frames in {clip.seconds:.1f} s ({clip.frames_per_second:.1f} frames/s)"
        )
        typer.echo(f"{video}: {speed}\nprediction run {clip.run_id}: {clip.run_url}", err=True)
        return
    options = {"maps": maps, "engine": engine, "tta": tta}
    result = run_predict(model, images, out, overlay, tracking_uri, **options)
    typer.echo("\n".join(str(path) for path in result.written))
    typer.echo(f"prediction run {result.run_id}: {result.run_url}", err=True)


def _refuse_missing_roots(roots: list[str]) -> None:
    """A missing --root folder, refused before torch and mlflow load (~5 s); anything else wrong
    with a data set is told where it is read, in the order `evaluate` checks things."""
    from polypseg.data.sets import find_dataset_root

    for value in roots:
        name, sep, folder = value.partition("=")
        folder = folder if sep and "/" not in name else value  # NAME=DIR, as parse_roots reads it
        if not Path(folder).is_dir():
            find_dataset_root(folder)  # raises its one line naming the folder
