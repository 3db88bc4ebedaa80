"""Benchmark: the cost of scoring one image under each evaluation protocol.

Smooth synthetic probability maps with an elliptic polyp mask, at Kvasir-SEG's typical frame
size (576×720 by default), scored by `--protocol default` (`metrics.default_image_scores`)
and `--protocol pranet` (`metrics.pranet_image_scores`: 256 thresholds of Dice, IoU and
E-measure, wFβ, S-α). The first image of each is left out of the timing (imports, scipy and
OpenCV warm-up). Prints one JSON line.

    python benchmarks/bench_evaluation.py [--images 10] [--height 576] [--width 720]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from polypseg.metrics import default_image_scores, pranet_image_scores


def sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A mask with one elliptic polyp and a blurred, noisy probability map of it."""
    y, x = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
    distance = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    mask = (distance <= 1).astype(np.uint8)
    logits = 6 * (1 - distance) + rng.normal(0, 1.5, (height, width))
    return (1 / (1 + np.exp(-logits))).astype(np.float32), mask


def per_image_ms(score, pairs: list) -> float:
    score(*pairs[0])  # warm-up, not timed
    start = time.perf_counter()
    for prob_map, mask in pairs[1:]:
        score(prob_map, mask)
    return 1000 * (time.perf_counter() - start) / (len(pairs) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=720)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pairs = [sample(rng, args.height, args.width) for _ in range(args.images + 1)]
    default_ms = per_image_ms(lambda p, m: default_image_scores(p, m, 0.5), pairs)
    pranet_ms = per_image_ms(pranet_image_scores, pairs)
    figures = {
        "images": args.images,
        "size": [args.height, args.width],
        "default_ms_per_image": round(default_ms, 1),
        "pranet_ms_per_image": round(pranet_ms, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
