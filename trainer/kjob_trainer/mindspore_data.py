"""MindSpore input: `mindspore.dataset` pipelines over the same datasets as the PyTorch side.

The dataset is found and checked by the framework-neutral `dataset_index` (same layouts,
same one-line errors). Sharding is done here rather than by `num_shards/shard_id`: each
epoch is a seeded permutation of the whole set, cut to a multiple of world x batch and
dealt round-robin, so ranks never overlap, every rank runs the same number of steps (the
gradient all-reduce needs that), and a resumed epoch can skip exactly the batches it has
already trained on. MindSpore reads each rank's list through a `SubsetSampler`.

Pipelines yield (image CHW float32, label int32, index int64): `index` is the sample's
position in the dataset, so a rank can show which samples it trained on.

Corrupt images (same policy as the PyTorch side): a file that fails to decode is replaced
by the next good one and counted; the trainer stops with exit 2, naming the file, once a
rank's count exceeds `max_bad_images` x its share of the training set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from kjob_trainer.config import TrainConfig
from kjob_trainer.dataset_index import Split
from kjob_trainer.errors import BadInput

# ImageNet channel statistics on the 0..255 scale, as MindCV normalises.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
MAX_SUBSTITUTES = 16  # following samples tried in place of an undecodable one
SYNTHETIC_BANK = 64  # distinct synthetic images: generating one per sample would cost more than the step


@dataclass
class ImageSource:
    """Random-access source for GeneratorDataset: decodes `split` images with PIL."""

    split: Split
    bad: int = 0
    bad_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        from PIL import Image

        for k in range(MAX_SUBSTITUTES):
            j = (int(index) + k) % len(self.split)
            try:
                with Image.open(self.split.paths[j]) as im:
                    pixels = np.asarray(im.convert("RGB"))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                self.bad += 1
                self.bad_files.append(self.split.paths[j])
                continue
            return pixels, np.int32(self.split.labels[j]), np.int64(index)
        raise OSError(f"{MAX_SUBSTITUTES} images in a row from {self.split.paths[int(index)]} cannot be decoded")


class SyntheticSource:
    """Random normalised CHW images from a small bank, labels `index % num_classes`."""

    bad = 0
    bad_files: list[str] = []

    def __init__(self, samples: int, image_size: int, num_classes: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.bank = rng.standard_normal((SYNTHETIC_BANK, 3, image_size, image_size), dtype=np.float32)
        self.samples = samples
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int):
        index = int(index)
        return self.bank[index % SYNTHETIC_BANK], np.int32(index % self.num_classes), np.int64(index)


def shard_indices(n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int, train: bool) -> list[int]:
    """This rank's sample indices for `epoch`, in order. Train: a permutation seeded by
    (seed, epoch), trimmed to whole global batches. Eval: every sample once, round-robin."""
    if not train:
        return list(range(rank, n, world))
    order = np.random.default_rng(seed + epoch).permutation(n)
    usable = (n // (world * batch_size)) * world * batch_size
    return [int(i) for i in order[rank:usable:world]]


def batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Training batches per rank per epoch. Raises BadInput if there is not one global batch."""
    count = n // (world * batch_size)
    if count < 1:
        raise BadInput(f"dataset: {n} training images are fewer than one global batch "
                       f"({world} ranks x --batch-size {batch_size})")
    return count


def _image_ops(cfg: TrainConfig, train: bool) -> list:
    import mindspore.dataset.vision as vision

    if train:
        steps = [vision.RandomResizedCrop(cfg.image_size, scale=(cfg.crop_scale_min, 1.0), ratio=(0.75, 1.333))]
        if cfg.hflip:
            steps.append(vision.RandomHorizontalFlip(0.5))
    else:
        steps = [vision.Resize(cfg.eval_resize_size()), vision.CenterCrop(cfg.image_size)]
    return [*steps, vision.Normalize(MEAN, STD), vision.HWC2CHW()]


def make_pipeline(source, indices: list[int], cfg: TrainConfig, batch_size: int, train: bool,
                  start_batch: int = 0):
    """A batched `mindspore.dataset` over `indices` of `source`, skipping `start_batch`
    batches. Eval keeps a last partial batch; train drops it (indices are whole batches)."""
    import mindspore.dataset as ds

    indices = indices[start_batch * batch_size:]
    workers = max(1, min(cfg.workers, os.cpu_count() or 1))  # MindSpore refuses more than the CPU count
    # Threads, not processes: PIL releases the GIL while decoding, and the source's bad-image
    # counter must live in this process.
    pipe = ds.GeneratorDataset(source, ["image", "label", "index"], sampler=ds.SubsetSampler(indices),
                               num_parallel_workers=workers, python_multiprocessing=False)
    if isinstance(source, ImageSource):
        pipe = pipe.map(operations=_image_ops(cfg, train), input_columns="image", num_parallel_workers=workers)
    return pipe.batch(batch_size, drop_remainder=train)


def check_bad_images(source, shard_size: int, cfg: TrainConfig) -> None:
    """Raises BadInput once this rank has replaced more corrupt images than allowed."""
    if source.bad > cfg.max_bad_images * shard_size:
        raise BadInput(f"dataset: {source.bad} image(s) could not be decoded (more than max_bad_images="
                       f"{cfg.max_bad_images:g} of {shard_size}), e.g. {source.bad_files[0]}")
