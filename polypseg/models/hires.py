"""The high-resolution decoder: SAM's semantics, boundaries from a small CNN over the pixels.

As in ASPS (Li et al., 2024), a small trainable CNN over the image draws the detail that a
1/16-resolution feature map cannot: the refined features are upsampled ×2 `steps` times, each
step fused with the image branch at that resolution (a U-Net's skips, the image as encoder). Each
stage has a head, for deep supervision (as PraNet, Polyp-PVT and SAM2-UNet); prediction is the last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polypseg.models.encoders import IMAGENET_MEAN, IMAGENET_STD

BRANCH_GROWTH = 4  # the branch's widest level: 4 × `branch_width` channels


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class HiresDecoder(nn.Module):
    """B×`in_channels`×h×w features and B×3×S×S uint8 images → B×1×S×S logits, S = h·2^steps.

    Args:
        in_channels: the encoder's `out_channels`.
        width: channels of the refined features at h×w; halved at each step, never below
            `branch_width`.
        branch_width: channels of the image branch at full resolution, doubled at each ×2
            downsampling up to `BRANCH_GROWTH` times it.
        steps: ×2 upsamplings from h to S (3 for SAM at 512 px, whose features are 64×64).
    """

    name = "hires"

    def __init__(self, in_channels: int, width: int, branch_width: int, steps: int) -> None:
        super().__init__()
        self.arguments = {"in_channels": in_channels, "width": width}
        self.arguments.update(branch_width=branch_width, steps=steps)
        widest = BRANCH_GROWTH * branch_width
        branch = [min(branch_width << level, widest) for level in range(steps)]
        # Level 0 at S, level k at S / 2^k: the resolutions the decoder's steps arrive at.
        self.branch = nn.ModuleList(
            [_conv(3, branch[0])]
            + [_conv(branch[k - 1], branch[k], stride=2) for k in range(1, steps)]
        )
        widths = [max(width >> step, branch_width) for step in range(steps + 1)]
        self.refine = _conv(in_channels, widths[0])
        self.fuse = nn.ModuleList(
            [_conv(widths[i] + branch[steps - 1 - i], widths[i + 1]) for i in range(steps)]
        )
        self.heads = nn.ModuleList([nn.Conv2d(w, 1, kernel_size=1) for w in widths[1:]])

    def stages(self, features: torch.Tensor, images: torch.Tensor) -> list[torch.Tensor]:
        """Each step's logits, from h·2×w·2 up to S×S (the last is the prediction)."""
        # The branch normalises its own input, by ImageNet's statistics as constants, not buffers:
        # `seeded_decoder` builds on "meta" and initialises parameters only; no state dict entry.
        x = images.to(features.dtype)
        mean, std = (x.new_tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        x = (x - mean) / std
        skips = []
        for level in self.branch:
            x = level(x)
            skips.append(x)
        y = self.refine(features)
        logits = []
        for fuse, head, skip in zip(self.fuse, self.heads, reversed(skips), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = fuse(torch.cat([y, skip], dim=1))
            logits.append(head(y))
        return logits

    def forward(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return self.stages(features, images)[-1]
