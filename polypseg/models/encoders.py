"""Frozen image encoders: one registry of named builders, each giving a `FrozenEncoder`.

As segment-anything's `sam_model_registry`, adding a variant is one line. The tiny variants are
built from the same classes with small sizes and random weights only, for the tests and the
offline demo, and must be asked for explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from polypseg.config import EncoderConfig
from polypseg.errors import PolypsegError, WeightsUnavailable, first_line
from polypseg.models.checkpoints import load_state_dict, resolve_sam_checkpoint
from polypseg.models.frozen import FrozenEncoder, Preprocessing

log = logging.getLogger(__name__)

SAM_MEAN = (123.675, 116.28, 103.53)  # segment_anything.modeling.Sam's pixel_mean / pixel_std
SAM_STD = (58.395, 57.12, 57.375)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class EncoderEntry:
    build: Callable[[], nn.Module]  # the architecture, randomly initialised
    out_channels: int
    preprocessing: Preprocessing
    # Loads pretrained weights into a built backbone given `encoder.checkpoint`; raises
    # `WeightsUnavailable` when they cannot be had. None: a random-weights-only test variant.
    load_pretrained: Callable[[nn.Module, str], None] | None


def _sam_vit(
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
    img_size: int = 1024,
    out_chans: int = 256,
    window_size: int = 14,
) -> nn.Module:
    from segment_anything.modeling import ImageEncoderViT

    from polypseg.models.sam_attention import use_sdpa

    encoder = ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        out_chans=out_chans,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=global_attn_indexes,
    )
    return use_sdpa(encoder)


def _load_sam(variant: str, backbone: nn.Module, checkpoint: str) -> None:
    path = resolve_sam_checkpoint(variant, checkpoint)
    state = load_state_dict(path)
    prefix = "image_encoder."
    if any(key.startswith(prefix) for key in state):  # a full SAM checkpoint, as Meta ships it
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        backbone.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise PolypsegError(
            f"checkpoint {path} does not fit SAM {variant}'s image encoder "
            f"({first_line(err)}); use the official sam_{variant}_*.pth"
        ) from None


def _sam_entry(variant: str | None, *arch: object, size: int = 1024, **sizes: int) -> EncoderEntry:
    """SAM's ViT at input `size`; `variant` names its official checkpoint (None: random only)."""
    return EncoderEntry(
        build=partial(_sam_vit, *arch, img_size=size, **sizes),
        out_channels=sizes.get("out_chans", 256),
        preprocessing=Preprocessing(SAM_MEAN, SAM_STD, input_size=size),
        load_pretrained=partial(_load_sam, variant) if variant else None,
    )


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to `layer4` (stride 32), without pooling and classifier."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))


def _resnet(depths: tuple[int, int, int, int], bottleneck: bool) -> nn.Module:
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    return ResNetTrunk(ResNet(Bottleneck if bottleneck else BasicBlock, list(depths)))


def _load_resnet50(backbone: nn.Module, checkpoint: str) -> None:
    from torchvision.models import ResNet50_Weights

    if checkpoint not in ("auto", ""):
        state = load_state_dict(Path(checkpoint))
    else:
        try:
            state = ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=True)
        except Exception as err:  # urllib raises URLError, OSError, HTTPError...
            raise WeightsUnavailable(
                f"cannot download torchvision's ResNet-50 IMAGENET1K_V2 weights "
                f"({type(err).__name__}); put resnet50-11ad3fa6.pth in $TORCH_HOME/hub/checkpoints"
            ) from None
    backbone.resnet.load_state_dict(state, assign=True)


ENCODERS: dict[str, EncoderEntry] = {
    "sam_vit_b": _sam_entry("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_l": _sam_entry("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_h": _sam_entry("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    "resnet50": EncoderEntry(
        build=partial(_resnet, (3, 4, 6, 3), True),
        out_channels=2048,
        preprocessing=Preprocessing(IMAGENET_MEAN, IMAGENET_STD),
        load_pretrained=_load_resnet50,
    ),
    # Test and demo variants: the same classes, small sizes, random weights only.
    "sam_tiny": _sam_entry(None, 64, 2, 2, (1,), size=256, out_chans=64, window_size=4),
    # SAM ViT-B's architecture at 256 px (16×16 tokens): real encoder cost at benchmark scale.
    "sam_vit_b_256": _sam_entry(None, 768, 12, 12, (2, 5, 8, 11), size=256),
    "resnet_tiny": EncoderEntry(
        build=partial(_resnet, (1, 1, 1, 1), False),
        out_channels=512,
        preprocessing=Preprocessing(IMAGENET_MEAN, IMAGENET_STD),
        load_pretrained=None,
    ),
}


def _entry(name: str) -> EncoderEntry:
    if name not in ENCODERS:
        raise PolypsegError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def encoder_architecture(name: str) -> FrozenEncoder:
    """The named encoder with random weights (seed 0); never downloads."""
    entry = _entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = entry.build()
    return FrozenEncoder(name, backbone, entry.out_channels, entry.preprocessing)


def _pretrained(name: str, checkpoint: str) -> FrozenEncoder:
    entry = _entry(name)
    if entry.load_pretrained is None:
        raise WeightsUnavailable(f"{name} is a test variant without pretrained weights")
    # Built without storage ("meta") and given the checkpoint's tensors (`assign=True`): a random
    # initialisation that the checkpoint overwrites would slow every start for nothing.
    with torch.device("meta"):
        backbone = entry.build()
    entry.load_pretrained(backbone, checkpoint)
    return FrozenEncoder(name, backbone, entry.out_channels, entry.preprocessing)


def build_encoder(config: EncoderConfig) -> tuple[FrozenEncoder, str | None]:
    encoder, reason = _choose(config)
    encoder.precision, encoder.compiled = config.precision, config.compile
    return encoder, reason


def _choose(config: EncoderConfig) -> tuple[FrozenEncoder, str | None]:
    """The configured encoder, else `config.fallback` when weights are unavailable (a corrupt
    checkpoint is an error, never a silent fallback), else random weights when allowed; and
    why one applied."""
    if _entry(config.name).load_pretrained is None:
        if not config.allow_random_weights:
            raise WeightsUnavailable(
                f"encoder {config.name} is a test variant with random weights only; set "
                "encoder.allow_random_weights = true to use it"
            )
        return encoder_architecture(config.name), f"{config.name} has random weights (test variant)"
    reasons: list[str] = []
    candidates = [(config.name, config.checkpoint)]
    if config.fallback and config.fallback != config.name:
        candidates.append((config.fallback, "auto"))
    for name, checkpoint in candidates:
        try:
            encoder = _pretrained(name, checkpoint)
        except WeightsUnavailable as err:
            reasons.append(f"{name}: {err}")
            continue
        if reasons:
            log.warning("using encoder %s instead of %s: %s", name, config.name, "; ".join(reasons))
        return encoder, "; ".join(reasons) or None
    if not config.allow_random_weights:
        raise WeightsUnavailable(
            "no pretrained encoder weights available (" + "; ".join(reasons) + "); provide a "
            "checkpoint, or set encoder.allow_random_weights = true for a demo"
        )
    name = candidates[-1][0]
    reason = "; ".join(reasons) + f"; using {name} with random weights (allow_random_weights)"
    log.warning("encoder %s: %s", name, reason)
    return encoder_architecture(name), reason
