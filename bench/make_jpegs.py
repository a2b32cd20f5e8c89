"""Generate ImageNet-sized JPEGs in the ImageNet folder layout, for the input benchmarks.

    python bench/make_jpegs.py OUT [--classes 4] [--per-class 100] [--val-per-class 10]

writes OUT/train/<wnid>/<wnid>_<i>.JPEG and OUT/val/<wnid>/... . Images are mostly 500x375
(ImageNet's most common size), some portrait or 500x333, JPEG quality 90. Content is
"natural-ish": 1/f (pink) noise in a correlated colour space plus a few hard-edged
shapes, because a JPEG's decode cost depends on how many non-zero DCT coefficients it
holds — flat or white-noise images would make the decoder look faster or slower than it
is on photographs (ImageNet's average train JPEG is ~110 KB; these land near that).
Deterministic: the same --seed gives the same bytes. A finished folder records its
settings in OUT/.make_jpegs.json and is reused when asked again with the same settings.

Exit codes: 0 done, 2 bad arguments or an OUT that holds something else.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# (width, height) and how often each appears; ImageNet is mostly 4:3 landscape.
SIZES = [((500, 375), 0.7), ((375, 500), 0.15), ((500, 333), 0.15)]
STAMP = ".make_jpegs.json"


def _pink_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Three channels of 1/f noise (power ~ 1/f^2, like photographs), scaled to 0..255."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    amplitude = 1.0 / radius ** rng.uniform(0.9, 1.2)
    amplitude[0, 0] = 0.0
    channels = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, size=amplitude.shape)
        channels.append(np.fft.irfft2(amplitude * np.exp(1j * phase), s=(h, w)))
    x = np.stack(channels, axis=-1)
    # Mix channels so colours correlate the way they do in real scenes (mostly luminance).
    mix = np.array([[1.0, 0.9, 0.8], [0.2, 0.5, -0.3], [-0.2, 0.1, 0.4]]) + rng.normal(0, 0.05, (3, 3))
    x = x @ mix
    x = (x - x.mean(axis=(0, 1))) / (x.std() + 1e-9)
    base = rng.uniform(70, 180, size=3)
    return np.clip(base + 45.0 * x, 0, 255)


def make_image(seed: int) -> bytes:
    """One deterministic JPEG (quality 90) for `seed`."""
    rng = np.random.default_rng(seed)
    sizes, weights = zip(*SIZES)
    w, h = sizes[rng.choice(len(sizes), p=np.array(weights))]
    img = Image.fromarray(_pink_noise(rng, h, w).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        x1, y1 = x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(30, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _image_seed(seed: int, split: str, cls: int, index: int) -> int:
    """A distinct, stable seed per (split, class, index), so any subset is reproducible."""
    return ((seed * 2 + (split == "val")) * 100_003 + cls) * 1_000_003 + index


def generate(out: Path, *, classes: int, per_class: int, val_per_class: int, seed: int) -> dict:
    """Write the folder tree (reusing a finished one with the same settings); return the settings.

    Raises ValueError when a count is out of range or OUT holds files that are not ours.
    """
    if classes < 1 or per_class < 1 or val_per_class < 0:
        raise ValueError("--classes and --per-class must be >= 1 and --val-per-class >= 0")
    settings = {"classes": classes, "per_class": per_class, "val_per_class": val_per_class,
                "seed": seed, "quality": 90, "sizes": [list(s) for s, _ in SIZES]}
    stamp = out / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return settings
    if out.exists() and any(out.iterdir()) and not stamp.is_file():
        raise ValueError(f"{out} is not empty and was not made by make_jpegs.py; choose another folder")
    stamp.unlink(missing_ok=True)  # settings changed: regenerate, and only stamp when complete
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            wnid = f"n{c:08d}"
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                data = make_image(_image_seed(seed, split, c, i))
                (folder / f"{wnid}_{i}.JPEG").write_bytes(data)
    stamp.write_text(json.dumps(settings))
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        generate(args.out, classes=args.classes, per_class=args.per_class,
                 val_per_class=args.val_per_class, seed=args.seed)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = sorted(args.out.glob("*/*/*.JPEG"))
    total = sum(os.path.getsize(f) for f in files)
    print(f"{args.out}: {len(files)} JPEGs, mean {total / max(len(files), 1) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
