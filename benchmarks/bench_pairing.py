"""Benchmark: what the full check in `list_pairs` costs, against reading headers only.

`list_pairs` decodes every image and mask (JPEGs in Pillow's draft mode, 1/8 scale) so that
`split` refuses the truncated files and mismatched masks `train` would refuse. This writes
synthetic pairs at one size (default 1000 at 720×576, the most common Kvasir-SEG frame) as JPEGs
of Kvasir-like quality and times four ways of checking them, each the best of `--repeats`:
headers only (a bare loop), the full check as shipped (decoding in threads), `list_pairs` with
`decode=False` (what a feature-cache hit runs), and a full-scale decode. Prints one JSON line.

    python benchmarks/bench_pairing.py [--images 1000] [--width 720] [--height 576]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from polypseg.data.pairs import list_pairs
from polypseg.data.synthetic import JPEG_QUALITY, make_sample

DISTINCT = 20  # distinct samples, cycled: decoding cost depends on size and content, not names


def write_set(root: Path, n: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(DISTINCT):
        image, mask = make_sample(rng)
        samples.append(
            (
                Image.fromarray(image).resize((width, height), Image.BILINEAR),
                Image.fromarray(mask).resize((width, height), Image.NEAREST).convert("RGB"),
            )
        )
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for index in range(n):
        image, mask = samples[index % DISTINCT]
        image.save(root / "images" / f"{index:05d}.jpg", quality=JPEG_QUALITY)
        mask.save(root / "masks" / f"{index:05d}.jpg", quality=JPEG_QUALITY)


def headers_only(root: Path) -> None:
    for path in sorted((root / "images").iterdir()) + sorted((root / "masks").iterdir()):
        with Image.open(path) as image:
            image.size  # noqa: B018 - opening reads the header; this is the old check


def full_scale(root: Path) -> None:
    for path in sorted((root / "images").iterdir()) + sorted((root / "masks").iterdir()):
        with Image.open(path) as image:
            image.load()


def best_of(repeats: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_set(root, args.images, args.width, args.height)
        assert len(list_pairs(root)) == args.images
        figures = {
            "pairs": args.images,
            "size": f"{args.width}x{args.height}",
            "headers_only_s": best_of(args.repeats, lambda: headers_only(root)),
            "list_pairs_full_check_s": best_of(args.repeats, lambda: list_pairs(root)),
            "list_pairs_headers_s": best_of(args.repeats, lambda: list_pairs(root, decode=False)),
            "full_scale_decode_s": best_of(args.repeats, lambda: full_scale(root)),
        }
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    figures["full_check_ms_per_pair"] = round(
        1000 * figures["list_pairs_full_check_s"] / args.images, 3
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
