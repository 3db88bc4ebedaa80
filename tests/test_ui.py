"""The URL `polypseg tune` prints, opened in a real browser: every trial, its val_dice and its
searched params on the first screen, and the chart view comparing the trials' val_dice curves and
their params against best_val_dice.

A small real study (two `polypseg tune` invocations, so two parent runs) is made in a temporary
folder; `mlflow ui` serves its store on a free loopback port; headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium) opens the printed URL. Marked `ui`: skipped
where Chromium is missing, failed in CI (`CI=true`), which installs it (.ci/run).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
import pytest
from conftest import unavailable
from typer.testing import CliRunner

from polypseg.cli import app

pytestmark = pytest.mark.ui

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)
SEARCHED = ("decoder.width", "train.lr", "train.dice_weight")  # the tiny study spec's space
PAGE_TIMEOUT_S = 90  # the UI's first render, on 2 busy cores


def _tool(*names: str) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser_tools() -> tuple[str, str]:
    """Chromium and its driver: skipped where missing, failed in CI, which installs them."""
    chromium, driver = _tool("chromium", "chromium-browser"), _tool("chromedriver")
    selenium = importlib.util.find_spec("selenium")
    found = {"chromium": chromium, "chromium-driver": driver, "selenium": selenium}
    missing = [name for name, where in found.items() if not where]
    if missing:
        reason = f"needs {', '.join(missing)}: apt-get install chromium chromium-driver; .[dev]"
        unavailable(reason)
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_ui(store_uri: str, log: Path) -> Iterator[str]:
    """`mlflow ui` over `store_uri` on a free loopback port; yields its base URL."""
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as out:
        # Its own process group: the server's worker processes stop with it.
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow ui did not start:\n{log.read_text()}") from None
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@contextmanager
def chromium(tools: tuple[str, str]) -> Iterator[Any]:
    """Headless Chromium with a fresh profile (no saved MLflow view state), through Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = tools[0]
    profile = tempfile.mkdtemp(prefix="polypseg-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(tools[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: Any, condition: Callable[[Any], Any], what: str, shot: Path) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.5).until(condition)
    except TimeoutException:
        driver.save_screenshot(str(shot))
        raise AssertionError(f"{what} not shown within {PAGE_TIMEOUT_S} s; see {shot}") from None


def _printed_url(stderr: str, base: str) -> str:
    """The runs URL `tune` printed, pointed at our server (it prints the default port)."""
    found = re.search(r"https?://\S+#/experiments/\S+", stderr)
    assert found, f"tune printed no UI URL:\n{stderr}"
    printed, ours = urlsplit(found.group(0)), urlsplit(base)
    return urlunsplit(printed._replace(scheme=ours.scheme, netloc=ours.netloc))


def _table_rows(driver: Any) -> list[str]:
    """Run names of the runs table, top to bottom."""
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, ".ag-pinned-left-cols-container .ag-row")
    ordered = sorted(rows, key=lambda row: int(row.get_attribute("row-index") or 0))
    return [row.text.split("\n")[1] if "\n" in row.text else row.text for row in ordered]


def _columns(driver: Any) -> dict[str, str]:
    """Column id → header text, for the columns the table shows."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, ".ag-header-cell[col-id]")
    return {cell.get_attribute("col-id"): cell.text for cell in cells if cell.is_displayed()}


def test_printed_url_shows_every_trial_its_val_dice_and_params(
    browser_tools: tuple[str, str],
    runner: CliRunner,
    tiny_config: Path,
    tmp_path: Path,
    mlflow_store: str,
    study_spec: Callable[..., Path],
) -> None:
    spec = study_spec(epochs=2)
    base_args = ["tune", "--config", str(tiny_config), "--study", str(spec)]
    for trials in ("2", "1"):  # two invocations: two parent runs, as a resumed study has
        result = runner.invoke(app, [*base_args, "--trials", trials])
        assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/studies/optuna.db")
    trials = sorted(study.trials, key=lambda t: -(t.value or 0.0))
    expected = [f"trial-{t.number}" for t in trials]
    assert len(expected) == 3

    with mlflow_ui(mlflow_store, tmp_path / "mlflow-ui.log") as base, chromium(browser_tools) as d:
        d.get(_printed_url(result.stderr, base))
        _wait(d, lambda d: len(_table_rows(d)) == 3, "three trial rows", tmp_path / "table.png")
        d.save_screenshot(str(tmp_path / "table.png"))
        assert _table_rows(d) == expected  # trials only, best first, none folded away
        headers = _columns(d)
        assert headers.get("metrics.`val_dice`") == "val_dice", headers
        for param in SEARCHED:
            assert headers.get(f"params.`{param}`") == param, headers

        from selenium.webdriver.common.by import By

        chart_toggle = d.find_element(By.CSS_SELECTOR, "input[name=runs-view-mode][value=CHART]")
        d.execute_script("arguments[0].click()", chart_toggle)
        card = "[data-testid=experiment-view-compare-runs-card]"
        first = _wait(
            d,
            lambda d: (cards := d.find_elements(By.CSS_SELECTOR, card)) and cards[0],
            "a chart card",
            tmp_path / "charts.png",
        )
        legend = [f"{name} (val_dice)" for name in expected]
        _wait(
            d,
            lambda d: (
                all(entry in first.text for entry in legend)
                and len(first.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace")) >= len(legend)
            ),
            "the val_dice curves of every trial",
            tmp_path / "charts.png",
        )
        d.save_screenshot(str(tmp_path / "charts.png"))
        assert first.text.split("\n")[0] == "val_dice"
        # The second card: one axis per searched param, then best_val_dice (the study's only
        # parallel-coordinate chart: its parent runs hold no PNG of it). Long names are cut.
        second = d.find_elements(By.CSS_SELECTOR, card)[1]
        labels = ".parcoords .dimension text.label"
        _wait(
            d,
            lambda d: len(second.find_elements(By.CSS_SELECTOR, labels)) == len(SEARCHED) + 1,
            "the parallel chart of the searched params",
            tmp_path / "charts.png",
        )
        shown = [
            label.get_attribute("textContent")
            for label in second.find_elements(By.CSS_SELECTOR, labels)
        ]
        assert shown[:2] == list(SEARCHED[:2]) and shown[-1] == "best_val_dice", shown
