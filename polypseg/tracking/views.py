"""A saved view of MLflow's runs page that compares a study's trials; how to open it, or a run.

MLflow 3.17's UI keeps columns and charts in a *saved view*: the experiment tag
`mlflow.sharedViewState.<id>` (`{"name", "createdAt", "updatedAt", "state"}`), opened by
`#/experiments/<id>/runs?viewStateShareKey=<id>`. Ours shows the study's trial runs only, sorted by
the best metric (which also lays nested runs out flat), with their state, metric and searched
parameters, the metric's curves and the parameters against the best value.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from mlflow import MlflowClient

from polypseg.tracking.store import mask_password, runs_url

VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def view_key(study_name: str) -> str:
    """The view's id: the study's name made URL- and tag-safe (one view per study)."""
    return "study-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", study_name).strip("-") or "study")


def _quoted(value: str) -> str:
    """A string literal for MLflow's search syntax."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _charts(metric: str, params: list[str]) -> tuple[list[dict], list[dict]]:
    """Chart cards and their section, in the UI's own card format (RunsChartsCardConfig). A card
    field left out reads as the UI's default (linear axes, not deleted, not generated); the UI's
    line chart smooths a card without `lineSmoothness`."""
    section = "polypseg-trials"
    curves = {
        "metricSectionId": section,
        "uuid": "polypseg-curves",
        "type": "LINE",
        "runsCountToCompare": 100,
        "metricKey": metric,
        "selectedMetricKeys": [metric],
        "xAxisKey": "step",
        "lineSmoothness": 0,
    }
    parallel = {
        "metricSectionId": section,
        "uuid": "polypseg-params",
        "type": "PARALLEL",
        "runsCountToCompare": 100,
        "selectedParams": params,
        "selectedMetrics": [f"best_{metric}"],
        "showAllRuns": True,
    }
    # isReordered keeps this order: the UI appends charts of the other metrics after these.
    sections = [{"uuid": section, "name": "Trials", "display": True, "isReordered": True}]
    return [curves, parallel], sections


def study_view_state(study_name: str, params: list[str], metric: str, direction: str) -> dict:
    """The runs page's state (search facets and UI state) that compares the study's trials,
    best first: by `best_<metric>`, ascending for a metric the study minimizes. The UI lays a
    saved view over its defaults, so only what differs from them is written."""
    best = f"best_{metric}"
    charts, sections = _charts(metric, params)
    return {
        "searchFilter": (
            f"tags.`optuna.study_name` = {_quoted(study_name)} "
            "AND attributes.run_name LIKE 'trial-%'"
        ),
        "orderByKey": f"metrics.`{best}`",
        "orderByAsc": direction == "minimize",
        "selectedColumns": [
            "tags.`optuna.trial_state`",
            f"metrics.`{best}`",
            f"metrics.`{metric}`",
            *(f"params.`{param}`" for param in params),
        ],
        "runsHiddenMode": "SHOW_ALL",  # the default draws only the first 10 rows in the charts
        "compareRunCharts": charts,
        "compareRunSections": sections,
        "isAccordionReordered": True,
    }


def save_study_view(
    experiment_id: str, study_name: str, params: list[str], metric: str, direction: str
) -> str:
    """Write the study's saved view in the experiment, unless the same is saved; returns its id."""
    key = view_key(study_name)
    state = json.dumps(study_view_state(study_name, params, metric, direction), sort_keys=True)
    client = MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    try:
        saved: dict[str, Any] = json.loads(tags.get(VIEW_TAG_PREFIX + key, "{}"))
    except ValueError:  # written by hand or by another tool: ours replaces it
        saved = {}
    if saved.get("state") == state:
        return key
    now = int(time.time() * 1000)
    envelope = {
        "name": f"trials of {study_name}",
        "createdAt": saved.get("createdAt", now),
        "updatedAt": now,
        "state": state,
    }
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope))
    return key


def ui_instructions(what: str, experiment_id: str, page: str, tracking_uri: str) -> list[str]:
    """How to see `page` of the experiment's runs table (`/<run id>`, `?viewStateShareKey=<key>`):
    the command that serves the store (none for a server), then the URL."""
    if tracking_uri.startswith(("http://", "https://")):
        return [f"{what}: {runs_url(experiment_id, tracking_uri.rstrip('/'))}{page}"]
    return [
        f"{what}: mlflow ui --backend-store-uri {mask_password(tracking_uri)}",
        f"  then open {runs_url(experiment_id)}{page}",
    ]
