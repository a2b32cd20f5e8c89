"""Synthetic images for smoke runs and benchmarks, the same in both frameworks (framework-free).

A small bank of random uint8 images (CHW, like a decoded and cropped photo before
normalisation), reused by index, each with a fixed label, so the loss visibly falls.
Generating an image per sample would cost more than the training step it feeds.
"""

from __future__ import annotations

import numpy as np

BANK = 64  # distinct images: enough that a smoke run cannot memorise one batch
SYNTHETIC_CLASSES = 1000  # ImageNet's, so synthetic runs have the real classifier head


class SyntheticBank:
    """`samples` items; item i is (bank[i % BANK], label (i % BANK) % num_classes, i)."""

    def __init__(self, samples: int, image_size: int, num_classes: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.bank = rng.integers(0, 256, (BANK, 3, image_size, image_size), dtype=np.uint8)
        self.samples = samples
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.samples

    def label(self, index: int) -> int:
        return (index % BANK) % self.num_classes

    def item(self, index: int) -> tuple[np.ndarray, int, int]:
        index = int(index) % self.samples
        return self.bank[index % BANK], self.label(index), index
