"""A cache entry's arrays on disk: `.npy` files written as a stream, opened memory-mapped.

`NpyWriter` writes with plain `write` calls, so a full disk is an `OSError` where a memory-mapped
write would kill the process with SIGBUS, and hashes as it writes, so the full SHA-256 costs no
second read. `open_checked` costs the same at any size: the file size and the digest of the
first (the header's) and last MiB, which catch a truncated, extended or end-damaged file; damage
in the middle is found by the full digest (`polypseg cache --verify`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_BYTES = 1 << 20  # read from each end of a file by the cheap check on load


@dataclass(frozen=True)
class ArrayRecord:
    shape: tuple[int, ...]
    dtype: str  # numpy's dtype.str, e.g. "<f2"
    nbytes: int  # the whole file, header included
    sha256: str  # of the whole file
    sample: str  # `sample_digest` of the file


def sample_digest(path: Path) -> str:
    """SHA-256 of a file's size, its first and its last `SAMPLE_BYTES`: constant cost."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(SAMPLE_BYTES))
        handle.seek(max(0, size - SAMPLE_BYTES))
        digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


class NpyWriter:
    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._digest = hashlib.sha256()
        header = io.BytesIO()
        descr = np.lib.format.dtype_to_descr(self.dtype)
        fields = {"descr": descr, "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(header, fields)
        self._handle = path.open("wb")
        try:
            self._write(header.getvalue())
        except BaseException:
            self._handle.close()
            raise

    def _write(self, data: bytes | memoryview) -> None:
        self._handle.write(data)
        self._digest.update(data)

    def write(self, block: np.ndarray) -> None:
        if tuple(block.shape[1:]) != self.shape[1:] or self.rows + len(block) > self.shape[0]:
            raise ValueError(
                f"{self.path.name}: a block of {block.shape} does not fit rows "
                f"{self.rows}.. of {self.shape}"
            )
        data = np.ascontiguousarray(block, dtype=self.dtype)
        self._write(memoryview(data).cast("B"))
        self.rows += len(block)

    def close(self) -> ArrayRecord:
        self._handle.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows} of {self.shape[0]} rows written")
        return ArrayRecord(
            self.shape,
            self.dtype.str,
            self.path.stat().st_size,
            self._digest.hexdigest(),
            sample_digest(self.path),
        )

    def abandon(self) -> None:
        self._handle.close()


def open_checked(path: Path, nbytes: int, sample: str) -> np.ndarray:
    """The array memory-mapped read-only after the cheap check against its record's `nbytes` and
    `sample`; ValueError when it fails."""
    size = path.stat().st_size
    if size != nbytes:
        raise ValueError(f"{path.name} is {size} bytes where its index says {nbytes}")
    if sample_digest(path) != sample:
        raise ValueError(f"{path.name} does not match its recorded sample digest")
    # The sampled first MiB holds the header as written from the record's shape and dtype.
    return np.load(path, mmap_mode="r")
