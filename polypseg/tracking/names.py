"""The names polypseg gives MLflow (experiment, registered model, study), checked before any work:
MLflow refuses some only when a store first writes them (a model named `a/b`: after every trial
had run), and its public API checks names only against a store, which the door must not touch yet.
So MLflow 3's rules are written out here (a test holds them to what a store refuses), with ours:
its search syntax cannot escape a quote, and a study's name goes into a tag key and run names.
"""

from __future__ import annotations

from polypseg.errors import PolypsegError, shortened

# A study's UI view is the experiment tag `mlflow.sharedViewState.study-<name>` (MLflow caps tag
# keys at 250 characters, MAX_EXPERIMENT_TAG_KEY_LENGTH) and its parent runs are named
# `<name> #N` (the runs table's name column holds 250): 200 leaves room for both.
MAX_STUDY_NAME = 200


def _unquotable(name: str) -> str | None:
    if "'" in name or '"' in name:
        return "it holds a quote, which MLflow's search syntax cannot escape"
    if any(not ch.isprintable() for ch in name):
        return "it holds a control character (a newline, a tab)"
    return None


def check_experiment(name: str) -> None:
    """Refuse an experiment name MLflow refuses (empty, over 500 characters)."""
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH as LIMIT

    if not name or len(name) > LIMIT:
        why = f"over {LIMIT} characters" if name else "an experiment needs a name"
        raise PolypsegError(
            f"tracking.experiment = {shortened(name)!r}: {why}; choose another name "
            "(tracking.experiment in the config)"
        )


def check_names(experiment: str, registered_model: str, study: str) -> None:
    """Every name a command will give MLflow, checked before it touches a store or a cache."""
    from mlflow.utils.validation import bad_path_message, path_not_unique

    check_experiment(experiment)
    if not registered_model.strip():
        reason = "a registered model needs a name"
    elif "/" in registered_model or ":" in registered_model:
        reason = f"Invalid model name {registered_model!r}. Names cannot contain '/' or ':'"
    elif path_not_unique(registered_model):
        reason = bad_path_message(registered_model)
    else:
        reason = _unquotable(registered_model)
    if reason is not None:
        raise PolypsegError(
            f"tracking.registered_model = {shortened(registered_model)!r}: {reason}; choose "
            "another name (--set tracking.registered_model=NAME)"
        )
    if len(study) > MAX_STUDY_NAME:
        reason = f"it has {len(study)} characters, over {MAX_STUDY_NAME}"
    else:
        reason = _unquotable(study)
    if reason is not None:
        raise PolypsegError(
            f"study name {shortened(study)!r} cannot be used with MLflow: {reason}; choose "
            "another with --study-name or the spec's [study] name"
        )
