"""One feature-cache entry on disk: `features.npy`, `masks.npy` and `index.json`.

The index (names in row order, original sizes, each array's `ArrayRecord`) ends with the SHA-256
of its own other fields, so a damaged or hand-edited one is recognised before it is trusted.
`open_entry` costs the same at any size (a hit); with `verify` it re-reads every byte. It raises
`ValueError` (or `OSError`) naming the damage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from polypseg.caches import file_digest
from polypseg.features.npy import open_checked

FORMAT = 4  # bump when the layout, the mask rule (data/masks.py) or the reader changes (4: EXIF
# orientation applied by data/images.py): old entries miss
INDEX = "index.json"
ARRAYS = ("features.npy", "masks.npy")


def index_digest(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_index(folder: Path, body: dict[str, Any]) -> None:
    body = {**body, "format": FORMAT}
    (folder / INDEX).write_text(json.dumps({**body, "digest": index_digest(body)}))


def open_entry(
    folder: Path, key: str, verify: bool = False
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """The entry's names (row order), N×2 original (height, width) sizes, features and masks;
    with `verify`, each array's every byte is checked against its SHA-256 first."""
    raw = json.loads((folder / INDEX).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{INDEX} holds a JSON {type(raw).__name__}, not a table")
    body = {name: value for name, value in raw.items() if name != "digest"}
    if raw.get("digest") != index_digest(body):
        raise ValueError(f"{INDEX} does not match its own digest")
    if body.get("key") != key:  # the key hashes `FORMAT` too: an entry of another format
        raise ValueError("its key does not match its folder")
    # The digest matched: the body is what `write_index` wrote, its types need no second check.
    arrays = []
    for name in ARRAYS:
        record = body["arrays"][name]  # an `ArrayRecord` as JSON
        if verify and file_digest(folder / name) != record["sha256"]:
            raise ValueError(f"{name} does not match its recorded SHA-256")
        arrays.append(open_checked(folder / name, record["nbytes"], record["sample"]))
    return tuple(body["names"]), np.array(body["sizes"]), *arrays
