"""MindSpore input: `mindspore.dataset` pipelines over the same datasets as the PyTorch side.

The dataset is found and checked by the framework-neutral `dataset_index`, each rank's
samples come from `sharding.shard_indices` (the PyTorch side's too), read through a
`SubsetSampler`, and synthetic images from `synthetic.SyntheticBank`. Augmentation follows
the config with MindSpore's and MindCV's own transforms: random-resized crop, flip, then
`vision.RandomColorAdjust` (colour jitter) or MindCV's AutoAugment ("autoaug", the
ImageNet policy); Mixup is a batch transform of the loop (augment.mixup_draw).

Pipelines yield (image CHW float32, label int32, index int64): `index` is the sample's
position in the dataset, so a rank can show which samples it trained on.

Corrupt images (same policy as the PyTorch side): a file that fails to decode is replaced
by the next good one and counted; the loop applies `run_protocol.check_bad_images`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from kjob_trainer.common.config import TrainConfig
from kjob_trainer.common.dataset_index import Split
from kjob_trainer.common.synthetic import SyntheticBank

# ImageNet channel statistics on the 0..255 scale, as MindCV normalises.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
MAX_SUBSTITUTES = 16  # following samples tried in place of an undecodable one
# MindCV's AutoAugment translates by up to this fraction of the image side (its
# transforms_imagenet_train sets translate_const the same way).
AUTO_AUGMENT_TRANSLATE = 0.45


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
    """`synthetic.SyntheticBank`, normalised as a decoded image would be (CHW float32)."""

    bad = 0
    bad_files: list[str] = []

    def __init__(self, samples: int, image_size: int, num_classes: int, seed: int) -> None:
        self.bank = SyntheticBank(samples, image_size, num_classes, seed)
        mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
        self.images = ((self.bank.bank.astype(np.float32) - mean) / std).astype(np.float32)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.bank)

    def __getitem__(self, index: int):
        _, label, i = self.bank.item(int(index))
        return self.images[i % len(self.images)], np.int32(label), np.int64(i)


def _recipe_ops(cfg: TrainConfig) -> list:
    """The recipe's colour augmentation after crop and flip (MindSpore's and MindCV's ops)."""
    import mindspore.dataset.vision as vision

    ops = []
    if cfg.color_jitter:
        ops.append(vision.RandomColorAdjust(brightness=cfg.color_jitter, contrast=cfg.color_jitter,
                                            saturation=cfg.color_jitter))
    if cfg.auto_augment:
        from mindcv.data.auto_augment import auto_augment_transform
        from mindspore.dataset.vision import Inter

        # "autoaug": the ImageNet policy; magnitude_std 0 keeps the policy's fixed magnitudes
        # (PaddleClas's ImageNetPolicy has no magnitude noise; MindCV's default adds 0.5).
        ops.append(auto_augment_transform("autoaug", {
            "translate_const": int(cfg.image_size * AUTO_AUGMENT_TRANSLATE), "magnitude_std": 0.0,
            "img_mean": tuple(min(255, round(m)) for m in MEAN), "interpolation": Inter.BILINEAR}))
    return ops


def _image_ops(cfg: TrainConfig, train: bool) -> list:
    import mindspore.dataset.vision as vision

    if train:
        steps = [vision.RandomResizedCrop(cfg.image_size, scale=(cfg.crop_scale_min, 1.0), ratio=(0.75, 1.333))]
        if cfg.hflip:
            steps.append(vision.RandomHorizontalFlip(0.5))
        steps += _recipe_ops(cfg)
    else:
        side = cfg.eval_resize_size()
        steps = [vision.Resize((side, side) if cfg.eval_resize_square else side), vision.CenterCrop(cfg.image_size)]
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
