"""Where polypseg keeps what it can rebuild (`cache_home`), and the file digests that key it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_home() -> Path:
    """`$POLYPSEG_CACHE` (default `~/.cache/polypseg`): features, checkpoints, synthetic data.

    Set but empty counts as unset: `Path("")` is the working directory, which would fill it."""
    return Path(
        os.environ.get("POLYPSEG_CACHE") or Path.home() / ".cache" / "polypseg"
    ).expanduser()


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    """The hex digest of a file's bytes, read in chunks (checkpoints are gigabytes)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
