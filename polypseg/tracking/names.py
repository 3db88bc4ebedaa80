"""The names polypseg gives MLflow (experiment, registered model, study), checked before any work.

MLflow refuses some names only when a store first writes them (a model named `a/b`: after every
trial had run). Its validators are private and its public API checks names only against a store,
which the door must not touch yet, so MLflow 3's rules are written out here (a test holds them to
what a store refuses), with ours: MLflow's search syntax has no escape for a quote, and a study's
name goes into an experiment tag key and run names.
"""

from __future__ import annotations

from polypseg.errors import PolypsegError

# A study's UI view is the experiment tag `mlflow.sharedViewState.study-<name>` (MLflow caps tag
# keys at 250 characters, MAX_EXPERIMENT_TAG_KEY_LENGTH) and its parent runs are named
# `<name> #N` (the runs table's name column holds 250): 200 leaves room for both.
MAX_STUDY_NAME = 200
QUOTES = ("'", '"')


def _unquotable(name: str) -> str | None:
    """Why `name` cannot stand in an MLflow search filter, or None."""
    if any(quote in name for quote in QUOTES):
        return "it holds a quote, which MLflow's search syntax cannot escape"
    if any(not ch.isprintable() for ch in name):
        return "it holds a control character (a newline, a tab)"
    return None


def check_study_name(name: str) -> None:
    """Refuse a study name MLflow would refuse (or misread) somewhere in a study's life."""
    if len(name) > MAX_STUDY_NAME:
        reason = f"it has {len(name)} characters, over {MAX_STUDY_NAME}"
    else:
        reason = _unquotable(name)
    if reason is not None:
        raise PolypsegError(
            f"study name {_shown(name)!r} cannot be used with MLflow: {reason}; choose another "
            "with --study-name or the spec's [study] name"
        )


def _shown(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


def check_registered_model(name: str) -> None:
    """Refuse a registered model name that MLflow refuses (empty, `/`, `:`, a path that
    resolves elsewhere) or cannot search."""
    from mlflow.utils.validation import bad_path_message, path_not_unique

    if not name.strip():
        reason = "a registered model needs a name"
    elif "/" in name or ":" in name:
        reason = f"Invalid model name {name!r}. Names cannot contain '/' or ':'"
    elif path_not_unique(name):
        reason = bad_path_message(name)
    else:
        reason = _unquotable(name)
    if reason is not None:
        raise PolypsegError(
            f"tracking.registered_model = {_shown(name)!r}: {reason}; choose another name "
            "(--set tracking.registered_model=NAME)"
        )


def check_experiment(name: str) -> None:
    """Refuse an experiment name MLflow refuses (empty, over 500 characters)."""
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH as LIMIT

    if not name or len(name) > LIMIT:
        why = f"over {LIMIT} characters" if name else "an experiment needs a name"
        raise PolypsegError(
            f"tracking.experiment = {_shown(name)!r}: {why}; choose another name "
            "(tracking.experiment in the config)"
        )


def check_names(
    experiment: str, registered_model: str | None = None, study: str | None = None
) -> None:
    """Every name a command will give MLflow, checked before it touches a store or a cache."""
    check_experiment(experiment)
    if registered_model is not None:
        check_registered_model(registered_model)
    if study is not None:
        check_study_name(study)
