"""PyTorch input: datasets, this rank's batches (`sharding`), transforms, and RankInput,
which turns them into normalised device batches (workers decode to uint8; the device normalises).

Determinism (what makes `--resume auto` land on the same weights as an unbroken run):
the sampler yields `epoch * N + index`, and the dataset seeds each sample's augmentation
from (seed, epoch, index). So a sample's crop does not depend on which loader worker
decodes it, and a resumed epoch can skip its first batches without changing the rest.

Corrupt images (policy, see README `trainer`): a file that fails to decode is replaced by
the next good sample and counted; the trainer sums the counts over ranks and stops with
exit 2, naming a file, once they exceed `max_bad_images` x the training set.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from PIL import Image

from kjob_trainer.common.config import TrainConfig
from kjob_trainer.common.dataset_index import Split
from kjob_trainer.common.errors import BadInput
from kjob_trainer.common.sharding import eval_batches, shard_indices
from kjob_trainer.common.synthetic import SyntheticBank

# How many following samples to try in place of an undecodable one.
MAX_SUBSTITUTES = 16
# Batches a DALI pipeline may have read ahead of the one the trainer asked for (its
# prefetch queue holds 2): where to look for the file when DALI reports a decode error.
DALI_LOOKAHEAD_BATCHES = 4


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed that is stable across restarts and loader workers."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 12_345) % (2**63 - 1)


def build_transforms(cfg: TrainConfig, train: bool) -> Callable[[str], torch.Tensor]:
    """Image path -> uint8 (3, size, size) tensor (normalised later, on the device: see
    RankInput). The one place the PyTorch augmentation is defined. cfg.decoder "torchvision":
    torch/input.py's libjpeg-turbo decode into uint8 tensors (~1.65x the images per core of PIL,
    see BENCHMARKS.md); "pil": PIL + torchvision transforms; "dali" decodes in its own
    loader, so its datasets keep the torchvision transform for nothing but reference.
    Raises BadInput (FastInputError) for another decoder name, and for DALI with a recipe
    augmentation it does not implement."""
    from kjob_trainer.torch.input import image_transform

    if cfg.decoder == "dali" and train and (cfg.auto_augment or cfg.color_jitter):
        raise BadInput("--decoder dali implements crop and flip only, not the recipe's auto_augment/color_jitter; "
                       "use --decoder torchvision")
    decoder = "torchvision" if cfg.decoder == "dali" else cfg.decoder
    return image_transform(decoder, cfg.image_size, train=train, scale=(cfg.crop_scale_min, 1.0),
                           eval_resize=cfg.eval_resize_size(), flip=cfg.hflip, color_jitter=cfg.color_jitter,
                           auto_augment=cfg.auto_augment, eval_square=cfg.eval_resize_square)


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
    """`synthetic.SyntheticBank` as uint8 tensors (normalised on the device like decoded ones)."""

    def __init__(self, samples: int, image_size: int, num_classes: int, seed: int) -> None:
        self.bank = SyntheticBank(samples, image_size, num_classes, seed)
        self.images = torch.from_numpy(self.bank.bank)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.bank)

    def __getitem__(self, key: int):
        _, label, index = self.bank.item(int(key))
        return self.images[index % len(self.images)], label, index, 0


class ShardBatches:
    """This rank's batches of one epoch, as `sharding.shard_indices` deals them, for a
    DataLoader's batch_sampler. `start_batch` skips batches already trained on (mid-epoch
    resume). Yields lists of `epoch * N + index` (see module doc)."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, train: bool) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.train = seed, train
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def rank_indices(self) -> list[int]:
        """This rank's sample indices for the current epoch, in order."""
        return shard_indices(self.n, self.batch_size, self.rank, self.world, self.seed, self.epoch, self.train)

    def __len__(self) -> int:
        if self.train:
            return self.n // (self.world * self.batch_size) - self.start_batch
        return eval_batches(self.n, self.batch_size, self.rank, self.world)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.rank_indices()
        offset = self.epoch * self.n
        for b in range(self.start_batch * self.batch_size, len(idx), self.batch_size):
            yield [offset + i for i in idx[b:b + self.batch_size]]


