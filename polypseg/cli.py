"""The `polypseg` command line: a thin typer shell over the library.

Each command parses its options, calls one library function and prints. A `PolypsegError`
becomes one line on stderr and exit code 2; Ctrl-C exits 130. Heavy imports (torch, mlflow,
optuna) happen inside the commands so that `polypseg --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from polypseg.errors import PolypsegError


class _OneLineErrors(TyperGroup):
    """User errors become one line on stderr and exit 2; Ctrl-C exits 130 (the CLI's contract)."""

    def invoke(self, ctx: typer.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except PolypsegError as err:
            typer.echo(f"error: {err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Polyp segmentation on Kvasir-SEG: frozen SAM encoder, cached features, trainable "
    "decoder, MLflow tracking, Optuna tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: options with their METAVAR, not rich's type column (`<bool>`, `<path>`).
    rich_markup_mode=None,
)
data_app = typer.Typer(
    help="Get, generate and split Kvasir-style data sets.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from polypseg import __version__

        typer.echo(f"polypseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Polyp segmentation on Kvasir-SEG: frozen SAM encoder, cached features, trainable decoder,
    MLflow tracking, Optuna tuning."""


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
        int, typer.Option(metavar="N", help="Random seed; the same seed gives the same set.")
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
    seed: Annotated[int, typer.Option(metavar="N", help="Split seed (the protocol's is 42).")] = 42,
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


ConfigOption = Annotated[
    Path, typer.Option("--config", metavar="FILE", help="Experiment TOML (see experiments/).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="SECTION.KEY=VALUE",
        help="Override a config value, e.g. data.root=DIR (repeatable).",
    ),
]


def _config(path: Path, sets: list[str] | None):
    from polypseg.config import load_config, parse_set

    return load_config(path, parse_set(sets or []))


@app.command("cache")
def cache(
    config: ConfigOption,
    set_: SetOption = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Re-hash an existing entry in full (a hit only checks sizes, headers and "
            "samples); a damaged one is rebuilt.",
        ),
    ] = False,
) -> None:
    """Build the feature cache for a config: the encoder runs once per image."""
    from polypseg.features.prepare import prepare

    prepared = prepare(_config(config, set_), verify=verify)
    typer.echo(
        f"{prepared.features.directory} images={len(prepared.features.names)} "
        f"encoder={prepared.encoder.name} images_encoded={prepared.encoder.images_encoded}"
        + (" verified" if verify else "")
    )


TrackingOption = Annotated[
    str | None,
    typer.Option(
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db).",
    ),
]


@app.command("train")
def train(
    config: ConfigOption,
    set_: SetOption = None,
    log_model: Annotated[
        bool, typer.Option(help="Log the full pyfunc model (encoder included) as `model`.")
    ] = True,
    tracking_uri: TrackingOption = None,
) -> None:
    """Train the decoder once on cached features: one MLflow run; prints run_id and test_dice."""
    from polypseg.features.prepare import prepare
    from polypseg.tracking.runs import tracked_run
    from polypseg.tracking.store import runs_url, setup
    from polypseg.training.run import train_and_log

    cfg = _config(config, set_)
    experiment_id = setup(cfg.tracking.experiment, tracking_uri)  # a bad store fails before work
    prepared = prepare(cfg)
    with tracked_run(run_name=config.stem):
        outcome = train_and_log(prepared, cfg, on_epoch=_print_epoch, log_model=log_model)
    typer.echo(f"runs: {runs_url(experiment_id)}", err=True)
    typer.echo(f"run_id={outcome.run_id} test_dice={outcome.metrics['test_dice']:.4f}")


@app.command("tune")
def tune(
    trials: Annotated[
        int, typer.Option("--trials", min=1, metavar="N", help="Trials to add in this run.")
    ] = 30,
    config: Annotated[
        Path,
        typer.Option(
            "--config", metavar="FILE", help="Base experiment TOML; the study overrides its keys."
        ),
    ] = Path("experiments/sam_vit_b.toml"),
    study: Annotated[
        Path,
        typer.Option(
            "--study", metavar="FILE", help="Study spec TOML (search space, sampler, pruner)."
        ),
    ] = Path("studies/decoder_search.toml"),
    study_name: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Study name (default: the spec's); same name = resume."),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Optuna storage URL (default sqlite:///studies/optuna.db; postgresql://... "
            "for many machines; journal:PATH for many processes on one machine).",
        ),
    ] = None,
    n_jobs: Annotated[
        int,
        typer.Option(
            min=1, metavar="K", help="Trials at once in this process; one per GPU with several."
        ),
    ] = 1,
    timeout: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Stop starting trials after SECONDS.")
    ] = None,
    max_trials: Annotated[
        int | None,
        typer.Option(
            "--max-trials",
            min=1,
            metavar="N",
            help="Study-wide budget shared by every worker: stop taking trials once the study "
            "holds this many finished, running or queued ones, so any number of workers end with "
            "exactly this many. --trials still caps this process.",
        ),
    ] = None,
    set_: SetOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Run or resume an Optuna study: each trial trains the decoder on the cached features,
    is one nested MLflow run, and the best model is registered (alias `champion`)."""
    from polypseg.tuning.spec import load_spec
    from polypseg.tuning.study import tune as run_tune

    cfg = _config(config, set_)
    spec = load_spec(study, cfg)
    result = run_tune(
        cfg,
        spec,
        trials,
        max_trials=max_trials,
        n_jobs=n_jobs,
        timeout=timeout,
        study_name=study_name,
        storage=storage,
        tracking_uri=tracking_uri,
    )
    import mlflow

    from polypseg.tracking.views import ui_instructions

    for line in result.best_trials_table():
        typer.echo(line)
    for line in ui_instructions(result.experiment_id, result.view_key, mlflow.get_tracking_uri()):
        typer.echo(line, err=True)
    for line in result.summary():
        typer.echo(line)
    if result.best is None:
        raise PolypsegError("no trial completed, so nothing was registered; see the failed trials")


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


def _print_epoch(metrics: dict[str, float]) -> None:
    typer.echo(
        f"epoch {int(metrics['epoch']):3d}  train_loss {metrics['train_loss']:.4f}  "
        f"val_loss {metrics['val_loss']:.4f}  val_dice {metrics['val_dice']:.4f}",
        err=True,
    )


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so a terminated run ends KILLED and a study stays resumable


def main() -> None:  # pragma: no cover - the console script
    import logging
    import os
    import signal

    # Artifacts here are local files: MLflow's per-file progress bars are only noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow logs each database error with its traceback, then raises it: what it raises is
    # reported (a full or read-only store as one line), so the log would only repeat it.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    app()
