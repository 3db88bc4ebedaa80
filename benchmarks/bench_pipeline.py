"""Benchmark: the whole path, from JPEG files to trials, against the encoder's own forward pass.

One run, one device, one JSON line:
- `encoder_ms_per_image`: the frozen encoder's forward alone (`FrozenEncoder.__call__`, same
  batch size, images already decoded and in memory, after one warm-up batch);
- `feature_pass_ms_per_image`: the project's cold cache build as `prepare` runs it on a miss
  (every file decoded once to check it, then `FeatureCache.get`: hashing the files, JPEG decode
  and resize in DataLoader workers, encoding, writing), per image, with the encoder built
  beforehand as `prepare` builds it;
- `cache_hit_s`: `prepare` of the same data again: listing (headers only), split, encoder build
  (most of it: a random ViT-B's initialisation and weights digest), key, the entry's check and
  mapping;
  `cache_hit_first_s` is the first such `prepare` in the process, which also pays one-time
  imports (segment-anything with torchvision, kagglehub...), the same whatever the data; and
  `cache_lookup_s` is the feature cache's own share (key and check), which does not grow with
  the features' size;
- `train_ms_per_image`, `val_ms_per_image`: a decoder's epochs over the cached features (the
  median of the logged `epoch_train_s` / `epoch_val_s`, per image, first epoch left out);
  `train_ms_per_image_by_decoder`: the same for each registered decoder (`simple`, `hires`);
- `cache_bytes_per_image_by_augment`: the feature cache's bytes per training image (features
  and masks of every entry it reads) and encoder passes per training image, for `data.augment`
  none, ["hflip"], ["hflip", "vflip", "rot90"] (the union `studies/recipe_search.toml` builds);
- `trials_per_hour`: a small Optuna study through `tune` (MLflow logging included), from the
  trials' own durations; `study_wall_s` is the whole call, registration included;
- `gpu_busy`: the mean utilisation of the benchmark's own GPU (`--device`), sampled through
  NVML during the feature pass and the study; null off CUDA, and on CUDA without NVML the
  reason as a string (`pip install -e .[gpu]` installs `nvidia-ml-py`); `device`.

Its defaults (16 synthetic images, SAM ViT-B's architecture at 256 px, random weights) finish
in under 3 minutes on 2 idle CPU cores. The GPU form is `--images 1000 --encoder sam_vit_b`.

    python benchmarks/bench_pipeline.py [--images 16] [--encoder sam_vit_b_256] [--size 256]
        [--batch 8] [--trials 3] [--epochs 4] [--width 64] [--device auto] [--precision auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from polypseg.config import (
    Config,
    DataConfig,
    DecoderConfig,
    EncoderConfig,
    TrackingConfig,
    TrainConfig,
)
from polypseg.data.dataset import KvasirDataset
from polypseg.data.pairs import check_decoding, list_pairs
from polypseg.data.synthetic import make_synthetic
from polypseg.features.cache import FeatureCache
from polypseg.features.prepare import Prepared, prepare, resolve_device
from polypseg.models.encoders import ENCODERS, ResNetTrunk, build_encoder, encoder_architecture
from polypseg.training.fit import fit
from polypseg.tuning.spec import load_spec
from polypseg.tuning.study import tune

ROOT = Path(__file__).resolve().parent.parent


class GpuSampler:
    """Samples `device`'s utilisation every 0.1 s in a thread while active (CUDA with NVML)."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[float] = []
        self.device = device
        self.enabled = device.type == "cuda"
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.samples.append(torch.cuda.utilization(self.device) / 100)
            except Exception as err:  # no NVML (nvidia-ml-py), or it cannot see the device
                self.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                return

    def __enter__(self) -> GpuSampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def busy(self) -> float | str | None:
        """The mean utilisation (0-1); why there is none, on CUDA; None off CUDA."""
        if not self.enabled:
            return None
        if self.error is not None:
            return f"unavailable ({self.error}); pip install -e .[gpu]"
        return round(statistics.fmean(self.samples), 3) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_forward_ms(config: Config, root: Path, device: torch.device) -> float:
    """ms per image of the encoder's forward alone, over the same images and batch size."""
    encoder, _ = build_encoder(config.encoder)
    encoder.to(device)
    data = KvasirDataset(list_pairs(root), config.data.image_size)
    size = config.encoder.batch_size
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    batches = [images[i : i + size].to(device) for i in range(0, len(images), size)]
    encoder(batches[0])  # warm-up: kernel selection, allocator
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        encoder(batch)
    _sync(device)
    return (time.perf_counter() - start) / len(images) * 1000


def feature_pass_ms(config: Config, root: Path, device: torch.device) -> float:
    """ms per image of the cold cache build, as `prepare` runs it."""
    encoder, _ = build_encoder(config.encoder)
    pairs = list_pairs(root, decode=False)
    start = time.perf_counter()
    FeatureCache().get(
        encoder,
        pairs,
        config.data.image_size,
        device,
        batch_size=config.encoder.batch_size,
        progress=False,
        before_build=lambda: check_decoding(root, pairs),
    )
    return (time.perf_counter() - start) / len(pairs) * 1000


def cache_lookup_s(prepared: Prepared, config: Config) -> float:
    """Seconds the feature cache alone takes on a hit: the key (every file hashed) and the check."""
    start = time.perf_counter()
    FeatureCache().get(
        prepared.encoder, prepared.pairs, config.data.image_size, prepared.device, progress=False
    )
    return time.perf_counter() - start


