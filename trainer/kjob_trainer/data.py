"""PyTorch input: datasets, per-rank sharding, transforms, loaders.

Determinism (what makes `--resume auto` land on the same weights as an unbroken run):
the sampler yields `epoch * N + index`, and the dataset seeds each sample's augmentation
from (seed, epoch, index). So a sample's crop does not depend on which loader worker
decodes it, and a resumed epoch can skip its first batches without changing the rest.

Corrupt images (policy, see README `trainer`): a file that fails to decode is replaced by
the next good sample and counted; the trainer sums the counts over ranks and stops with
exit 2, naming a file, once they exceed `max_bad_images` x the training set.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from PIL import Image

from kjob_trainer.config import TrainConfig
from kjob_trainer.dataset_index import Split

# ImageNet channel statistics, as torchvision and MindCV normalise.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# How many following samples to try in place of an undecodable one.
MAX_SUBSTITUTES = 16


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed that is stable across restarts and loader workers."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 12_345) % (2**63 - 1)


def build_transforms(cfg: TrainConfig, train: bool) -> Callable[[str], torch.Tensor]:
    """Image path -> normalised CHW float tensor. The one place the augmentation is defined.
    cfg.decoder "pil": PIL + torchvision transforms; "torchvision": fast_input's libjpeg-turbo
    decode into uint8 tensors (same crop distribution, ~1.65x the images per core, see
    BENCHMARKS.md). Raises BadInput (FastInputError) for another decoder name."""
    if cfg.decoder != "pil":
        from kjob_trainer.fast_input import image_transform

        return image_transform(cfg.decoder, cfg.image_size, train=train, scale=(cfg.crop_scale_min, 1.0),
                               eval_resize=cfg.eval_resize_size(), flip=cfg.hflip, normalize=True)
    from torchvision import transforms as T

    if train:
        steps = [T.RandomResizedCrop(cfg.image_size, scale=(cfg.crop_scale_min, 1.0), antialias=True)]
        if cfg.hflip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps = [T.Resize(cfg.eval_resize_size(), antialias=True), T.CenterCrop(cfg.image_size)]
    pipeline = T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])

    def load(path: str) -> torch.Tensor:
        with Image.open(path) as im:
            return pipeline(im.convert("RGB"))

    return load


class ImageDataset(torch.utils.data.Dataset):
    """Decodes `split` images. Items: (image, label, index, bad) with bad = 1 if the file
    at `index` could not be decoded and a substitute was returned."""

    def __init__(self, split: Split, transform: Callable, seed: int) -> None:
        self.split = split
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split)

    def _load(self, index: int, epoch: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.transform(self.split.paths[index])

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), len(self.split))
        for k in range(MAX_SUBSTITUTES):
            j = (index + k) % len(self.split)
            try:
                image = self._load(j, epoch)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                continue
            return image, self.split.labels[j], index, int(k > 0)
        raise OSError(f"{MAX_SUBSTITUTES} images in a row from {self.split.paths[index]} cannot be decoded")


class SyntheticDataset(torch.utils.data.Dataset):
    """Random images without decoding cost: a small bank of tensors, reused by index."""

    BANK = 64  # distinct images; enough to keep the loss from collapsing in a smoke run

    def __init__(self, samples: int, image_size: int, num_classes: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.bank = torch.randn(self.BANK, 3, image_size, image_size, generator=g)
        self.samples = samples
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, key: int):
        index = int(key) % self.samples
        return self.bank[index % self.BANK], (index % self.BANK) % self.num_classes, index, 0


class ShardBatches:
    """Batches of one rank for one epoch: a seeded permutation of the dataset, cut to a
    multiple of world x batch (drop_last) for training, split round-robin, no overlap
    between ranks. `start_batch` skips batches already trained on (mid-epoch resume).
    Yields lists of `epoch * N + index` (see module doc)."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, train: bool) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.train = seed, train
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def rank_indices(self) -> list[int]:
        """This rank's sample indices for the current epoch, in order."""
        if not self.train:
            return list(range(self.rank, self.n, self.world))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        usable = (self.n // (self.world * self.batch_size)) * self.world * self.batch_size
        return order[self.rank:usable:self.world]

    def __len__(self) -> int:
        if self.train:
            return self.n // (self.world * self.batch_size) - self.start_batch
        return math.ceil(len(range(self.rank, self.n, self.world)) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.rank_indices()
        offset = self.epoch * self.n
        for b in range(self.start_batch * self.batch_size, len(idx), self.batch_size):
            yield [offset + i for i in idx[b:b + self.batch_size]]


def make_loader(dataset: torch.utils.data.Dataset, batches: ShardBatches, cfg: TrainConfig,
                pin_memory: bool) -> torch.utils.data.DataLoader:
    """A DataLoader over `batches`; workers persist across epochs (the sampler lives in
    this process, so set_epoch still reaches it)."""
    workers = cfg.workers
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
