"""Specification of the BCE + soft Dice training loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from polypseg.training.losses import bce_dice_loss


def _one_polyp_pixel() -> tuple[torch.Tensor, torch.Tensor]:
    # 1×1×2×2, every logit 0 (p = 0.5), one foreground pixel: BCE = ln 2 per pixel and
    # soft Dice = (2·0.5 + 1) / (2 + 1 + 1) = 0.5, both easy to check by hand.
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    return logits, target


def test_zero_dice_weight_is_pure_bce():
    logits, target = _one_polyp_pixel()
    assert bce_dice_loss(logits, target, 0.0).item() == pytest.approx(math.log(2.0))


def test_zero_dice_weight_matches_torch_bce_on_random_maps():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8) * 3
    target = (torch.rand(3, 1, 8, 8) > 0.7).float()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(bce_dice_loss(logits, target, 0.0), expected)


def test_unit_dice_weight_is_soft_dice_loss():
    logits, target = _one_polyp_pixel()
    assert bce_dice_loss(logits, target, 1.0).item() == pytest.approx(0.5)


def test_soft_dice_is_computed_per_image_then_averaged():
    # Image 0: p = 0.5 on one foreground pixel of four → Dice 0.5 (as above).
    # Image 1: empty target, every logit −1e4 → p = 0 → Dice (0 + 1) / (0 + 0 + 1) = 1.
    logits, target = _one_polyp_pixel()
    logits = torch.cat([logits, torch.full_like(logits, -1e4)])
    target = torch.cat([target, torch.zeros_like(target)])
    assert bce_dice_loss(logits, target, 1.0).item() == pytest.approx(1.0 - (0.5 + 1.0) / 2)


def test_mixed_weight_interpolates_bce_and_dice():
    logits, target = _one_polyp_pixel()
    expected = 0.3 * math.log(2.0) + 0.7 * 0.5
    assert bce_dice_loss(logits, target, 0.7).item() == pytest.approx(expected)


def test_loss_is_finite_on_extreme_logits():
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    right = torch.tensor([[[[1e4, -1e4], [1e4, -1e4]]]])
    wrong = -right
    assert bce_dice_loss(right, target, 0.5).item() == pytest.approx(0.0, abs=1e-6)
    loss = bce_dice_loss(wrong, target, 0.5)
    assert torch.isfinite(loss)
    assert loss.item() > 1000  # BCE of a confident mistake is about |logit|


def test_gradient_flows_to_logits():
    logits, target = _one_polyp_pixel()
    logits.requires_grad_(True)
    bce_dice_loss(logits, target, 0.5).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    # Raising the logit of the foreground pixel lowers the loss; raising a background one raises it.
    assert logits.grad[0, 0, 0, 0] < 0
    assert (logits.grad[0, 0].flatten()[1:] > 0).all()


def test_gradient_is_finite_on_extreme_logits():
    logits = torch.tensor([[[[1e4, -1e4], [-1e4, 1e4]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    bce_dice_loss(logits, target, 0.5).backward()
    assert torch.isfinite(logits.grad).all()


def test_loss_under_bf16_autocast_is_float32_and_matches_full_precision():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 32, 32)
    target = (torch.rand(2, 1, 32, 32) > 0.8).float()
    reference = bce_dice_loss(logits, target, 0.5)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = bce_dice_loss(logits.bfloat16(), target, 0.5)
    assert loss.dtype == torch.float32
    # The only error left is bf16's rounding of the logits themselves.
    assert loss.item() == pytest.approx(reference.item(), rel=1e-2)


def test_mismatched_shapes_are_rejected():  # by torch's BCE, before any broadcasting
    with pytest.raises(ValueError, match="same as input size"):
        bce_dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), 0.5)
