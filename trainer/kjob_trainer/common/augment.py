"""Augmentation settings that both frameworks implement, and the batch-level Mixup draw.

Framework-free. Per-sample augmentation (crop, flip, colour jitter, AutoAugment) is built
by each framework's input module from the config (`torch/input.py`, `mindspore/data.py`); what
is decided here:

- the names of the AutoAugment policies kjob accepts;
- Mixup (Zhang et al. 2018), the only batch transform the reference recipes use
  (PaddleClas's `MixupOperator`): a coefficient lam ~ Beta(alpha, alpha) and a pairing
  permutation per batch, drawn from (seed, epoch, batch in epoch, rank), so a resumed run
  draws the same pairs, and both loops mix the same way: images lam*x + (1-lam)*x[perm],
  targets lam*onehot(y) + (1-lam)*onehot(y[perm]), label smoothing applied on top (as
  PaddleClas's CELoss smooths the mixed one-hot target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# torchvision's AutoAugmentPolicy.IMAGENET / MindCV's "autoaug": the ImageNet policy of
# Cubuk et al. 2019 (25 sub-policies), which PaddleClas's AutoAugment (ImageNetPolicy) uses.
AUTO_AUGMENT_POLICIES = ("imagenet",)
# Separates Mixup's stream of random numbers from any other draw made with the same seed.
MIXUP_STREAM = 0x6D6978


@dataclass(frozen=True)
class MixupDraw:
    """One batch's Mixup: images and targets become lam * own + (1 - lam) * partner."""

    lam: float
    perm: np.ndarray  # partner of each sample in the batch

    def mix_targets(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Mixed one-hot targets, float32 (n, num_classes) (host side, for MindSpore)."""
        eye = np.eye(num_classes, dtype=np.float32)
        return (self.lam * eye[labels] + (1.0 - self.lam) * eye[labels[self.perm]]).astype(np.float32)


def mixup_draw(alpha: float, n: int, *, seed: int, epoch: int, batch: int, rank: int) -> MixupDraw:
    """The Mixup of micro-batch `batch` (in the epoch) of `rank`: the same on every restart."""
    rng = np.random.default_rng([MIXUP_STREAM, seed, epoch, batch, rank])
    lam = float(rng.beta(alpha, alpha))
    return MixupDraw(lam, rng.permutation(n))
