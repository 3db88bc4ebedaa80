"""Encoders (registry, preprocessing, checkpoints, fallback, freezing) and the decoder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from polypseg.config import EncoderConfig
from polypseg.errors import PolypsegError, WeightsUnavailable
from polypseg.models.checkpoints import SAM_CHECKPOINTS
from polypseg.models.decoder import SimpleDecoder
from polypseg.models.encoders import (
    ENCODERS,
    _load_sam,
    _sam_vit,
    build_encoder,
    encoder_architecture,
)
from polypseg.models.segmenter import Segmenter


def _images(n: int, size: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


@pytest.mark.parametrize(
    ("name", "size", "shape"),
    [
        ("sam_tiny", 96, (64, 16, 16)),  # SAM preprocessing: longest side to 256, 16-px patches
        ("resnet_tiny", 128, (512, 4, 4)),
        ("resnet50", 64, (2048, 2, 2)),
    ],
)
def test_encoder_output_shapes(name: str, size: int, shape: tuple[int, ...]) -> None:
    encoder = encoder_architecture(name)
    features = encoder(_images(2, size))
    assert features.shape == (2, *shape) and encoder.out_channels == shape[0]
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


def test_sam_vit_b_gives_256x64x64_from_any_input_size() -> None:
    encoder = encoder_architecture("sam_vit_b")
    assert encoder(_images(1, 48)).shape == (1, 256, 64, 64)


def test_sam_preprocessing_resizes_the_longest_side_and_pads() -> None:
    encoder = encoder_architecture("sam_tiny")
    x = encoder.preprocess(torch.full((1, 3, 64, 128), 200, dtype=torch.uint8))
    assert x.shape == (1, 3, 256, 256)
    assert torch.all(x[:, :, 128:, :] == 0)  # padded below, as SAM pads
    assert torch.all(x[:, :, :128, :] != 0)


def test_unknown_encoder_lists_the_valid_names() -> None:
    with pytest.raises(PolypsegError, match="sam_vit_b, sam_vit_l"):
        encoder_architecture("vit_giant")


def test_random_architectures_are_deterministic() -> None:
    assert (
        encoder_architecture("sam_tiny").weights_digest
        == encoder_architecture("sam_tiny").weights_digest
    )
    assert (
        encoder_architecture("sam_tiny").weights_digest
        != encoder_architecture("resnet_tiny").weights_digest
    )


def test_test_variants_need_allow_random_weights() -> None:
    with pytest.raises(WeightsUnavailable, match="allow_random_weights"):
        build_encoder(EncoderConfig(name="sam_tiny", fallback=""))
    encoder, reason = build_encoder(EncoderConfig(name="sam_tiny", allow_random_weights=True))
    assert encoder.name == "sam_tiny" and "random" in reason


@pytest.fixture
def resnet50_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """torchvision's ResNet-50 weight file where torch hub looks first: no download happens."""
    from torchvision.models import resnet50

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = resnet50(weights=None).state_dict()
    target = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    return state


def test_missing_sam_checkpoint_falls_back_to_resnet50(
    resnet50_weights: dict, tmp_path: Path
) -> None:
    config = EncoderConfig(name="sam_vit_b", checkpoint=str(tmp_path / "missing.pth"))
    encoder, reason = build_encoder(config)
    assert encoder.name == "resnet50"
    assert "missing.pth not found" in reason
    loaded = encoder.backbone.resnet.state_dict()
    assert torch.equal(loaded["conv1.weight"], resnet50_weights["conv1.weight"])


def test_no_weights_at_all_is_a_clear_error_without_allow_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "TORCH_HOME", str(tmp_path / "torch")
    )  # empty: the download is attempted and fails
    import torch.hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    config = EncoderConfig(name="sam_vit_b", checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsUnavailable, match="allow_random_weights"):
        build_encoder(config)


def test_corrupt_checkpoint_of_official_size_is_rejected_by_md5(tmp_path: Path) -> None:
    fake = tmp_path / "sam_vit_b_01ec64.pth"
    with fake.open("wb") as handle:
        handle.truncate(SAM_CHECKPOINTS["vit_b"].size)
    config = EncoderConfig(name="sam_vit_b", checkpoint=str(fake))
    with pytest.raises(PolypsegError, match=f"{fake} is corrupt or truncated"):
        build_encoder(config)


