"""`FrozenEncoder`: a frozen backbone with its preprocessing, run at the precision it is set to.

The backbone's fp32 weights are the master copy (the digest that keys the feature cache, the
checkpoints, the logged model). A frozen encoder only runs forward, so the features may come from
a copy whose weights themselves are bf16, not autocast's (measured on an H200 for SAM ViT-B:
fp32 32.7 ms/img, bf16 autocast 17.3, bf16 weights 13.3). "auto" is bf16 on a GPU with native
bf16 (older cards emulate it, slower than fp32) and fp32 elsewhere.
"""

from __future__ import annotations

import copy
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polypseg.processes import usable_cores


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        # `torch.cuda.is_bf16_supported(including_emulation=False)`'s rule, asked of `device`
        # itself: that function asks the current GPU, not the one the encoder runs on.
        cuda = device.type == "cuda" and torch.cuda.is_available()
        native = cuda and (
            bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
        )
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def compute_copy(module: nn.Module, dtype: torch.dtype, compiled: bool = False) -> nn.Module:
    clone = copy.deepcopy(module).to(dtype).requires_grad_(False).eval()
    return torch.compile(clone, dynamic=False) if compiled else clone


@dataclass(frozen=True)
class Preprocessing:
    """Normalisation, and SAM's resize-longest-side-then-pad when `input_size` is set."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int | None = None


class FrozenEncoder(nn.Module):
    """B×3×H×W uint8 → B×`out_channels`×h×w float32; parameters never require grad and
    BatchNorm statistics never move (`train()` keeps eval mode)."""

    def __init__(
        self, name: str, backbone: nn.Module, out_channels: int, preprocessing: Preprocessing
    ) -> None:
        super().__init__()
        self.name, self.backbone = name, backbone
        self.out_channels, self.preprocessing = out_channels, preprocessing
        self.precision, self.compiled = "auto", False  # `encoder.precision`, `encoder.compile`
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), False)
        self.backbone.requires_grad_(False)
        self.train(False)
        self.weights_digest = state_digest(self.backbone)
        self.images_encoded = 0  # how often the backbone ran, per image: the cache's whole point
        # The backbone's low-precision or compiled copy, by (device, dtype); a plain dict, so it
        # is not a submodule: state_dict, checkpoints and the digest see the fp32 master only.
        self._copies: dict[tuple[str, torch.dtype], nn.Module] = {}

    def train(self, mode: bool = True) -> FrozenEncoder:  # noqa: ARG002 - frozen for good
        return super().train(False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        # .to(), .cpu(), .half() move or change the master: a copy made earlier is stale.
        self._copies = {}
        return super()._apply(fn, recurse)

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        return compute_dtype(self.precision, device)

    def _runner(self, device: torch.device) -> nn.Module:
        dtype = self.compute_dtype(device)
        if dtype == torch.float32 and not self.compiled:
            return self.backbone
        key = (str(device), dtype)
        if key not in self._copies:
            self._copies = {key: compute_copy(self.backbone, dtype, self.compiled)}
        return self._copies[key]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        size = self.preprocessing.input_size
        if size is None:
            return x
        h, w = x.shape[-2:]
        scale = size / max(h, w)
        new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(
                x, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            )
        return F.pad(x, (0, size - new_w, 0, size - new_h))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            runner = self._runner(images.device)
            x = self.preprocess(images).to(self.compute_dtype(images.device))
            features = runner(x).float()
        self.images_encoded += images.shape[0]
        return features.clone()  # a normal tensor, usable by a decoder that trains on it


def _tensor_sha256(tensor: torch.Tensor) -> str:
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(raw).hexdigest()  # hashes the buffer in place: no copy


def state_digest(module: nn.Module) -> str:
    """SHA-256 over a module's state (names, dtypes, shapes, bytes), hashed in threads (hashlib
    releases the GIL): every cache hit pays for it, and ViT-B is 360 MB."""
    state = sorted(module.state_dict().items())
    with ThreadPoolExecutor(max_workers=min(8, usable_cores())) as pool:
        hashes = list(pool.map(_tensor_sha256, (tensor for _, tensor in state)))
    digest = hashlib.sha256()
    for (key, tensor), tensor_hash in zip(state, hashes, strict=True):
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}:{tensor_hash}".encode())
    return digest.hexdigest()
