"""PyTorch image input: JPEG bytes -> augmented uint8 tensors -> normalised device batches.

Three decoders, one output format (uint8 CHW in the workers, normalised on the device):

- ``"torchvision"`` (default): ``torchvision.io.decode_jpeg`` (libjpeg-turbo) straight into a
  tensor, then random-resized-crop / flip / resize on the uint8 tensor. No PIL object, no
  float image on the CPU.
- ``"pil"``: the classic ``PIL.Image.open`` + torchvision PIL transforms, for comparison and
  for formats torchvision cannot decode.
- ``"dali"``: NVIDIA DALI (``pip install nvidia-dali-cuda130``), decoding with nvJPEG on the
  GPU for nodes whose CPUs cannot keep up: a whole loader, in torch/dali.py, which imports
  DALI only when asked for.

Workers ship uint8 images (4x less inter-process and host-to-device traffic than float32);
``normalize_batch`` / ``DevicePrefetcher`` turn them into normalised float tensors on the
device. Augmentation follows the config: random-resized crop, flip, then the recipe's
colour jitter or AutoAugment (torchvision's v2 transforms, which work on uint8 tensors); all
of it draws from torch's RNG, which `torch_data.ImageDataset` seeds per sample, so a resumed
run makes the same crops. (The loader helpers the benchmarks use live in bench/input_kit.py.)
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from kjob_trainer.common.errors import BadInput

# ImageNet statistics on the 0..255 scale, because the batches arrive as uint8.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Eval resizes the short side to size / 0.875 (256 for 224) then center-crops: the standard recipe.
EVAL_CROP_FRACTION = 0.875
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Decoders that run inside DataLoader workers (DALI is a loader of its own: torch/dali.py).
WORKER_DECODERS = ("torchvision", "pil")
JPEG_MAGIC = b"\xff\xd8\xff"


class FastInputError(BadInput):
    """Bad input for the pipeline (unknown decoder, missing DALI, bad option). Exit code 2."""


class DaliUnavailable(FastInputError):
    """The DALI pipeline was asked for but NVIDIA DALI cannot be imported (or has no GPU)."""


class CorruptImage(FastInputError, ValueError):
    """A file could not be decoded as an image; the message names the file.

    Also a ValueError, so the trainer's skip-and-count policy for corrupt images
    (data.ImageDataset) catches it like PIL's own decode errors.
    """


# --------------------------------------------------------------------------- decoding


def decode_rgb(data: torch.Tensor, path: str | Path = "<bytes>") -> torch.Tensor:
    """Decode encoded image bytes (1-D uint8 tensor) to a uint8 RGB tensor of shape (3, H, W).

    JPEGs go through ``torchvision.io.decode_jpeg`` (libjpeg-turbo); anything else (ImageNet
    has a few PNGs and CMYK files named .JPEG) through ``decode_image``, forced to RGB.
    Raises CorruptImage (naming `path`) when the bytes are not a decodable image.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec (not installed
        # here); they still work, so the per-call warning is muted, not the decoder.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if bytes(data[:3].tolist()) != JPEG_MAGIC:
                return decode_image(data, mode=ImageReadMode.RGB)
            # The file's own colour space first: for the usual YCbCr JPEG that is already RGB,
            # and it decodes ~1.6x faster than mode=RGB (measured; see BENCHMARKS.md).
            img = decode_jpeg(data)
            if img.shape[0] == 1:
                return img.expand(3, -1, -1)
            if img.shape[0] != 3:  # CMYK and friends: let libjpeg-turbo convert
                img = decode_jpeg(data, mode=ImageReadMode.RGB)
            return img
    except RuntimeError as e:
        raise CorruptImage(f"{path}: cannot decode image ({str(e).splitlines()[0]})") from e


def read_rgb(path: str | Path) -> torch.Tensor:
    """Read and decode one image file to uint8 (3, H, W). Raises CorruptImage, OSError."""
    data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    return decode_rgb(data, path)


# --------------------------------------------------------------------------- transforms


def rrc_params(height: int, width: int, u: Sequence[float], scale: tuple[float, float] = RRC_SCALE,
               ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized-crop box, torchvision's algorithm, from uniforms `u`.

    Up to 10 tries of (area fraction in `scale`, log-uniform aspect in `ratio`) that fit in the
    image, else a center crop at the clamped ratio. `u` holds >= 22 numbers in [0, 1):
    two per try plus two for the position. Taking them as one torch.rand() keeps torch's
    seeding (and the loader's per-worker seeds) while costing one op instead of ~40 small
    ones (torchvision's get_params spends ~0.3 ms per image on them).
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * k])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * k + 1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[20] * (height - h + 1))
            left = int(u[21] * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _recipe_ops(api: Any, *, color_jitter: float, auto_augment: str | None) -> list:
    """The recipe's colour augmentation after crop and flip, from torchvision `api`
    (transforms.v2 for uint8 tensors, transforms for PIL images)."""
    ops = []
    if color_jitter:
        ops.append(api.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    if auto_augment:
        ops.append(api.AutoAugment(api.AutoAugmentPolicy.IMAGENET))
    return ops


class TensorTrainTransform:
    """Random-resized-crop + horizontal flip of a uint8 (3, H, W) tensor to (3, size, size),
    then the recipe's colour jitter and/or AutoAugment (ImageNet policy), still uint8.

    Same box distribution as torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3)
    from torch's RNG, so DataLoader's per-worker seeding applies; the resize is antialiased
    bilinear on uint8, which torch runs with a vectorised integer kernel.
    """

    def __init__(self, size: int, *, flip: bool = True, scale: tuple[float, float] = RRC_SCALE,
                 color_jitter: float = 0.0, auto_augment: str | None = None) -> None:
        from torchvision.transforms import v2

        self.size = size
        self.flip = flip
        self.scale = scale
        self.recipe = _recipe_ops(v2, color_jitter=color_jitter, auto_augment=auto_augment)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        u = torch.rand(23).tolist()
        top, left, h, w = rrc_params(img.shape[-2], img.shape[-1], u, self.scale)
        out = F.resized_crop(img, top, left, h, w, [self.size, self.size], antialias=True)
        if self.flip and u[22] < 0.5:
            out = out.flip(-1)
        for op in self.recipe:
            out = op(out)
        return out


class TensorEvalTransform:
    """Resize the short side to `resize` (default size/0.875), or the whole image to
    resize x resize with square=True, then center-crop size x size (uint8 in, uint8 out)."""

    def __init__(self, size: int, *, resize: int | None = None, square: bool = False) -> None:
        self.size = size
        self.resize = resize or int(round(size / EVAL_CROP_FRACTION))
        self.square = square

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        out = F.resize(img, [self.resize, self.resize] if self.square else [self.resize], antialias=True)
        return F.center_crop(out, [self.size, self.size])


def pil_transform(size: int, *, train: bool, scale: tuple[float, float] = RRC_SCALE,
                  resize: int | None = None, flip: bool = True, color_jitter: float = 0.0,
                  auto_augment: str | None = None, square: bool = False) -> Callable[[Any], torch.Tensor]:
    """The classic torchvision PIL pipeline, ending in a uint8 (3, size, size) tensor."""
    from torchvision import transforms as T

    if train:
        steps = [T.RandomResizedCrop(size, scale=scale, ratio=RRC_RATIO)]
        steps += [T.RandomHorizontalFlip()] if flip else []
        steps += _recipe_ops(T, color_jitter=color_jitter, auto_augment=auto_augment)
    else:
        side = resize or int(round(size / EVAL_CROP_FRACTION))
        steps = [T.Resize((side, side) if square else side), T.CenterCrop(size)]
    return T.Compose([*steps, T.PILToTensor()])


def load_pil_rgb(path: str | Path) -> Any:
    """Open an image with PIL as RGB. Raises CorruptImage naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise CorruptImage(f"{path}: cannot decode image ({e})") from e


def image_transform(decoder: str, size: int, *, train: bool, scale: tuple[float, float] = RRC_SCALE,
                    eval_resize: int | None = None, flip: bool = True, normalize: bool = False,
                    color_jitter: float = 0.0, auto_augment: str | None = None,
                    eval_square: bool = False) -> Callable[[str], torch.Tensor]:
    """path -> (3, size, size) tensor: read, decode with `decoder`, augment (train) or
    resize + center-crop (eval). uint8 by default; normalize=True gives the ImageNet-normalised
    float32 tensor a dataset that does not normalise on the device expects.

    Raises FastInputError for a decoder other than "torchvision" or "pil" or a bad size;
    the returned function raises CorruptImage for an undecodable file.
    """
    if decoder not in WORKER_DECODERS:
        hint = " (DALI is a whole loader of its own: kjob_trainer.torch.dali.make_dali_loader)" if decoder == "dali" else ""
        raise FastInputError(f"unknown image decoder {decoder!r}: choose torchvision or pil{hint}")
    if size < 1:
        raise FastInputError(f"image size must be >= 1, got {size}")
    recipe = {"color_jitter": color_jitter, "auto_augment": auto_augment}
    if decoder == "torchvision":
        tf: Callable[[Any], torch.Tensor] = (TensorTrainTransform(size, scale=scale, flip=flip, **recipe) if train
                                             else TensorEvalTransform(size, resize=eval_resize, square=eval_square))
        load: Callable[[str], Any] = read_rgb
    else:
        tf = pil_transform(size, train=train, scale=scale, resize=eval_resize, flip=flip, square=eval_square, **recipe)
        load = load_pil_rgb

    def transform(path: str) -> torch.Tensor:
        out = tf(load(path))
        return normalize_batch(out.unsqueeze(0))[0] if normalize else out

    return transform


# --------------------------------------------------------------------------- device side


@functools.lru_cache(maxsize=None)
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std as (1, 3, 1, 1) float32 tensors on `device`, made once per device:
    building them per batch would be a small blocking host-to-device copy every step."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    inv_std = torch.tensor([1.0 / s for s in IMAGENET_STD], dtype=torch.float32).view(1, 3, 1, 1)
    return mean.to(device), inv_std.to(device)


def normalize_batch(images: torch.Tensor, *, device: torch.device | str | None = None,
                    channels_last: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised `dtype` tensor on `device` (ImageNet mean/std).

    The copy is non-blocking (it overlaps compute when the batch is in pinned memory) and
    the float conversion happens on the device, where it is nearly free.
    """
    device = torch.device(device) if device is not None else images.device
    x = images.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean, inv_std = _imagenet_stats(device)
    out = (x.float() - mean) * inv_std
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out.to(dtype)


class DevicePrefetcher:
    """Iterate (uint8 images, labels, *rest) batches as (normalised device images, device
    labels, *rest), one batch ahead; `rest` (e.g. sample ids) passes through untouched.

    On CUDA the copy + normalisation of batch i+1 runs on a side stream while the model
    works on batch i; elsewhere it is plain sequential normalisation.
    """

    def __init__(self, batches: Iterable[tuple[torch.Tensor, ...]], device: torch.device | str,
                 *, channels_last: bool = False, dtype: torch.dtype = torch.float32) -> None:
        self.batches = batches
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.dtype = dtype

    def _prepare(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        images, labels, *rest = batch
        x = normalize_batch(images, device=self.device, channels_last=self.channels_last, dtype=self.dtype)
        return x, torch.as_tensor(labels).to(self.device, non_blocking=True), *rest

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.device.type != "cuda":
            for batch in self.batches:
                yield self._prepare(batch)
            return
        stream = torch.cuda.Stream(self.device)
        pending = None
        for batch in self.batches:
            with torch.cuda.stream(stream):
                ready = self._prepare(batch)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for t in ready[:2]:
                t.record_stream(torch.cuda.current_stream(self.device))
            pending = ready
        if pending is not None:
            yield pending
