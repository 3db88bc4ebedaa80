"""The frozen encoder's precision: when it runs with bf16 weights, and how close that stays to fp32.

A frozen encoder only ever runs forward, so it can run with its weights cast to bfloat16, not
only under autocast: autocast keeps fp32 weights and re-casts them on every call, and leaves
layer norms, softmax and the additions in fp32 (measured on an H200 for SAM ViT-B: fp32 32.7
ms/img, bf16 autocast 17.3, bf16 weights 13.3). The fp32 weights stay the master copy (the
checkpoint, the `weights_digest`, the logged pyfunc model); `compute_copy` makes the bf16 one.

`encoder.precision` chooses: "auto" is bf16 on a CUDA GPU with native bf16 (compute capability
8.0 and later; torch emulates it on older cards, more slowly than fp32) and fp32 elsewhere,
"fp32" and "bf16" force one (bf16 also runs on CPUs; with AVX512-BF16 or AMX it is several times
faster there). bf16 features must stay within `BF16_MIN_COSINE` and `BF16_MAX_ERROR` of the fp32
ones; the tests check it on random weights, SAM ViT-B's depth included. The cache key includes
the compute dtype, so fp32 and bf16 features are never mixed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from polypseg.config import ENCODER_PRECISIONS
from polypseg.errors import ConfigError

# bf16 keeps 8 significant bits. Measured on SAM ViT-B's architecture with random weights: a
# cosine similarity of 0.9998-0.9999 per image and a largest error of 1.3 % (256 px) to 2.1 %
# (128 px, random relative positions) of the largest feature.
BF16_MIN_COSINE = 0.999
BF16_MAX_ERROR = 0.05  # largest |bf16 − fp32|, relative to the largest |fp32| feature


def native_bf16(device: torch.device) -> bool:
    """Whether `device` is a GPU with native bf16 (compute capability 8.0+, or ROCm).

    `torch.cuda.is_bf16_supported(including_emulation=False)` by its own rule, but asked of
    `device` itself: that function asks the current device, not the one the encoder runs on.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the encoder's weights and inputs take on `device` under `encoder.precision`."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    raise ConfigError(
        f"encoder.precision = {precision!r} is not a precision; use {', '.join(ENCODER_PRECISIONS)}"
    )


def compute_copy(module: nn.Module, dtype: torch.dtype, compiled: bool = False) -> nn.Module:
    """A frozen copy of `module` with its weights in `dtype`, optionally `torch.compile`d.

    The copy is for inference only; `module` itself (the fp32 master) is left untouched.
    """
    clone = copy.deepcopy(module).to(dtype).requires_grad_(False).eval()
    return torch.compile(clone, dynamic=False) if compiled else clone


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    """(lowest per-image cosine similarity, largest error relative to max |reference|).

    Both are B×… feature tensors; the pair is what `BF16_MIN_COSINE` and `BF16_MAX_ERROR` bound.
    """
    ref, cand = reference.float().flatten(1), candidate.float().flatten(1)
    cosine = F.cosine_similarity(ref, cand, dim=1).min().item()
    error = ((ref - cand).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    return cosine, error
