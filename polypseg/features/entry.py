"""One feature-cache entry on disk: its index, the cheap check that opens it, the full check.

An entry folder holds `features.npy`, `masks.npy` and `index.json`. The index names the images
(in row order) and their original sizes, records each array (`ArrayRecord`: shape, dtype, size,
full SHA-256, sample digest) and ends with `digest`, the SHA-256 of its own other fields, so a
damaged or hand-edited index is recognised before anything in it is trusted.

`open_entry` is what a cache hit costs, the same for 12 images or 1000: read and check the index,
then per array its size, header and sample digest (`open_checked`), and map it read-only.
`verify_entry` re-reads every byte against the full digests (`polypseg cache --verify`). Both
raise `ValueError` (or `OSError`) naming the damage; the cache then deletes and rebuilds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polypseg.caches import file_digest
from polypseg.features.npy import ArrayRecord, open_checked

FORMAT = 4  # bump when the layout, the mask rule (data/masks.py) or the reader changes (4: EXIF
# orientation applied by data/images.py): old entries miss
INDEX = "index.json"
ARRAYS = ("features.npy", "masks.npy")


def index_digest(body: dict[str, Any]) -> str:
    """SHA-256 of an index's fields (all but `digest`), in a canonical JSON form."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_index(folder: Path, body: dict[str, Any]) -> None:
    """Write `index.json` with `body` and its own digest."""
    body = {**body, "format": FORMAT}
    (folder / INDEX).write_text(json.dumps({**body, "digest": index_digest(body)}))


@dataclass(frozen=True)
class Entry:
    """What a checked index says: names in row order, original sizes, the arrays' records."""

    names: tuple[str, ...]
    sizes: np.ndarray  # N×2 (height, width)
    arrays: dict[str, ArrayRecord]


def _table(folder: Path) -> dict[str, Any]:
    raw = json.loads((folder / INDEX).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{INDEX} holds a JSON {type(raw).__name__}, not a table")
    body = {name: value for name, value in raw.items() if name != "digest"}
    if raw.get("digest") != index_digest(body):
        raise ValueError(f"{INDEX} does not match its own digest")
    return body


def read_index(folder: Path, key: str) -> Entry:
    """The entry's checked index; ValueError when it is damaged, foreign or for another key."""
    body = _table(folder)
    if body.get("format") != FORMAT:
        raise ValueError(f"{INDEX} has format {body.get('format')!r}, not {FORMAT}")
    if body.get("key") != key:
        raise ValueError("its key does not match its folder")
    names, sizes, arrays = body.get("names"), body.get("sizes"), body.get("arrays")
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{INDEX}: names must be a list of file names")
    if not isinstance(arrays, dict) or set(arrays) != set(ARRAYS):
        raise ValueError(f"{INDEX}: arrays must describe {', '.join(ARRAYS)}")
    records = {name: ArrayRecord.from_json(arrays[name]) for name in ARRAYS}
    size_table = np.array(sizes)
    if size_table.shape != (len(names), 2) or size_table.dtype.kind != "i":
        raise ValueError(f"{INDEX}: sizes must be one (height, width) per name")
    if any(record.shape[:1] != (len(names),) for record in records.values()):
        raise ValueError("array lengths do not match the index")
    return Entry(tuple(names), size_table, records)


def open_entry(folder: Path, key: str) -> tuple[Entry, np.ndarray, np.ndarray]:
    """(index, features, masks), the arrays memory-mapped after the cheap check."""
    entry = read_index(folder, key)
    features, masks = (open_checked(folder / name, entry.arrays[name]) for name in ARRAYS)
    return entry, features, masks


def verify_entry(folder: Path, key: str) -> None:
    """Re-hash every array in full against its recorded digest; ValueError on a mismatch."""
    entry = read_index(folder, key)
    for name in ARRAYS:
        if file_digest(folder / name) != entry.arrays[name].sha256:
            raise ValueError(f"{name} does not match its recorded SHA-256")
