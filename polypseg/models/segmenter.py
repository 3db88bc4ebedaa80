"""The segmenter: a frozen encoder and a trainable decoder, with pre- and post-processing.

Training runs the decoder on cached features; prediction runs the whole chain on images of any
size and brings the probabilities back to each image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polypseg.models.decoder import Decoder
from polypseg.models.encoders import FrozenEncoder
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
