"""The `polypseg` command line: a thin typer shell over the library.

Each command parses its options, calls one library function and prints. Heavy imports (torch,
mlflow, optuna) happen inside the commands so that `polypseg --help` stays instant. The commands
live beside the app by job (`data`, `training`, `evaluation`); importing them registers them.
"""

from polypseg.cli import data, evaluation, export, training  # noqa: F401 - registers them
from polypseg.cli.app import app, main

__all__ = ["app", "main"]
