"""The segmenter: a frozen encoder and a trainable decoder, with pre- and post-processing.

Training runs the decoder on cached features; prediction runs the whole chain on images of any
size and brings the probabilities back to each image's own size. `segmenter_state` and
`load_segmenter` are its file, as `decoder_record` is the decoder's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polypseg.models.decoder import Decoder, decoder_from_record, decoder_record
from polypseg.models.encoders import FrozenEncoder, encoder_architecture
from polypseg.transforms import resize_image


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """uint8 images B×3×S×S → logits B×1×S×S, S being `image_size`."""

    def __init__(self, encoder: FrozenEncoder, decoder: Decoder, image_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.image_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(images), images)
        return upsample_logits(logits, tuple(images.shape[-2:]))

    @torch.inference_mode()
    def predict_proba_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """N H×W×3 uint8 images of one size (a video's frames, or one image) → N×H×W float32
        polyp probabilities at that size, the encoder running on all N at once."""
        device = next(self.decoder.parameters()).device
        h, w = images[0].shape[:2]
        # The same resize as the training data's, so the decoder sees what it was trained on.
        x = torch.stack([resize_image(image, self.image_size) for image in images]).to(device)
        self.eval()
        logits = self.decoder(self.encoder(x), x).float()
        return torch.sigmoid(upsample_logits(logits, (h, w)))[:, 0].cpu().numpy()

    def predict_mask(self, image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """H×W×3 uint8 image → H×W uint8 mask of 0/1 at the image's own size."""
        return (self.predict_proba_batch([image])[0] >= threshold).astype(np.uint8)


FILE_FORMAT = 1  # of `segmenter.pt`, the registered model's one artifact
# `segmenter.pt`'s names for keys of the decoder's record (`decoder_record`); models logged before
# a key was recorded lack it, and `decoder_from_record` reads them as a `simple` decoder.
FILE_KEYS = {"name": "decoder", "arguments": "decoder_arguments", "state": "decoder_state"}


def segmenter_state(encoder: FrozenEncoder, decoder: Decoder, image_size: int) -> dict:
    """What `segmenter.pt` holds: plain tensors and numbers (`weights_only=True` loads it)."""
    return {
        "format": FILE_FORMAT,
        "encoder": encoder.name,
        # The precision its features were computed at for training and evaluation ("fp32" or
        # "bf16" once `prepare` ran): served the same way, whatever the serving GPU would pick.
        "precision": encoder.precision,
        "encoder_state": encoder.backbone.state_dict(),
        **{FILE_KEYS.get(key, key): value for key, value in decoder_record(decoder).items()},
        "image_size": image_size,
        "threshold": 0.5,
    }


def load_segmenter(path: str | Path, device: str = "cpu") -> tuple[Segmenter, float]:
    """The segmenter `segmenter_state` saved, rebuilt from the encoder and decoder registries
    (no network), and its threshold."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    encoder = encoder_architecture(state["encoder"])
    encoder.backbone.load_state_dict(state["encoder_state"])
    encoder.weights_digest = ""  # not needed for prediction; skip rehashing the weights
    encoder.precision = state.get("precision", "auto")  # models logged before it was recorded
    names = {file_key: key for key, file_key in FILE_KEYS.items()}
    decoder = decoder_from_record({names.get(key, key): value for key, value in state.items()})
    segmenter = Segmenter(encoder, decoder, state["image_size"]).to(device).eval()
    return segmenter, float(state["threshold"])
