"""The trainable decoders by name (`decoder.name`), over any encoder's feature map.

Each takes the encoder's `out_channels` and a few sizes, is called as `decoder(features, images)`
(uint8 B×3×S×S images at the training size, ignored by `simple`), lists its stages' logits
(`stages`, for deep supervision) and keeps its constructor `arguments` for `decoder_record`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from polypseg.models.hires import HiresDecoder


class SimpleDecoder(nn.Module):
    """The seed's head: B×`in_channels`×h×w features → B×1×2h×2w logits."""

    name = "simple"

    def __init__(self, in_channels: int, width: int = 256) -> None:
        super().__init__()
        self.arguments = {"in_channels": in_channels, "width": width}
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

    def forward(self, features: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(features)

    def stages(self, features: torch.Tensor, images: torch.Tensor | None = None) -> list:
        return [self.body(features)]


Decoder = SimpleDecoder | HiresDecoder
DECODERS: dict[str, type[nn.Module]] = {"simple": SimpleDecoder, "hires": HiresDecoder}


def decoder_arguments(
    name: str, in_channels: int, width: int, branch_width: int, feature_size: int, image_size: int
) -> dict[str, int]:
    """The constructor arguments of decoder `name` (a config's, checked there) for these sizes;
    `hires` takes as many ×2 steps as lead from the features' side to the image's."""
    arguments = {"in_channels": in_channels, "width": width}
    if name == "simple":
        return arguments
    steps = round(math.log2(image_size / feature_size)) if feature_size < image_size else 0
    if steps < 1 or feature_size << steps != image_size:
        raise ValueError(
            f"the hires decoder needs features at 1/2^k of the image; got {feature_size} px "
            f"features for {image_size} px images"
        )
    return {**arguments, "branch_width": branch_width, "steps": steps}


def seeded_decoder(name: str, arguments: dict[str, int], seed: int) -> Decoder:
    """`torch.manual_seed(seed); DECODERS[name](**arguments)`, the same draws in the same order,
    without touching the global RNG, which another thread's fit may be using."""
    with torch.device("meta"):
        decoder = DECODERS[name](**arguments)
    decoder.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, nn.modules.conv._ConvNd):  # as `_ConvNd.reset_parameters`
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1 / math.sqrt(module.weight[0].numel())  # fan_in, for both kinds
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()  # ones, zeros and fresh running statistics
    return decoder


def decoder_record(decoder: Decoder) -> dict[str, Any]:
    """Name, constructor arguments and CPU weights: what `decoder_from_record` takes; with
    `in_channels` and `width` at the top level too, where older polypseg reads them."""
    state = {key: value.cpu() for key, value in decoder.state_dict().items()}
    return {
        "name": decoder.name,
        "arguments": dict(decoder.arguments),
        "in_channels": decoder.arguments["in_channels"],
        "width": decoder.arguments["width"],
        "state": state,
    }


def decoder_from_record(record: dict[str, Any]) -> Decoder:
    """The decoder `decoder_record` saved; a record without a name is a `simple` one."""
    name = record.get("name", "simple")
    arguments = record.get("arguments") or {
        "in_channels": record["in_channels"],
        "width": record["width"],
    }
    decoder = DECODERS[name](**arguments)
    decoder.load_state_dict(record["state"])
    return decoder.eval()
