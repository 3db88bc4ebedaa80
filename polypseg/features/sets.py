"""`FeatureSet`: one split's cached features and masks in memory, served in batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from polypseg.dihedral import transform


@dataclass
class FeatureSet:
    """Features (N×C×h×w float16) and masks (N×1×S×S uint8 0/1) of one split; optionally the
    images (N×3×S×S uint8, for a decoder that reads pixels) and the features under each of
    `variants` (V×N×C×h×w), of which `batches` draws one (or the identity) per image and epoch."""

    features: torch.Tensor
    masks: torch.Tensor
    images: torch.Tensor | None = None
    variants: tuple[str, ...] = ()
    augmented: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device) -> FeatureSet:
        """On the device once, when it fits, so epochs make no host-to-device copy per batch."""
        have = self.features.device
        if have.type == device.type and device.index in (None, have.index):
            return self
        tensors = {name: value for name, value in vars(self).items() if torch.is_tensor(value)}
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            # What this process's caching allocator holds but does not use is free to it too.
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            if sum(tensor.nbytes for tensor in tensors.values()) > 0.5 * free:
                return self  # stays on the host; batches are copied as they are used
        return replace(self, **{name: tensor.to(device) for name, tensor in tensors.items()})

    def batches(
        self,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(float32 features, float32 masks, uint8 images or None) on `device`, shuffled with
        `generator`; with `variants` and a generator (training), each image under a drawn
        variant, its mask and image transformed alike."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        variants = self.variants if generator is not None else ()  # evaluation draws none
        drawn = None
        if variants:
            drawn = torch.randint(len(variants) + 1, (n,), generator=generator)
            drawn = drawn.to(self.features.device)
        order = order.to(self.features.device)  # once per epoch, not once per batch
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            x = _gather(self.features, rows, device)
            y = _gather(self.masks, rows, device)
            images = _gather(self.images, rows, device) if self.images is not None else None
            picks = drawn[rows].to(device) if drawn is not None else None
            for k, variant in enumerate(variants, start=1):  # picks 0: the identity
                chosen = (picks == k).nonzero().flatten()
                if len(chosen) == 0:
                    continue
                x[chosen] = _gather(self.augmented[k - 1], rows[chosen.to(rows.device)], device)
                y[chosen] = transform(y[chosen], variant)
                if images is not None:
                    images[chosen] = transform(images[chosen], variant)
            x = x.to(torch.float32, memory_format=memory_format)
            yield x, y.float(), images


def _gather(tensor: torch.Tensor, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor[rows]` on `device`; from a pinned set through a pinned buffer, so the copy really
    runs without blocking (the caching host allocator keeps it until the copy is done)."""
    if device.type == "cuda" and tensor.device.type == "cpu" and tensor.is_pinned():
        shape = (len(rows), *tensor.shape[1:])
        gathered = torch.empty(shape, dtype=tensor.dtype, pin_memory=True)
        torch.index_select(tensor, 0, rows, out=gathered)
        return gathered.to(device, non_blocking=True)
    return tensor[rows].to(device, non_blocking=True)
