"""The `polypseg` app itself: one-line errors, the version, the options commands share, `main`.

A `PolypsegError` becomes one line on stderr and exit code 2; Ctrl-C (and SIGTERM) exits 130.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from polypseg.errors import PolypsegError

if TYPE_CHECKING:
    from polypseg.config import Config
    from polypseg.tracking.registry import Registration


WORKFLOW = ("data", "cache", "train", "tune", "evaluate", "compare", "predict", "export")


class _OneLineErrors(TyperGroup):
    """User errors become one line on stderr and exit 2; Ctrl-C exits 130 (the CLI's contract)."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        # In the order of the work (data first, evaluate last), whatever order modules load in.
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))

    def invoke(self, ctx: typer.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except PolypsegError as err:
            # One line even when a quoted library message (a path, a server's answer) holds more.
            typer.echo(f"error: {' '.join(str(err).splitlines())}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)


app = typer.Typer(
    cls=_OneLineErrors,
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


ConfigOption = Annotated[
    Path, typer.Option(metavar="FILE", help="Experiment TOML (see experiments/).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="SECTION.KEY=VALUE",
        help="Override a config value, e.g. data.root=DIR (repeatable).",
    ),
]


def load_cli_config(path: Path, sets: list[str] | None) -> Config:
    """The config file with its `--set` overrides applied."""
    from polypseg.config import load_config, parse_set

    return load_config(path, parse_set(sets or []))


TrackingOption = Annotated[
    str | None,
    typer.Option(
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db).",
    ),
]


def next_commands(registration: Registration, tracking_uri: str) -> list[str]:
    """What to run next on a registered model and the data it trained on, ready to paste (the
    README's "After the demo"): evaluate, predict with overlays, export, a video, the pyfunc."""
    from mlflow.exceptions import MlflowException

    from polypseg.export.onnx import training_roots
    from polypseg.tracking.store import default_tracking_uri, mask_password

    name, version = registration.name, registration.version
    model = f"models:/{name}@champion" if registration.champion else f"models:/{name}/{version}"
    try:
        roots = training_roots(model, None)
    except MlflowException:  # a server gone since: the study's own lines are printed already
        return []
    if not roots:
        return []
    data = Path(roots[0])
    images = sorted((data / "images").glob("*"))[:3] if (data / "images").is_dir() else [data]
    shown = mask_password(tracking_uri)
    store = "" if tracking_uri == default_tracking_uri() else f" --tracking-uri {shown}"
    if tracking_uri == f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}":
        shown = "sqlite:///mlruns/mlflow.db"  # as the README shows it: run from here
    snippet = (
        f"import mlflow, numpy as np; mlflow.set_tracking_uri('{shown}'); "
        f"model = mlflow.pyfunc.load_model('{model}'); "
        "print(model.predict(np.zeros((240, 320, 3), np.uint8)).shape)"
    )
    return [
        f"# next, with {model} and its data:",
        f"polypseg evaluate --model {model} --root {_home(data)}{store}",
        f"polypseg predict --model {model} --out predictions/{name} --overlay "
        + " ".join(_home(image) for image in images)
        + store,
        f"polypseg export --model {model} --out {name}.onnx{store}",
        "polypseg data synth --video demo.mp4",
        f"polypseg predict --model {model} --video demo.mp4 --out predictions/{name}-video{store}",
        f'python -c "{snippet}"',
    ]


def _home(path: Path) -> str:
    """`~/...` for a path under the home folder, as a user types it."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def main() -> None:  # pragma: no cover - the console script
    import logging
    import os
    import signal

    from polypseg.interrupts import raise_interrupt

    # Artifacts here are local files: MLflow's per-file progress bars are only noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow logs each database error with its traceback, then raises it: what it raises is
    # reported (a full or read-only store as one line), so the log would only repeat it.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # SIGTERM as Ctrl-C: a terminated run ends KILLED and a study stays resumable.
    signal.signal(signal.SIGTERM, raise_interrupt)
    app()
