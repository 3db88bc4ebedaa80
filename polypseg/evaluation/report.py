"""What an evaluation leaves behind: per-set JSON and CSV, the papers' table, the MLflow run.

A report folder holds one evaluation: it is written whole in a hidden folder beside it and then
swapped in, so an evaluation of fewer sets leaves no older set's files looking current, and a
kill leaves the old folder or the new one, never a mix.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from polypseg.atomic import atomic_path, umask
from polypseg.errors import PolypsegError
from polypseg.evaluation.predict import model_tags
from polypseg.uncertainty import format_interval

EVALUATION_EXPERIMENT = "polypseg-evaluation"
REPORT_SUFFIXES = (".json", ".csv", ".png", ".md")  # all a report folder may hold to be replaced
STAGED = "staged"  # the last part of a report folder's hidden temporaries: .NAME.PID.RANDOM.staged
LABELS = {
    "dice": "Dice",
    "iou": "IoU",
    "precision": "Precision",
    "recall": "Recall",
    "specificity": "Specificity",
    "mae": "MAE",
    "mdice_thr": "mDice (256 thr.)",
    "s_alpha": "S-α",
    "e_measure": "mean E-φ",
    "mdice": "mDice",
    "miou": "mIoU",
    "max_dice": "max Dice",
    "wfm": "wFβ",
    "mean_em": "mean E-φ",
    "max_em": "max E-φ",
}


@dataclass
class SetReport:
    name: str
    summary: dict
    rows: list[dict]
    columns: tuple[str, ...]
    summary_keys: tuple[str, ...]
    json_path: Path
    csv_path: Path
    figure_path: Path
    figure: Any = field(repr=False)  # the worst cases, a matplotlib Figure


def write_set(report: SetReport, into: Path | None = None) -> None:
    """CSV, figure and JSON, all written before any replaces its old one (a full disk)."""
    with ExitStack() as stack:

        def temporary(path: Path) -> Path:
            place = path if into is None else into / path.name
            return stack.enter_context(atomic_path(place, option="--out"))

        with temporary(report.csv_path).open("w", newline="") as handle:
            fields = ["name", "height", "width", *report.columns]
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for row in report.rows:
                writer.writerow(
                    {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
                )
        report.figure.savefig(temporary(report.figure_path), format="png", dpi=100)
        temporary(report.json_path).write_text(json.dumps(report.summary, indent=2) + "\n")


def check_report_folder(folder: Path) -> None:
    """Refuse a folder holding what no evaluation wrote (`--out .`): it is replaced whole."""
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.is_symlink() or not entry.is_file() or entry.suffix not in REPORT_SUFFIXES:
            raise PolypsegError(
                f"--out {folder} holds {entry.name}, which no evaluation wrote; the report folder "
                "is replaced whole, so give a new or empty folder"
            )


def write_folder(reports: Sequence[SetReport], folder: Path, tables: bool) -> None:
    """Staged beside `folder`, then swapped in whole; a killed evaluation's leftovers go first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for left in folder.parent.glob(f".{folder.name}.*.{STAGED}"):
        pid = left.name[len(folder.name) + 2 :].split(".")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(left, ignore_errors=True)
    prefix = f".{folder.name}.{os.getpid()}."
    staged = Path(tempfile.mkdtemp(dir=folder.parent, prefix=prefix, suffix=f".{STAGED}"))
    try:
        for report in reports:
            write_set(report, staged)
        if tables:
            write_tables(reports, staged)
        os.chmod(staged, 0o777 & ~umask())
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=prefix, suffix=f".{STAGED}"))
            os.replace(folder, old)  # a folder renames onto an empty one
        os.replace(staged, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def table_paths(folder: Path) -> tuple[Path, Path]:
    return folder / "table.md", folder / "table.csv"


def figures(report: SetReport) -> dict[str, float | None]:
    """table.csv's columns and the run's metrics: each figure, then `<key>_ci_low`/`_ci_high`."""
    flat = {}
    for key in report.summary_keys:
        flat[key] = float(report.summary[key])
        if f"{key}_ci" in report.summary:
            interval = report.summary[f"{key}_ci"] or (None, None)
            flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = interval
    return flat


def write_tables(reports: Sequence[SetReport], folder: Path) -> None:
    """`table.md` as papers lay it out (sets as rows), `table.csv` headed by machine keys."""
    markdown, table_csv = table_paths(folder)
    keys = reports[0].summary_keys
    header = ["Data set", "n", *(LABELS.get(k, k) for k in keys)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "--:|" * (len(header) - 1)]
    for report in reports:
        values = [format_interval(report.summary[k], report.summary.get(f"{k}_ci")) for k in keys]
        lines.append(f"| {report.name} | {report.summary['n_images']} | {' | '.join(values)} |")
    with atomic_path(markdown, option="--out") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(table_csv, option="--out") as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "n_images", *figures(reports[0])])
        for report in reports:
            values = ["" if v is None else f"{v:.3f}" for v in figures(report).values()]
            writer.writerow([report.name, report.summary["n_images"], *values])


def _run_tags(reports: Sequence[SetReport]) -> dict[str, str]:
    first = reports[0].summary
    described = ("model", "model_name", "model_version", "model_run_id", "predictions")
    tags = model_tags({key: first.get(key) for key in described})
    tags.update({"polypseg.protocol": first["protocol"], "polypseg.split": first["split"]})
    if len(reports) == 1:
        tags.update(
            {"polypseg.data_root": first["root"], "polypseg.data_digest": first["data_digest"]}
        )
    for report in reports:
        tags[f"polypseg.data_root.{report.name}"] = report.summary["root"]
        tags[f"polypseg.data_digest.{report.name}"] = report.summary["data_digest"]
    return tags


def log_evaluation(
    reports: Sequence[SetReport], tables: tuple[Path, Path] | None, prefixed: bool
) -> tuple[str, str]:
    """One MLflow run of every set's figures (`<set>/<metric>` when `prefixed`) and files."""
    import mlflow

    from polypseg.tracking.runs import log_figure, tracked_run
    from polypseg.tracking.store import runs_url

    names = "+".join(r.name for r in reports)
    first = reports[0].summary
    run_name = f"evaluate-{names}-{first['protocol']}-{first['split']}"
    with tracked_run(run_name=run_name, tags=_run_tags(reports)) as run:
        for report in reports:
            prefix = f"{report.name}/" if prefixed else ""
            values = {"n_images": report.summary["n_images"], **figures(report)}
            mlflow.log_metrics({prefix + k: v for k, v in values.items() if v is not None})
            folder = report.name if prefixed else None
            mlflow.log_artifact(str(report.json_path), folder)
            mlflow.log_artifact(str(report.csv_path), folder)
            log_figure(report.figure, f"figures/{prefix}worst_cases.png")
        for path in tables or ():
            mlflow.log_artifact(str(path))
    return run.info.run_id, f"{runs_url(run.info.experiment_id)}/{run.info.run_id}"
