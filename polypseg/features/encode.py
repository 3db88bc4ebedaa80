"""The feature pass: every image decoded once, encoded once, and streamed into a cache entry.

Decoding runs in DataLoader workers (pinned memory on CUDA), features come back through a pinned
buffer, and each batch is written one batch late, so the disk write of batch i − 1 overlaps the
encoder's work on batch i. With `variants` (`data.augment`) each image is encoded once per
dihedral variant, variant-major. A bad file travels back from a worker as data, so the pass
fails with the file's own one-line `DataError`, not the DataLoader's re-raised traceback.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from polypseg.data.dataset import KvasirDataset
from polypseg.data.pairs import Pair
from polypseg.dihedral import IDENTITY, transform
from polypseg.errors import DataError, PolypsegError
from polypseg.features.npy import ArrayRecord, NpyWriter
from polypseg.models.encoders import FrozenEncoder
from polypseg.outputs import short_of_space
from polypseg.processes import usable_cores

log = logging.getLogger(__name__)

FEATURES, MASKS = "features.npy", "masks.npy"
SPACE_MARGIN = 64 << 20  # kept free beyond the array data: headers, index, the file system's own


class _Items(Dataset):
    """Item i: image i mod N under variant i div N, with `error`: "" or a bad file's line."""

    def __init__(self, dataset: KvasirDataset, variants: Sequence[str] = ()) -> None:
        self.dataset = dataset
        self.variants = tuple(variants) or (IDENTITY,)

    def __len__(self) -> int:
        return len(self.dataset) * len(self.variants)

    def __getitem__(self, index: int) -> dict:
        variant = self.variants[index // len(self.dataset)]
        try:
            item = {**self.dataset[index % len(self.dataset)], "error": ""}
        except PolypsegError as err:
            size = self.dataset.image_size
            return {
                "image": torch.zeros(3, size, size, dtype=torch.uint8),
                "mask": torch.zeros(1, size, size, dtype=torch.uint8),
                "name": "",
                "size": torch.zeros(2, dtype=torch.int64),
                "error": str(err),
            }
        if variant != IDENTITY:
            for key in ("image", "mask"):
                item[key] = transform(item[key], variant).contiguous()
        return item


PREFETCH = 2  # batches each worker keeps ready: DataLoader's default prefetch_factor
SHM = Path("/dev/shm")


def loader_workers(device: torch.device, batches: int, batch_bytes: int = 0) -> int:
    """Decoding processes: enough to keep a GPU fed, one on a CPU (whose cores encode); fewer
    when /dev/shm (often 64 MiB in a container) cannot hold `PREFETCH` batches for each."""
    if batches < 2:
        return 0  # nothing to overlap: a worker would only cost its start-up
    wanted = min(8 if device.type == "cuda" else 1, max(1, usable_cores() - 1))
    try:
        free = shutil.disk_usage(SHM).free
    except OSError:  # no /dev/shm (macOS): workers share memory by other means
        return wanted
    fitting = free // max(1, PREFETCH * batch_bytes)
    if fitting < wanted:
        log.warning(
            "only %d MiB free in %s: %d image loader workers instead of %d "
            "(give the container more, e.g. docker run --shm-size=1g)",
            free >> 20,
            SHM,
            fitting,
            wanted,
        )
    return min(wanted, fitting)


@dataclass
class _Batch:
    features: torch.Tensor  # float16 on the host, valid once `done` has completed
    masks: torch.Tensor
    sizes: torch.Tensor
    done: torch.cuda.Event | None


def _encode(
    encoder: FrozenEncoder, images: torch.Tensor, device: torch.device, batch_size: int
) -> torch.Tensor:
    """float16 features; a compiled encoder sees only full batches, so it never recompiles."""
    n = len(images)
    if encoder.compiled and n < batch_size:
        images = torch.cat([images, images.new_zeros(batch_size - n, *images.shape[1:])])
        encoder.images_encoded -= batch_size - n  # the padding is not an image
    return encoder(images.to(device, non_blocking=True))[:n].to(torch.float16)


def _launch(encoder: FrozenEncoder, batch: dict, device: torch.device, batch_size: int) -> _Batch:
    """Start encoding a batch; on CUDA nothing here waits for the GPU. The event is recorded on
    `device`'s stream, the one its copies ran on: with `cuda:1`, one on the current device's
    stream would complete at once and the pinned buffer be read too early."""
    if errors := [message for message in batch["error"] if message]:
        raise DataError(errors[0])
    if device.type != "cuda":
        features = _encode(encoder, batch["image"], device, batch_size)
        return _Batch(features.cpu(), batch["mask"], batch["size"], None)
    with torch.cuda.device(device):
        features = _encode(encoder, batch["image"], device, batch_size)
        host = torch.empty(features.shape, dtype=torch.float16, pin_memory=True)
        host.copy_(features, non_blocking=True)  # on `device`'s current stream
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(device))
    return _Batch(host, batch["mask"], batch["size"], done)


