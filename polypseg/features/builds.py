"""The feature cache's build folders: who is building one, and which leftovers are stale.

A build killed with SIGKILL cannot remove its temporary folder, which would stay forever, as
large as the features written so far. So each build records its owner in it (`claim`), and
`clean_stale_builds`, before every build, removes a folder whose owner is gone: at once when it
ran on this machine, after `STALE_AFTER_S` (longer than any build) when it ran elsewhere or left
no record, since a process on another machine sharing the cache cannot be asked.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from polypseg.processes import Worker, this_machine

log = logging.getLogger(__name__)

OWNER = ".owner.json"
STALE_AFTER_S = 24 * 3600


def claim(folder: Path) -> None:
    (folder / OWNER).write_text(json.dumps(Worker.current().tags()))


def release(folder: Path) -> None:
    (folder / OWNER).unlink(missing_ok=True)


def is_stale(folder: Path) -> bool:
    try:
        owner = Worker.from_tags(json.loads((folder / OWNER).read_text()))
    except (OSError, ValueError, TypeError):  # missing, torn or not a record of ours
        owner = None
    if owner is not None and owner.machine == this_machine():
        return owner.is_gone(last_beat=None, grace=STALE_AFTER_S)
    changed = max([folder.stat().st_mtime, *(path.stat().st_mtime for path in folder.iterdir())])
    return time.time() - changed > STALE_AFTER_S


def clean_stale_builds(directory: Path) -> None:
    for folder in directory.glob(".*"):
        try:
            stale = folder.is_dir() and is_stale(folder)
        except OSError:  # removed meanwhile by another cleaner or its own builder
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed %s, left by a feature-cache build that did not finish", folder)
