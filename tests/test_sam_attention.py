"""SAM's attention through SDPA and the encoder in bf16: both stay within their stated tolerance
of segment_anything's reference `ImageEncoderViT` in fp32, on random weights."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

from polypseg.models import sam_attention
from polypseg.models.encoders import _sam_vit, encoder_architecture
from polypseg.models.frozen import compute_copy, compute_dtype, state_digest
from polypseg.models.sam_attention import SDPAttention, relative_table, use_sdpa

# The SDPA encoder and the reference differ only in summation order (measured: ~1e-6 on
# unit-scale features, both in float32).
SDPA_TOLERANCE = 1e-4

# bf16 keeps 8 significant bits. Measured on SAM ViT-B's architecture with random weights: a
# cosine similarity of 0.9998-0.9999 per image and a largest error of 1.3 % (256 px) to 2.1 %
# (128 px, random relative positions) of the largest feature.
BF16_MIN_COSINE = 0.999
BF16_MAX_ERROR = 0.05  # largest |bf16 − fp32|, relative to the largest |fp32| feature


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    """(lowest per-image cosine similarity, largest error relative to max |reference|)."""
    ref, cand = reference.float().flatten(1), candidate.float().flatten(1)
    cosine = torch.nn.functional.cosine_similarity(ref, cand, dim=1).min().item()
    return cosine, ((ref - cand).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _reference(embed_dim: int, depth: int, heads: int, global_at: tuple[int, ...], size: int):
    """A reference encoder with random weights, its relative positions made non-zero (SAM
    initialises them to zero, which would leave the relative-position term untested)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = _sam_vit(
            embed_dim, depth, heads, global_at, img_size=size, out_chans=32, window_size=4
        )
        for name, parameter in encoder.named_parameters():
            if "rel_pos" in name:
                parameter.data.normal_(0, 0.5)
    return encoder.eval()


def _sdpa_twin(reference: torch.nn.Module) -> torch.nn.Module:
    return use_sdpa(copy.deepcopy(reference))


