"""Progress bars on stderr: stdout carries results (`run_id=...`, JSON, paths) for scripts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import Progress, ProgressColumn

T = TypeVar("T")


def progress_bar(*columns: str | ProgressColumn, enabled: bool = True, **kwargs: Any) -> Progress:
    """A rich `Progress` writing to stderr (default columns when none are given)."""
    return Progress(*columns, console=Console(stderr=True), disable=not enabled, **kwargs)


def track(items: Iterable[T], description: str, enabled: bool = True) -> Iterator[T]:
    """Iterate with a progress bar on stderr that disappears when done (or on an error)."""
    items = list(items)
    with progress_bar(enabled=enabled, transient=True) as bar:
        yield from bar.track(items, description=description, total=len(items))
