"""The feature cache's build folders: who is building one, and which leftovers are stale.

An entry is built in a temporary folder beside it (`.<entry>.<random>`, made by `atomic_path`)
and renamed into place when whole. A build killed with SIGKILL (or by a power cut) cannot remove
its folder, which would then stay forever, as large as the features written so far. So each
build writes an owner record into its folder (`claim`): host, process id and the process's start
time (a recycled pid is another process). `clean_stale_builds`, called before every build,
removes the folders whose owner is gone: at once when the owner ran on this host and no longer
exists, and after `STALE_AFTER_S` (longer than any build takes) when the owner ran elsewhere or
left no record, since a process on another host sharing the cache cannot be asked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

OWNER = ".owner.json"
STALE_AFTER_S = 24 * 3600


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # someone else's live process
        return -1.0


def claim(folder: Path) -> None:
    """Record this process as the builder of `folder`."""
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}
    (folder / OWNER).write_text(json.dumps(owner))


def release(folder: Path) -> None:
    """Remove the owner record before the folder becomes an entry."""
    (folder / OWNER).unlink(missing_ok=True)


def _owner(folder: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((folder / OWNER).read_text())
    except (OSError, ValueError):
        return None
    fields_ok = isinstance(owner, dict) and isinstance(owner.get("pid"), int)
    return owner if fields_ok and isinstance(owner.get("host"), str) else None


def _last_change(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    times.extend(path.stat().st_mtime for path in folder.iterdir())
    return max(times)


def is_stale(folder: Path, now: float | None = None) -> bool:
    """Whether a build folder's owner is gone (see the module docstring)."""
    owner = _owner(folder)
    if owner is not None and owner["host"] == socket.gethostname():
        started = _start_time(owner["pid"])
        recorded = owner.get("started")
        if started is None:
            return True
        # A live pid with another start time was recycled: the owner itself is gone.
        return started >= 0 and isinstance(recorded, (int, float)) and abs(started - recorded) > 1
    return (now if now is not None else time.time()) - _last_change(folder) > STALE_AFTER_S


def clean_stale_builds(directory: Path) -> list[Path]:
    """Remove the stale build folders under `directory`; returns what was removed."""
    removed = []
    for folder in directory.glob(".*"):
        try:
            stale = folder.is_dir() and is_stale(folder)
        except OSError:  # removed meanwhile by another cleaner or its own builder
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed %s, left by a feature-cache build that did not finish", folder)
            removed.append(folder)
    return removed
