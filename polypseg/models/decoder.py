"""The trainable decoder: a small convolutional head over any encoder's feature map.

It knows nothing of encoders: `in_channels` (the encoder's `out_channels`) and `width` are all it
takes. Output: one logit channel at twice the feature map's resolution; the segmenter upsamples
it to the input size.
"""

from __future__ import annotations

import torch
from torch import nn


class SimpleDecoder(nn.Module):
    """B×`in_channels`×h×w features → B×1×2h×2w logits.

    Conv3×3-BN-ReLU, Conv3×3-BN-ReLU (`width` channels), a ×2 transposed convolution, and a 1×1
    convolution to one logit channel.
    """

    def __init__(self, in_channels: int, width: int = 256) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, 1, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)
