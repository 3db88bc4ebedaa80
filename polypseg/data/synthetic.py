"""A synthetic Kvasir-like data set: the real layout, polyp-like content, deterministic per seed.

Blobs on textured mucosa, each tinted and shaded on its own so that no pixel threshold separates
them (the decoder has to use shape and texture), with masks saved as RGB JPEGs like Kvasir's. The
same scenes make the five sets in PraNet's layout and a short clip, so the literature's route and
`predict --video` run offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from polypseg.atomic import atomic_path

JPEG_QUALITY = 90


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean noise in about [-1, 1] with features about `scale` pixels wide."""
    small = rng.standard_normal((max(2, int(h / scale)), max(2, int(w / scale))))
    image = Image.fromarray(((small + 3) * 40).clip(0, 255).astype(np.uint8))
    big = np.asarray(image.resize((w, h), Image.BICUBIC), dtype=np.float32) / 40 - 3
    return big / (np.abs(big).max() + 1e-6)


def _blob(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An irregular star-shaped region (boolean) and its dome shading (0..1 inside)."""
    radius = rng.uniform(0.08, 0.25) * min(h, w)
    cy = rng.uniform(radius, h - radius)
    cx = rng.uniform(radius, w - radius)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx)
    boundary = np.ones_like(theta)
    for k in range(2, 6):
        boundary += rng.uniform(0.0, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.7, 1.3)
    dist = np.hypot((yy - cy) * stretch, (xx - cx) / stretch) / (radius * boundary)
    inside = dist < 1.0
    dome = np.clip(1.0 - dist**2, 0.0, 1.0)
    return inside, dome


def make_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (image H×W×3 uint8, mask H×W uint8 0/255) pair."""
    h = int(rng.integers(288, 520))
    w = int(rng.integers(352, 640))
    base = np.array([rng.uniform(170, 215), rng.uniform(80, 115), rng.uniform(70, 100)])
    texture = 14 * _smooth_noise(rng, h, w, 40) + 6 * _smooth_noise(rng, h, w, 6)
    image = base[None, None, :] + texture[..., None] * np.array([1.0, 0.6, 0.5])
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        inside, dome = _blob(rng, h, w)
        # Per-blob tint: sometimes paler, sometimes darker than the mucosa, never one colour.
        tint = np.array([rng.uniform(-35, 30), rng.uniform(-10, 45), rng.uniform(-5, 40)])
        grain = 8 * _smooth_noise(rng, h, w, 3)
        shade = (0.55 + 0.6 * dome)[..., None]
        blob = (base + tint)[None, None, :] * shade + grain[..., None]
        soft = Image.fromarray((inside * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
        edge = np.asarray(soft, dtype=np.float32)[..., None] / 255
        image = image * (1 - edge) + blob * edge
        mask |= inside
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ly, lx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    falloff = 1.0 - 0.55 * (np.hypot(yy - ly, xx - lx) / np.hypot(h, w)) ** 1.5
    image = image * falloff[..., None]
    for _ in range(int(rng.integers(3, 12))):
        sy, sx = rng.uniform(0, h), rng.uniform(0, w)
        size = rng.uniform(1.5, 6)
        spot = np.exp(-(((yy - sy) / size) ** 2 + ((xx - sx) / (size * 1.6)) ** 2))
        image = image + 200 * spot[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def make_synthetic(out: str | Path, n: int = 100, seed: int = 0, option: str | None = None) -> Path:
    """Write `out/images/*.jpg` and `out/masks/*.jpg` (n pairs), whole or not at all; with
    `option` (the CLI option that named `out`), a failed write is one line naming it."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    with atomic_path(out, directory=True, option=option) as tmp:
        names = [f"synth_{seed:03d}_{index:05d}.jpg" for index in range(n)]
        _write_pairs(rng, tmp / "images", tmp / "masks", names)
    return out


def _write_pairs(rng: np.random.Generator, images: Path, masks: Path, names: list[str]) -> None:
    """One sample per name; JPEG names get Kvasir's RGB JPEG masks, PNG names 0/255 PNGs."""
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for name in names:
        image, mask = make_sample(rng)
        Image.fromarray(image).save(images / name, quality=JPEG_QUALITY)
        jpeg = name.endswith(".jpg")
        Image.fromarray(mask).convert("RGB" if jpeg else "L").save(
            masks / name, quality=JPEG_QUALITY
        )


def make_pranet_layout(
    out: str | Path, n: int = 10, seed: int = 0, option: str | None = None
) -> Path:
    """The five sets in PraNet's layout at `out`, `n` PNG pairs each; a fifth of Kvasir's and
    ClinicDB's (at least one) under PraNet's own test names, so its split finds them."""
    from polypseg.data.protocol import NAMES_FILE, TRAINING_SETS
    from polypseg.data.sets import SETS

    tests = json.loads(NAMES_FILE.read_text())
    rng = np.random.default_rng(seed)
    held = max(1, n // 5)
    with atomic_path(Path(out), directory=True, option=option) as tmp:
        train = [f"synth_{index:03d}.png" for index in range(n - held)]  # Kvasir's: not numbers
        train += [f"{k}.png" for k in range(1, 613) if str(k) not in tests["clinicdb"]][: n - held]
        _write_pairs(rng, tmp / "TrainDataset" / "image", tmp / "TrainDataset" / "mask", train)
        for name, polyp in SETS.items():
            stems = tests[name][:held] if name in TRAINING_SETS else range(1, n + 1)
            names = [f"{stem}.png" for stem in stems]
            folder = tmp / "TestDataset" / polyp.pranet_folder
            _write_pairs(rng, folder / "images", folder / "masks", names)
    return Path(out)


def synthetic_clip(
    seed: int = 0, frames: int = 40, width: int = 192, height: int = 160
) -> Iterator[np.ndarray]:
    """`frames` RGB frames (H×W×3 uint8) of a camera drifting across one synthetic scene."""
    rng = np.random.default_rng(seed)
    scene, _ = make_sample(rng)
    room_y, room_x = scene.shape[0] - height, scene.shape[1] - width
    for t in np.linspace(0.0, 2 * np.pi, frames, endpoint=False):
        y = int(room_y * (0.5 + 0.5 * np.sin(t)))
        x = int(room_x * (0.5 - 0.5 * np.cos(t)))
        yield scene[y : y + height, x : x + width]
