"""Benchmark: the feature cache against re-encoding every batch every epoch.

The same small tuning workload (trials × epochs of decoder training, with different learning
rates and widths, on the same synthetic images) runs twice: over the feature cache (the encoder
runs once per image), and as the seed notebook does it, encoding each batch again in every epoch,
for training and validation. By default the encoder is SAM ViT-B's real architecture (random
weights) at 256 px, so the encoder's cost relative to the decoder's is realistic. Prints one
JSON line.

    python benchmarks/bench_cache.py [--images 40] [--trials 3] [--epochs 3]
                                     [--encoder sam_vit_b_256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from polypseg.config import TrainConfig
from polypseg.data.dataset import KvasirDataset
from polypseg.data.pairs import list_pairs
from polypseg.data.split import split_names
from polypseg.data.synthetic import make_synthetic
from polypseg.features.cache import FeatureCache
from polypseg.models.decoder import SimpleDecoder
from polypseg.models.encoders import encoder_architecture
from polypseg.training.fit import fit, train_step
from polypseg.training.losses import training_loss

TRIALS = [(3e-3, 64), (1e-3, 32), (5e-3, 48), (2e-3, 64), (1e-3, 64)]  # (lr, width)


def cached(root: Path, names: dict, args, cache_dir: Path) -> int:
    encoder = encoder_architecture(args.encoder)
    features = FeatureCache(cache_dir).get(
        encoder, list_pairs(root), args.size, batch_size=8, progress=False
    )
    train = features.feature_set(names["train"])
    val = features.feature_set(names["val"])
    for lr, width in TRIALS[: args.trials]:
        config = TrainConfig(epochs=args.epochs, lr=lr, patience=0)
        fit(train, val, encoder.out_channels, width, config, torch.device("cpu"))
    return encoder.images_encoded


def uncached(root: Path, names: dict, args) -> int:
    encoder = encoder_architecture(args.encoder)
    pairs = {pair.name: pair for pair in list_pairs(root)}
    train_pairs = [pairs[name] for name in names["train"]]
    val_pairs = [pairs[name] for name in names["val"]]
    train = DataLoader(KvasirDataset(train_pairs, args.size), batch_size=8, shuffle=True)
    val = DataLoader(KvasirDataset(val_pairs, args.size), batch_size=8)
    for lr, width in TRIALS[: args.trials]:
        decoder = SimpleDecoder(encoder.out_channels, width)
        optimiser = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=1e-4)
        for _ in range(args.epochs):
            decoder.train()
            for batch in train:
                x = encoder(batch["image"])
                loss = training_loss("bce_dice", 0.5)
                train_step(decoder, optimiser, x, batch["mask"].float(), loss)
            decoder.eval()
            with torch.no_grad():
                for batch in val:
                    decoder(encoder(batch["image"]))
    return encoder.images_encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--trials", type=int, default=3, choices=range(1, len(TRIALS) + 1))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--encoder", default="sam_vit_b_256", help="a registry name")
    parser.add_argument("--size", type=int, default=256, help="input size in pixels")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "data", n=args.images, seed=0)
        split = split_names([p.name for p in list_pairs(root)])
        names = {"train": split.train, "val": split.val}
        start = time.perf_counter()
        calls_cached = cached(root, names, args, Path(tmp) / "cache")
        wall_cached = time.perf_counter() - start
        start = time.perf_counter()
        calls_uncached = uncached(root, names, args)
        wall_uncached = time.perf_counter() - start
    print(
        json.dumps(
            {
                "images": args.images,
                "trials": args.trials,
                "epochs": args.epochs,
                "encoder": args.encoder,
                "images_encoded_cached": calls_cached,
                "images_encoded_uncached": calls_uncached,
                "wall_cached_s": round(wall_cached, 2),
                "wall_uncached_s": round(wall_uncached, 2),
                "speedup": round(wall_uncached / wall_cached, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