def _inputs(n: int, size: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("size", [96, 112])  # 112 px: 7×7 tokens, windows padded to 8×8
def test_sdpa_encoder_matches_the_reference_image_encoder(size: int) -> None:
    reference = _reference(48, 2, 3, (1,), size)  # block 0 windowed, block 1 global
    sdpa = _sdpa_twin(reference)
    assert all(isinstance(block.attn, SDPAttention) for block in sdpa.blocks)
    x = _inputs(2, size)
    with torch.inference_mode():
        expected, actual = reference(x), sdpa(x)
    assert (expected - actual).abs().max().item() <= SDPA_TOLERANCE
    assert expected.abs().max().item() > 0.5  # features of unit scale, not all near zero


def test_sdpa_attention_matches_the_reference_attention_with_rel_pos() -> None:
    torch.manual_seed(0)
    attention = Attention(32, num_heads=4, use_rel_pos=True, input_size=(5, 6)).eval()
    attention.rel_pos_h.data.normal_()
    attention.rel_pos_w.data.normal_()
    x = torch.randn(3, 5, 6, 32)
    with torch.inference_mode():
        torch.testing.assert_close(SDPAttention(attention)(x), attention(x), atol=1e-5, rtol=1e-5)


def test_sdpa_keeps_the_state_dict_so_checkpoints_still_load() -> None:
    reference = _reference(48, 2, 3, (1,), 64)
    sdpa = _sdpa_twin(reference)
    assert list(sdpa.state_dict()) == list(reference.state_dict())
    fresh = use_sdpa(_sam_vit(48, 2, 3, (1,), img_size=64, out_chans=32, window_size=4))
    fresh.load_state_dict(reference.state_dict(), strict=True)
    x = _inputs(1, 64)
    with torch.inference_mode():
        assert (fresh(x) - reference(x)).abs().max().item() <= SDPA_TOLERANCE


@pytest.mark.parametrize(("size", "rows"), [(5, 9), (7, 9)])  # (7, 9): resized, as SAM does
def test_relative_table_equals_segment_anythings_get_rel_pos(size: int, rows: int) -> None:
    table = torch.randn(rows, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(relative_table(size, table), get_rel_pos(size, size, table))


def test_relative_terms_are_built_once_per_block_and_reused(monkeypatch) -> None:
    built = []
    real = sam_attention.relative_terms

    def counting(*args):
        built.append(args[2])  # the token grid
        return real(*args)

    monkeypatch.setattr(sam_attention, "relative_terms", counting)
    encoder = _sdpa_twin(_reference(48, 2, 3, (1,), 64))  # one windowed, one global block
    x = _inputs(2, 64)
    with torch.inference_mode():
        first = encoder(x)
        assert sorted(built) == [(4, 4), (4, 4)]  # each block's own grid: windows 4×4, image 4×4
        for _ in range(3):
            torch.testing.assert_close(encoder(x), first, atol=0, rtol=0)
    assert len(built) == 2  # three more forwards, no rebuild


def test_new_weights_rebuild_the_relative_terms() -> None:
    reference = _reference(48, 2, 3, (1,), 64)
    sdpa = _sdpa_twin(reference)
    x = _inputs(1, 64)
    with torch.inference_mode():
        sdpa(x)  # terms built from the old tables
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "rel_pos" in name:
                parameter.normal_(0, 0.5)
    sdpa.load_state_dict(reference.state_dict())
    with torch.inference_mode():
        assert (sdpa(x) - reference(x)).abs().max().item() <= SDPA_TOLERANCE


def test_folded_attention_passes_no_mask_and_a_padded_head_dim(monkeypatch) -> None:
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        calls.append((q.shape[-1], k.shape[-1], v.shape[-1], kwargs.get("attn_mask")))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(sam_attention.F, "scaled_dot_product_attention", recording)
    encoder = _sdpa_twin(_reference(48, 2, 3, (1,), 96))  # head dim 16, grids 4×4 and 6×6
    with torch.inference_mode():
        encoder(_inputs(1, 96))
    assert [(q, k, v) for q, k, v, _ in calls] == [(24, 24, 24), (32, 32, 32)]  # 16+8, 16+12→32
    assert all(mask is None for *_, mask in calls)


def test_bf16_sdpa_vit_b_stays_within_the_stated_tolerance_of_fp32_reference() -> None:
    # SAM ViT-B's real depth and width (12 blocks, 768 wide, 4 global), at 128 px to stay fast.
    reference = _reference(768, 12, 12, (2, 5, 8, 11), 128)
    bf16 = compute_copy(_sdpa_twin(reference), torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())  # weights, not autocast
    x = _inputs(2, 128)
    with torch.inference_mode():
        expected, actual = reference(x), bf16(x.bfloat16())
    cosine, error = agreement(expected, actual)
    assert cosine >= BF16_MIN_COSINE and error <= BF16_MAX_ERROR, (cosine, error)
    assert error > 0  # it really ran in bf16


def test_agreement_detects_features_that_drift_too_far() -> None:
    reference = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    cosine, error = agreement(reference, reference + 0.5 * torch.randn_like(reference))
    assert cosine < BF16_MIN_COSINE and error > BF16_MAX_ERROR


def test_auto_precision_is_fp32_off_cuda_and_explicit_choices_hold() -> None:
    cpu = torch.device("cpu")
    assert compute_dtype("auto", cpu) == torch.float32
    assert compute_dtype("bf16", cpu) == torch.bfloat16
    assert compute_dtype("fp32", torch.device("cuda")) == torch.float32


@pytest.mark.parametrize(
    ("capability", "dtype"), [((7, 5), torch.float32), ((8, 0), torch.bfloat16)]
)
def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(monkeypatch, capability, dtype):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda d: asked.append(d) or capability
    )
    assert compute_dtype("auto", torch.device("cuda", 1)) == dtype
    assert asked == [torch.device("cuda", 1)]  # the encoder's own GPU, not the current one


def test_unknown_precision_is_a_config_error_naming_the_choices() -> None:
    from polypseg.config import load_config
    from polypseg.errors import PolypsegError

    with pytest.raises(PolypsegError, match="auto, fp32, bf16"):
        load_config(None, {"encoder.precision": "fp8"})


def test_compute_copy_leaves_the_fp32_master_untouched() -> None:
    master = torch.nn.Linear(4, 4)
    before = master.weight.detach().clone()
    copy_ = compute_copy(master, torch.bfloat16)
    assert master.weight.dtype == torch.float32 and torch.equal(master.weight, before)
    assert copy_.weight.dtype == torch.bfloat16 and not copy_.weight.requires_grad


def test_frozen_encoder_in_bf16_keeps_fp32_master_weights_and_tolerance() -> None:
    encoder = encoder_architecture("sam_tiny")
    assert all(isinstance(block.attn, SDPAttention) for block in encoder.backbone.blocks)
    digest = encoder.weights_digest
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(2))
    fp32 = encoder(images)
    encoder.precision = "bf16"
    bf16 = encoder(images)
    cosine, error = agreement(fp32, bf16)
    assert cosine >= BF16_MIN_COSINE and 0 < error <= BF16_MAX_ERROR, (cosine, error)
    assert bf16.dtype == torch.float32  # features leave the encoder as float32 whatever ran
    assert all(p.dtype == torch.float32 for p in encoder.state_dict().values())
    assert state_digest(encoder.backbone) == digest  # the bf16 copy is not part of the state


def test_compile_flag_runs_the_encoder_through_torch_compile(monkeypatch) -> None:
    # The real compilation takes ~30 s on 2 cores (checked by hand: same features to 4e-6);
    # here torch.compile's "eager" backend proves the plumbing in a second.
    compiled = []

    def eager_compile(module, **kwargs):
        compiled.append(module)
        return torch._dynamo.optimize("eager")(module)

    monkeypatch.setattr(torch, "compile", eager_compile)
    encoder = encoder_architecture("sam_tiny")
    images = torch.randint(0, 256, (1, 3, 64, 64), generator=torch.Generator().manual_seed(3))
    reference = encoder(images)
    encoder.compiled = True
    torch.testing.assert_close(encoder(images), reference, atol=1e-5, rtol=1e-5)
    encoder(images)
    assert len(compiled) == 1  # compiled once, reused