def test_corrupt_auto_checkpoint_in_the_cache_is_rejected(isolated_cache: Path) -> None:
    cached = isolated_cache / "checkpoints" / SAM_CHECKPOINTS["vit_b"].file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(PolypsegError, match="corrupt or truncated"):
        build_encoder(EncoderConfig(name="sam_vit_b", checkpoint="auto"))


def test_unreadable_checkpoint_names_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "my_sam.pth"
    garbage.write_bytes(b"\x80\x02 this is not a torch file")
    with pytest.raises(PolypsegError, match="cannot read checkpoint .*my_sam.pth"):
        build_encoder(EncoderConfig(name="sam_vit_b", checkpoint=str(garbage)))


def _tiny_vit() -> torch.nn.Module:
    return _sam_vit(64, 2, 2, (1,), img_size=256, out_chans=64, window_size=4)


def test_full_sam_checkpoint_loads_its_image_encoder(tmp_path: Path) -> None:
    source = _tiny_vit()
    state = {f"image_encoder.{k}": v for k, v in source.state_dict().items()}
    state["mask_decoder.some.weight"] = torch.zeros(1)  # the rest of SAM is ignored
    path = tmp_path / "sam_small.pth"
    torch.save(state, path)
    target = _tiny_vit()
    torch.nn.init.zeros_(target.patch_embed.proj.weight)
    _load_sam("vit_b", target, str(path))
    assert torch.equal(target.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(PolypsegError, match="does not fit SAM vit_b"):
        _load_sam("vit_b", _tiny_vit(), str(path))


def test_every_registry_entry_builds() -> None:
    for name, entry in ENCODERS.items():
        if name.startswith("sam_vit_") and name != "sam_vit_b":
            continue  # vit_l and vit_h take several seconds to initialise; vit_b is covered
        assert encoder_architecture(name).out_channels == entry.out_channels


def test_decoder_doubles_resolution_to_one_logit_channel() -> None:
    decoder = SimpleDecoder(in_channels=64, width=32)
    assert decoder(torch.randn(2, 64, 16, 16)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("name", ["resnet_tiny", "sam_tiny"])
def test_frozen_encoder_is_bit_identical_after_training(name: str) -> None:
    encoder = encoder_architecture(name)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    segmenter = Segmenter(encoder, SimpleDecoder(encoder.out_channels, 16), image_size=64)
    segmenter.train()  # must not wake the encoder's BatchNorm layers
    assert not encoder.training
    assert all(not p.requires_grad for p in encoder.parameters())
    optimiser = torch.optim.AdamW([p for p in segmenter.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        logits = segmenter(_images(4, 64))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert encoder.images_encoded == 8


def test_predict_mask_returns_the_original_size() -> None:
    encoder = encoder_architecture("resnet_tiny")
    segmenter = Segmenter(encoder, SimpleDecoder(encoder.out_channels, 16), image_size=64)
    image = _images(1, 64)[0].permute(1, 2, 0).numpy()[:50, :37]
    mask = segmenter.predict_mask(image.copy())
    assert mask.shape == (50, 37) and set(mask.ravel().tolist()) <= {0, 1}


def test_a_checkpoints_md5_is_read_again_only_when_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polypseg.models import checkpoints

    reads = []
    real = checkpoints.file_digest
    monkeypatch.setattr(checkpoints, "file_digest", lambda p, a: reads.append(p) or real(p, a))
    path = tmp_path / "weights.pth"
    path.write_bytes(b"first")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(an_hour_ago, an_hour_ago))  # a checkpoint downloaded a while ago
    first = checkpoints.remembered_md5(path)
    assert checkpoints.remembered_md5(path) == first and len(reads) == 1
    path.write_bytes(b"other")  # same size, new content: mtime and ctime move
    assert checkpoints.remembered_md5(path) != first and len(reads) == 2
    assert checkpoints.remembered_md5(path) != first and len(reads) == 3  # too fresh to trust
