"""Which samples each rank trains on: one definition for both frameworks (framework-free).

Training: every epoch is a permutation of the whole set seeded by (seed, epoch), cut to a
multiple of world x batch (drop_last) and dealt round-robin, so ranks never overlap, every
rank runs the same number of steps (a gradient all-reduce needs that), and a resumed epoch
skips exactly the batches it has already trained on. Evaluation: every sample once,
round-robin, no padding, so all-reduced counts are exactly the dataset's.
"""

from __future__ import annotations

import math

import numpy as np

from kjob_trainer.common.errors import BadInput


def shard_indices(n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int, train: bool) -> list[int]:
    """This rank's sample indices (0..n-1) for `epoch`, in the order it trains on them."""
    if not train:
        return list(range(rank, n, world))
    order = np.random.default_rng([seed, epoch]).permutation(n)
    usable = (n // (world * batch_size)) * world * batch_size
    return [int(i) for i in order[rank:usable:world]]


def batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Training batches per rank per epoch. Raises BadInput if there is not one global batch."""
    count = n // (world * batch_size)
    if count < 1:
        raise BadInput(f"dataset: {n} training images are fewer than one global batch "
                       f"({world} ranks x --batch-size {batch_size})")
    return count


def eval_batches(n: int, batch_size: int, rank: int, world: int) -> int:
    """Evaluation batches of this rank (the last one may be partial)."""
    return math.ceil(len(range(rank, n, world)) / batch_size)