class _Sink:
    """The entry's arrays, opened (free space checked) once the first batch shows their shape."""

    def __init__(self, folder: Path, n: int, image_size: int) -> None:
        self.folder, self.n, self.image_size = folder, n, image_size
        self.writers: dict[str, NpyWriter] = {}
        self.sizes: list[list[int]] = []

    def write(self, batch: _Batch) -> None:
        if batch.done is not None:
            batch.done.synchronize()
        features = batch.features.numpy()
        if not self.writers:
            self._open(features.shape[1:])
        self.writers[FEATURES].write(features)
        self.writers[MASKS].write(batch.masks.numpy())
        self.sizes.extend(batch.sizes.tolist())

    def _open(self, feature_shape: tuple[int, ...]) -> None:
        shapes = {
            FEATURES: ((self.n, *feature_shape), np.float16),
            MASKS: ((self.n, 1, self.image_size, self.image_size), np.uint8),
        }
        needed = sum(math.prod(shape) * np.dtype(kind).itemsize for shape, kind in shapes.values())
        if (free := short_of_space(self.folder, needed + SPACE_MARGIN)) is not None:
            raise PolypsegError(
                f"the feature cache needs {needed / 1e9:.2f} GB in {self.folder.parent} but only "
                f"{free / 1e9:.2f} GB are free; free some space or set POLYPSEG_CACHE to a larger "
                "disk"
            )
        for name, (shape, dtype) in shapes.items():
            self.writers[name] = NpyWriter(self.folder / name, shape, dtype)

    def close(self) -> dict[str, ArrayRecord]:
        return {name: writer.close() for name, writer in self.writers.items()}

    def abandon(self) -> None:
        for writer in self.writers.values():
            writer.abandon()


def encode_into(
    folder: Path,
    encoder: FrozenEncoder,
    pairs: Sequence[Pair],
    image_size: int,
    device: torch.device,
    batch_size: int,
    advance: Callable[[int], None],
    variants: Sequence[str] = (),
) -> tuple[list[list[int]], dict[str, ArrayRecord]]:
    """Encode `pairs` (under each of `variants` in turn) into `folder`; the original sizes and
    array records, one row per (variant, image). `advance(k)`: k more images stored."""
    items = _Items(KvasirDataset(pairs, image_size), variants)
    batch_bytes = batch_size * 4 * image_size**2  # uint8 RGB images and masks
    workers = loader_workers(device, -(-len(items) // batch_size), batch_bytes)
    loader = DataLoader(
        items, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    encoder.to(device)
    sink = _Sink(folder, len(items), image_size)
    pending: _Batch | None = None
    try:
        for batch in loader:
            launched = _launch(encoder, batch, device, batch_size)
            if pending is not None:  # stored one batch late: the disk overlaps the encoder
                sink.write(pending)
                advance(len(pending.sizes))
            pending = launched
        if pending is not None:
            sink.write(pending)
            advance(len(pending.sizes))
        return sink.sizes, sink.close()
    except BaseException:
        sink.abandon()
        raise