class RankInput:
    """This rank's batches of one split, epoch after epoch: (images, labels) normalised on
    `device` (channels-last if asked), plus (ids, bad) on the CPU for the host-side counts.

    Worker decoders (torchvision, pil): one DataLoader for the whole run whose workers ship
    uint8 images and persist across epochs (set_epoch reaches the sampler, which lives in
    this process); input.py's `DevicePrefetcher` copies and normalises the next batch while
    the model works on this one (a side stream on CUDA). DALI: a pipeline per epoch that
    reads this rank's files in the sampler's order, so sharding and mid-epoch resume are the
    same as with the workers (the crops are DALI's own random draws, not sample_seed's).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, batches: ShardBatches, cfg: TrainConfig,
                 device: torch.device, memory_format: torch.memory_format) -> None:
        self.dataset, self.batches, self.cfg, self.device = dataset, batches, cfg, device
        self.channels_last = memory_format == torch.channels_last
        self.dali = cfg.decoder == "dali" and isinstance(dataset, ImageDataset)
        self.loader = None
        if self.dali:
            from kjob_trainer.torch.dali import import_dali

            import_dali()  # a missing DALI fails here, before any training
        else:
            workers = cfg.workers
            self.loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """The batches of `epoch` from `start_batch` on."""
        from kjob_trainer.torch.input import DevicePrefetcher

        self.batches.set_epoch(epoch, start_batch)
        if self.dali:
            return self._dali_epoch()
        return iter(DevicePrefetcher(self.loader, self.device, channels_last=self.channels_last))

    def _dali_epoch(self) -> Iterator[tuple[torch.Tensor, ...]]:
        from kjob_trainer.torch.dali import make_dali_loader

        b, cfg, split = self.batches, self.cfg, self.dataset.split
        order = b.rank_indices()[b.start_batch * b.batch_size:]
        if not order:
            return
        cuda = self.device.type == "cuda"
        loader = make_dali_loader(
            [(split.paths[i], split.labels[i]) for i in order], b.batch_size, size=cfg.image_size,
            train=b.train, shuffle=False, device="gpu" if cuda else "cpu", device_id=self.device.index or 0,
            num_threads=max(1, cfg.workers), seed=sample_seed(cfg.seed, b.epoch, b.rank) % 2**31,
            channels_last=self.channels_last, scale=(cfg.crop_scale_min, 1.0), flip=cfg.hflip,
            eval_resize=cfg.eval_resize_size())
        batches = iter(loader)
        for start in range(0, len(order), b.batch_size):
            try:
                images, labels = next(batches)
            except StopIteration:
                return
            except RuntimeError as e:  # DALI stops at an undecodable file instead of skipping it
                # Its message names no file: look for it among the batches DALI had read ahead.
                ahead = [split.paths[i] for i in order[start:start + DALI_LOOKAHEAD_BATCHES * b.batch_size]]
                culprit = next((p for p in ahead if not _decodes(p)), None)
                where = f"{culprit} cannot be decoded" if culprit else _dali_reason(e)
                raise BadInput(f"dataset: {where}; the DALI decoder stops at a corrupt image instead of "
                               "skipping it: remove the file or train with --decoder torchvision") from e
            ids = torch.tensor(order[start:start + labels.shape[0]])
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True), \
                ids, torch.zeros_like(ids)


def _decodes(path: str) -> bool:
    from kjob_trainer.torch.input import read_rgb

    try:
        read_rgb(path)
    except (OSError, ValueError):
        return False
    return True


def _dali_reason(e: BaseException) -> str:
    """The informative line of a DALI pipeline error (the one after "encountered:")."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for before, line in zip(lines, lines[1:]):
        if before == "encountered:":
            return f"the DALI pipeline failed: {line[:300]}"
    return f"the DALI pipeline failed: {lines[0][:300] if lines else type(e).__name__}"
