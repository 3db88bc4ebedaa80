"""Where polypseg keeps what it can rebuild (`cache_home`, `cache_folder`), and the file digests
that key it."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from polypseg.errors import PolypsegError


def cache_home() -> Path:
    """`$POLYPSEG_CACHE` (default `~/.cache/polypseg`): features, checkpoints, synthetic data.

    Set but empty counts as unset: `Path("")` is the working directory, which would fill it."""
    return Path(
        os.environ.get("POLYPSEG_CACHE") or Path.home() / ".cache" / "polypseg"
    ).expanduser()


def cache_folder(*parts: str) -> Path:
    """The folder `parts` under `cache_home()`, created and shown to take writes; one line when
    it cannot be (`$POLYPSEG_CACHE` a file, or a read-only place)."""
    folder = cache_home().joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        cause = (err.strerror or type(err).__name__).lower()
        raise PolypsegError(
            f"cannot write the cache folder {folder} ({cause}); set POLYPSEG_CACHE to a "
            "writable folder"
        ) from None
    return folder


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in chunks (checkpoints are gigabytes)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
