"""SAM's ViT attention through torch's fused `scaled_dot_product_attention` (SDPA), bias folded.

segment_anything's `Attention` materialises `softmax(q·kᵀ·scale + rel) @ v` by hand. Here the
decomposed relative-position term, `rel[ij, kl] = q_ij·Rh[i−k] + q_ij·Rw[j−l]`, is folded into
the dot product (`fold_rel_pos`), so `q'·k' = scale·q·k + rel` exactly: no B×heads×HW×HW bias
is built (384 MiB per image per global block of ViT-B in bf16), and the flash kernels, which take
no float mask, stay eligible. `SDPAttention` holds the very same parameters under the same names,
so state dicts, checkpoints and `weights_digest` are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT
from torch import nn


def relative_table(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """segment_anything's `get_rel_pos(size, size, rel_pos)`, indices on the table's device (its
    CPU `arange` is a blocking copy on CUDA twice per block).

    `rel_pos` is L×C (resized linearly to 2·size − 1 rows when L differs, as the reference
    does); returns size×size×C, entry [i, k] being the embedding of the offset i − k.
    """
    rows = 2 * size - 1
    if rel_pos.shape[0] != rows:
        rel_pos = F.interpolate(rel_pos.T[None], size=rows, mode="linear")[0].T
    coords = torch.arange(size, device=rel_pos.device)
    return rel_pos[coords[:, None] - coords[None, :] + (size - 1)]


# What the folded term needs for one grid, dtype and device: the tables Rh (h×h×C) and Rw
# (w×w×C), and the keys' indicators HW×(h + w + pad) (one-hot row, one-hot column, zeros).
RelativeTerms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def relative_terms(
    rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int], dtype: torch.dtype
) -> RelativeTerms:
    """An h×w grid's `RelativeTerms`, padded so that the folded head dim (C + h + w + pad) is a
    multiple of 8, as the fused kernels prefer."""
    h, w = size
    device = rel_pos_h.device
    pad = -(rel_pos_h.shape[1] + h + w) % 8
    rows = torch.eye(h, dtype=dtype, device=device).repeat_interleave(w, dim=0)  # token t: t // w
    cols = torch.eye(w, dtype=dtype, device=device).repeat(h, 1)  # token t: t % w
    padding = torch.zeros(h * w, pad, dtype=dtype, device=device)
    tables = (relative_table(h, rel_pos_h).to(dtype), relative_table(w, rel_pos_w).to(dtype))
    return *tables, torch.cat([rows, cols, padding], dim=1)


def fold_rel_pos(
    q: torch.Tensor, k: torch.Tensor, terms: RelativeTerms, size: tuple[int, int], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q', k') with `q'·k' = scale·q·k + q·Rh[i−k] + q·Rw[j−l]`, from B×heads×HW×C `q`, `k`:
    q' = [scale·q, rel_h, rel_w, 0] (segment_anything's two einsums, with the unscaled q) and
    k' = [k, row, column, 0], whose one-hot indicators pick entries k of rel_h and l of rel_w."""
    (h, w), (rh, rw, keys) = size, terms
    batch, heads, tokens, _ = q.shape
    r_q = q.reshape(batch, heads, h, w, -1)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).reshape(batch, heads, tokens, h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).reshape(batch, heads, tokens, w)
    pad = q.new_zeros(batch, heads, tokens, keys.shape[1] - h - w)
    q_folded = torch.cat([q * scale, rel_h, rel_w, pad], -1)
    return q_folded, torch.cat([k, keys.expand(batch, heads, tokens, -1)], dim=-1)


def _stamp(tensor: torch.Tensor) -> tuple[int, int]:
    # Inference tensors (a compute copy made under inference mode) have no version counter.
    return tensor.data_ptr(), 0 if tensor.is_inference() else tensor._version


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
        # The frozen weights' relative terms, by grid, dtype, device and the tables' storage and
        # version; not state, so not in state_dict. Loading or moving the weights drops them.
        self._terms: dict[tuple, RelativeTerms] = {}
        self.register_load_state_dict_pre_hook(lambda module, *_: setattr(module, "_terms", {}))

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        self._terms = {}
        return super()._apply(fn, recurse)

    def relative_terms(self, size: tuple[int, int], dtype: torch.dtype) -> RelativeTerms:
        """This block's `RelativeTerms`, built once and reused while the weights stay frozen."""
        tables = (self.rel_pos_h, self.rel_pos_w)
        # Trained tables must stay differentiable; traced ones (torch.export, ONNX) have no storage.
        trained = torch.is_grad_enabled() and any(t.requires_grad for t in tables)
        if trained or torch.compiler.is_compiling():
            return relative_terms(*tables, size, dtype)
        key = (size, dtype, self.rel_pos_h.device, *map(_stamp, tables))
        if key not in self._terms:
            # One entry: a block always sees one grid (its window, or the image's tokens).
            self._terms = {key: relative_terms(*tables, size, dtype)}
        return self._terms[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(batch, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B×heads×HW×C
        scale = self.scale
        if self.use_rel_pos:
            q, k = fold_rel_pos(q, k, self.relative_terms((h, w), q.dtype), (h, w), scale)
            scale = 1.0
        channels = v.shape[-1]
        if q.shape[-1] != channels:  # flash kernels (CUDA, CPU) need equal head dims: zero columns
            v = F.pad(v, (0, q.shape[-1] - channels))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :channels]
        out = out.reshape(batch, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, h, w, -1))


def use_sdpa(encoder: ImageEncoderViT) -> ImageEncoderViT:
    """Swap every block's attention of `encoder` for `SDPAttention`, in place; returns it."""
    for block in encoder.blocks:
        if isinstance(block.attn, Attention):
            block.attn = SDPAttention(block.attn)
    return encoder
