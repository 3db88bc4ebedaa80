"""`polypseg cache`, `train` and `tune`: the feature cache, one run, a study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polypseg.cli.app import ConfigOption, SetOption, TrackingOption, app, load_cli_config
from polypseg.errors import PolypsegError


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
    cfg = load_cli_config(config, set_)  # a bad config is refused before torch loads (~5 s)
    from polypseg.features.prepare import prepare

    prepared = prepare(cfg, verify=verify)
    typer.echo(
        f"{prepared.features.directory} images={len(prepared.features.names)} "
        f"encoder={prepared.encoder.name} images_encoded={prepared.encoder.images_encoded}"
        + (" verified" if verify else "")
    )


@app.command("train")
def train(
    config: ConfigOption,
    set_: SetOption = None,
    log_model: Annotated[
        bool, typer.Option(help="Log the full pyfunc model (encoder included) as `model`.")
    ] = True,
    seeds: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Train N times on the same features, seeds train.seed to train.seed+N-1, as "
            "children of one run that logs the spread (test_dice_mean, test_dice_sd, ...).",
        ),
    ] = 1,
    tracking_uri: TrackingOption = None,
) -> None:
    """Train the decoder on cached features: one MLflow run (--seeds N: one parent of N runs);
    prints run_id and test_dice (the mean over the seeds)."""
    cfg = load_cli_config(config, set_)  # a bad config is refused before torch and mlflow load
    from polypseg.tuning.spec import check_seeds

    check_seeds(seeds, cfg, "--seeds")
    import mlflow

    from polypseg.features.prepare import prepare
    from polypseg.progress import EpochLines
    from polypseg.tracking.runs import tracked_run
    from polypseg.tracking.store import setup
    from polypseg.tracking.views import ui_instructions
    from polypseg.training.run import train_and_log, train_seeds

    experiment_id = setup(cfg.tracking.experiment, tracking_uri)  # a bad store fails before work
    prepared = prepare(cfg)  # once: every seed trains on the same cached features
    with tracked_run(run_name=config.stem) as run:
        # One line per epoch, on a terminal or in a log: train has no bar to show progress.
        epochs = EpochLines(interval_s=0)
        if seeds == 1:
            test_dice = train_and_log(prepared, cfg, epochs, log_model).metrics["test_dice"]
        else:
            outcome = train_seeds(prepared, cfg, seeds, epochs, log_model)
            test_dice = outcome.spread["test_dice_mean"]
            for line in outcome.lines():
                typer.echo(line)
    uri = mlflow.get_tracking_uri()
    for line in ui_instructions("the run", experiment_id, f"/{run.info.run_id}", uri):
        typer.echo(line, err=True)
    typer.echo(f"run_id={run.info.run_id} test_dice={test_dice:.4f}")


@app.command("tune")
def tune(
    trials: Annotated[
        int, typer.Option(min=1, metavar="N", help="Trials to add in this run.")
    ] = 30,
    config: Annotated[
        Path,
        typer.Option(metavar="FILE", help="Base experiment TOML; the study overrides its keys."),
    ] = Path("experiments/sam_vit_b.toml"),
    study: Annotated[
        Path,
        typer.Option(metavar="FILE", help="Study spec TOML (search space, sampler, pruner)."),
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

    cfg = load_cli_config(config, set_)
    spec = load_spec(study, cfg)  # both refused before torch, mlflow and the study load
    from polypseg.tuning.study import tune as run_tune

    options = {"max_trials": max_trials, "n_jobs": n_jobs, "timeout": timeout, "storage": storage}
    result = run_tune(
        cfg, spec, trials, study_name=study_name, tracking_uri=tracking_uri, **options
    )
    import mlflow

    from polypseg.cli.app import next_commands
    from polypseg.tracking.views import ui_instructions

    for line in [*result.best_trials_table(), *result.champion_table]:
        typer.echo(line)
    uri, view = mlflow.get_tracking_uri(), f"?viewStateShareKey={result.view_key}"
    for line in ui_instructions("compare the trials", result.experiment_id, view, uri):
        typer.echo(line, err=True)
    for line in result.summary():
        typer.echo(line)
    if result.registration is not None:
        for line in next_commands(result.registration, uri):
            typer.echo(line, err=True)
    if result.best is None:
        raise PolypsegError("no trial completed, so nothing was registered; see the failed trials")
