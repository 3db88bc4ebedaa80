"""SAM's ViT attention through torch's fused `scaled_dot_product_attention` (SDPA).

segment_anything's `Attention` writes the attention out by hand: `softmax(q·kᵀ·scale + rel) @ v`,
with the full attention matrix materialised in the input's dtype and the softmax as a separate
kernel. `SDPAttention` computes the same function with `F.scaled_dot_product_attention`, which
runs a fused kernel (flash or memory-efficient on CUDA, a fused one on CPU): the decomposed
relative-position term of MViTv2 (`rel`, which depends on the query) becomes SDPA's additive
`attn_mask`. It holds the very same parameter objects under the same names (`qkv`, `proj`,
`rel_pos_h`, `rel_pos_w`), so a swapped encoder's `state_dict`, its checkpoints and its
`weights_digest` are unchanged. `use_sdpa` swaps every block of an `ImageEncoderViT` in place;
the tests check the swapped encoder against the reference one within `SDPA_TOLERANCE`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, get_rel_pos
from torch import nn

# Largest absolute difference allowed between the SDPA encoder's features and the reference
# `ImageEncoderViT`'s, both in float32: the two differ only in summation order (measured: ~1e-6
# on unit-scale features).
SDPA_TOLERANCE = 1e-4


def rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """The decomposed relative-position term as an additive mask: B×heads×HW×HW.

    `q` is B×heads×HW×C (unscaled, as the reference uses it). The term for query (i, j) and key
    (k, l) is `q_ij·Rh[i−k] + q_ij·Rw[j−l]`: the two einsums of segment_anything's
    `add_decomposed_rel_pos`, broadcast into the full matrix SDPA takes.
    """
    h, w = size
    batch, heads, _, channels = q.shape
    r_q = q.reshape(batch, heads, h, w, channels)
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(batch, heads, h * w, h * w)


class SDPAttention(nn.Module):
    """segment_anything's `Attention`, same parameters, computed by SDPA: B×H×W×dim → B×H×W×dim."""

    def __init__(self, attention: Attention) -> None:
        super().__init__()
        self.num_heads = attention.num_heads
        self.scale = attention.scale
        self.qkv = attention.qkv
        self.proj = attention.proj
        self.use_rel_pos = attention.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h = attention.rel_pos_h
            self.rel_pos_w = attention.rel_pos_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(batch, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B×heads×HW×C
        mask = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = out.view(batch, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, h, w, -1))


def use_sdpa(encoder: ImageEncoderViT) -> ImageEncoderViT:
    """Swap every block's attention of `encoder` for `SDPAttention`, in place; returns it."""
    for block in encoder.blocks:
        if isinstance(block.attn, Attention):
            block.attn = SDPAttention(block.attn)
    return encoder