def epoch_ms(
    prepared: Prepared, config: Config, epochs: int, decoder: str = "simple"
) -> tuple[float, float]:
    """(train, val) ms per image: medians of the per-epoch timings `fit` reports."""
    pixels = decoder == "hires"
    train = prepared.feature_set("train", images=pixels)
    val = prepared.feature_set("val", images=pixels)
    train_config = dataclasses.replace(config.train, epochs=epochs + 1, patience=0)
    result = fit(
        train,
        val,
        prepared.encoder.out_channels,
        config.decoder.width,
        train_config,
        prepared.device,
        decoder_config=dataclasses.replace(config.decoder, name=decoder),
    )
    history = result.history[1:]  # the first epoch pays one-time costs
    train_s = statistics.median(h["epoch_train_s"] for h in history)
    val_s = statistics.median(h["epoch_val_s"] for h in history)
    return train_s / len(train) * 1000, val_s / len(val) * 1000


AUGMENTS = ((), ("hflip",), ("hflip", "vflip", "rot90"))


def cache_costs(config: Config) -> dict[str, dict[str, float]]:
    """Per `data.augment` setting: the cache's bytes and the encoder's passes per training
    image (the identity entry holds every image once; the augmentation entry each training
    image once per variant)."""
    costs = {}
    for augment in AUGMENTS:
        prepared = prepare(
            dataclasses.replace(config, data=dataclasses.replace(config.data, augment=augment)),
            progress=False,
        )
        per_image = prepared.features.features[0].nbytes + prepared.features.masks[0].nbytes
        costs[",".join(augment) or "none"] = {
            "bytes": per_image * (1 + len(augment)),
            "encoder_passes": 1 + len(augment),
        }
    return costs


def study(config: Config, trials: int, epochs: int) -> tuple[float, float]:
    """(trials per hour from the trials' own durations, the whole `tune` call in seconds)."""
    spec = load_spec(ROOT / "studies" / "decoder_search.toml", config)
    spec = dataclasses.replace(spec, epochs=epochs, pruner={"name": "none"})
    start = time.perf_counter()
    result = tune(config, spec, trials, study_name="bench-pipeline", progress=False)
    wall = time.perf_counter() - start
    durations = [t.duration.total_seconds() for t in result.study.trials if t.duration]
    return 3600 / statistics.fmean(durations), wall


def random_checkpoint(name: str, folder: Path) -> str:
    """For an encoder with pretrained weights (`sam_vit_b`): its random weights saved as a
    checkpoint file, so the benchmark takes the real loading path, offline, and never falls
    back to another encoder. "" for a random-weights-only variant."""
    if ENCODERS[name].load_pretrained is None:
        return ""
    backbone = encoder_architecture(name).backbone
    state = backbone.resnet.state_dict() if isinstance(backbone, ResNetTrunk) else None
    path = folder / f"random-{name}.pth"
    torch.save(state or backbone.state_dict(), path)
    return str(path)


def make_config(root: Path, args: argparse.Namespace, checkpoint: str) -> Config:
    return Config(
        data=DataConfig(
            source="local", root=str(root), image_size=args.size, ratios=(0.6, 0.3, 0.1)
        ),
        encoder=EncoderConfig(
            name=args.encoder,
            checkpoint=checkpoint or "auto",
            fallback="",
            allow_random_weights=True,
            batch_size=args.batch,
            precision=args.precision,
        ),
        decoder=DecoderConfig(width=args.width),
        train=TrainConfig(epochs=args.epochs, batch_size=8, lr=3e-3, device=args.device),
        tracking=TrackingConfig(experiment="bench-pipeline", registered_model="bench-pipeline"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--encoder", default="sam_vit_b_256", help="a registry name")
    parser.add_argument("--size", type=int, default=256, help="image size in the cache (px)")
    parser.add_argument("--batch", type=int, default=8, help="encoder batch size")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=64, help="decoder width")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="encoder precision: auto|fp32|bf16")
    args = parser.parse_args()
    device = resolve_device(args.device)
    figures: dict[str, object] = {"images": args.images, "encoder": args.encoder}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the study's MLflow store and Optuna storage live here
        os.environ["POLYPSEG_CACHE"] = str(Path(tmp) / "cache")
        try:
            root = make_synthetic(Path(tmp) / "data", n=args.images, seed=0)
            config = make_config(root, args, random_checkpoint(args.encoder, Path(tmp)))
            figures["encoder_ms_per_image"] = encoder_forward_ms(config, root, device)
            with GpuSampler(device) as sampler:
                figures["feature_pass_ms_per_image"] = feature_pass_ms(config, root, device)
                for key in ("cache_hit_first_s", "cache_hit_s"):
                    start = time.perf_counter()
                    prepared = prepare(config, progress=False)
                    figures[key] = time.perf_counter() - start
                figures["cache_lookup_s"] = cache_lookup_s(prepared, config)
                train_ms, val_ms = epoch_ms(prepared, config, args.epochs)
                figures["train_ms_per_image"], figures["val_ms_per_image"] = train_ms, val_ms
                figures["train_ms_per_image_by_decoder"] = {
                    name: round(epoch_ms(prepared, config, args.epochs, name)[0], 3)
                    for name in ("simple", "hires")
                }
                figures["cache_bytes_per_image_by_augment"] = cache_costs(config)
                figures["trials_per_hour"], figures["study_wall_s"] = study(
                    config, args.trials, args.epochs
                )
            figures["gpu_busy"] = sampler.busy()
        finally:
            os.chdir(cwd)
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    figures["feature_pass_over_encoder"] = round(
        figures["feature_pass_ms_per_image"] / figures["encoder_ms_per_image"], 3
    )
    figures["device"] = str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
