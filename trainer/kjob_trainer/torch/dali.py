"""The optional NVIDIA DALI input pipeline: JPEG decode on the GPU (nvJPEG) plus augmentation.

For nodes where the CPUs cannot decode fast enough for the GPUs. DALI is not a
dependency: ``pip install nvidia-dali-cuda130`` (the PyTorch image has it); this module imports it only
when a loader is built, and says so plainly when it is missing. The graph is the
standard ImageNet one (NVIDIA's DeepLearningExamples): read -> decode with random crop ->
resize -> crop/mirror/normalise, with the same box distribution and normalisation as the
CPU path in torch/input.py.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from kjob_trainer.torch.input import (EVAL_CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, RRC_RATIO, RRC_SCALE,
                                     DaliUnavailable, FastInputError)


def import_dali() -> Any:
    """Import NVIDIA DALI lazily. Raises DaliUnavailable with the install command."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as e:
        raise DaliUnavailable(
            f"the DALI input pipeline needs NVIDIA DALI, which cannot be imported here ({e}); "
            "install it with `pip install nvidia-dali-cuda130` (CUDA 13, like the torch wheels; "
            "nvidia-dali-cuda120 for CUDA 12) or choose "
            "the torchvision decoder") from e
    return nvidia.dali


class DaliLoader:
    """Batches of (normalised images, int64 labels) torch tensors from an NVIDIA DALI pipeline.

    Built by make_dali_loader; iterate it once per epoch. Length = batches per epoch for
    this rank (the last partial batch is dropped in training, kept in evaluation).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], batch_size: int, *, size: int, train: bool,
                 shuffle: bool, rank: int, world_size: int, device: str, device_id: int, num_threads: int,
                 seed: int, channels_last: bool, dtype: torch.dtype, scale: tuple[float, float], flip: bool,
                 eval_resize: int | None) -> None:
        import_dali()
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.dtype = dtype
        self.channels_last = channels_last
        order = list(samples)
        if shuffle:
            # DALI's own random_shuffle only mixes within a 1,024-file buffer, which on a
            # class-sorted ImageNet list means single-class batches. So: one global seeded
            # shuffle here (the same on every rank, so the shards stay disjoint), and
            # shuffle_after_epoch (same reader seed on every rank) for the later epochs.
            g = torch.Generator().manual_seed(seed)
            order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
        pipe = _dali_pipeline(
            [p for p, _ in order], [int(c) for _, c in order], size=size, train=train, shuffle=shuffle,
            shard_id=rank, num_shards=world_size, device=device, channels_last=channels_last,
            reader_seed=seed, scale=scale, flip=flip, eval_resize=eval_resize,
            batch_size=batch_size, num_threads=num_threads,
            # DALI's CPU-only mode is spelled device_id=None.
            device_id=device_id if device == "gpu" else None,
            seed=seed + 7919 * (rank + 1))  # augmentation: different on every rank
        pipe.build()
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        self._iter = DALIGenericIterator([pipe], ["images", "labels"], reader_name="Reader",
                                         last_batch_policy=policy, auto_reset=True)

    def __len__(self) -> int:
        return len(self._iter)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for out in self._iter:
            images, labels = out[0]["images"], out[0]["labels"]
            if self.channels_last:  # DALI wrote NHWC: the same bytes, viewed as channels-last NCHW
                images = images.permute(0, 3, 1, 2)
            yield images.to(self.dtype), labels.reshape(-1).long()


def _dali_pipeline(files: list[str], labels: list[int], *, size: int, train: bool, shuffle: bool, shard_id: int,
                   num_shards: int, device: str, channels_last: bool, reader_seed: int,
                   scale: tuple[float, float], flip: bool, eval_resize: int | None, **pipe_kwargs: Any) -> Any:
    """The DALI graph: read -> decode (+random crop) -> resize -> crop/flip/normalise."""
    from nvidia.dali import fn, pipeline_def, types

    decode_device = "mixed" if device == "gpu" else "cpu"  # "mixed": nvJPEG, host Huffman + GPU IDCT

    @pipeline_def
    def pipeline() -> Any:
        jpegs, label = fn.readers.file(files=files, labels=labels, shard_id=shard_id, num_shards=num_shards,
                                       shuffle_after_epoch=shuffle, seed=reader_seed, pad_last_batch=True,
                                       name="Reader")
        if train:
            images = fn.decoders.image_random_crop(
                jpegs, device=decode_device, output_type=types.RGB, random_area=list(scale),
                random_aspect_ratio=list(RRC_RATIO), num_attempts=10)
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            mirror = fn.random.coin_flip(probability=0.5) if flip else 0
        else:
            images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=eval_resize or int(round(size / EVAL_CROP_FRACTION)),
                               antialias=True)
            mirror = 0
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="HWC" if channels_last else "CHW",
            crop=(size, size), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), mirror=mirror)
        return images, (label.gpu() if device == "gpu" else label)

    return pipeline(**pipe_kwargs)


def make_dali_loader(samples: Sequence[tuple[str, int]], batch_size: int, *, size: int = 224,
                     train: bool = True, rank: int = 0, world_size: int = 1,
                     device: str = "gpu", device_id: int = 0, num_threads: int = 4,
                     seed: int = 0, channels_last: bool = False, dtype: torch.dtype = torch.float32,
                     shuffle: bool | None = None, scale: tuple[float, float] = RRC_SCALE, flip: bool = True,
                     eval_resize: int | None = None) -> DaliLoader:
    """A DALI loader yielding (normalised images, int64 labels) torch tensors per batch.

    device="gpu" decodes with nvJPEG ("mixed") and augments on GPU `device_id`;
    device="cpu" runs the whole pipeline on CPU threads (for testing without a GPU).
    Each rank reads its own 1/world_size shard. shuffle (default: train) shuffles every
    epoch; shuffle=False reads `samples` in the order given (the trainer passes each rank's
    own, already shuffled list with rank=0, world_size=1). scale/flip/eval_resize as in
    input.py's image_transform. Raises DaliUnavailable when DALI is not
    installed (checked first, so the message is the same on every machine) or no GPU is
    visible for device="gpu"; FastInputError for bad arguments.
    """
    import_dali()
    if device not in ("gpu", "cpu"):
        raise FastInputError(f"DALI device must be gpu or cpu, got {device!r}")
    if device == "gpu" and not torch.cuda.is_available():
        raise DaliUnavailable("the DALI input pipeline with device=gpu needs a CUDA GPU, and none is "
                              "visible; use the torchvision decoder (or DALI device=cpu) here")
    if batch_size < 1 or not samples:
        raise FastInputError("the DALI loader needs batch size >= 1 and at least one sample")
    return DaliLoader(samples, batch_size, size=size, train=train, shuffle=train if shuffle is None else shuffle,
                      rank=rank, world_size=world_size, device=device, device_id=device_id,
                      num_threads=num_threads, seed=seed, channels_last=channels_last, dtype=dtype,
                      scale=scale, flip=flip, eval_resize=eval_resize)
