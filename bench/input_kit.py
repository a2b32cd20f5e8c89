"""Loader helpers for the benchmarks (and their tests): a dataset over (path, label) pairs,
DataLoader options, and a folder scanner. Not part of the trainer, which has its own
dataset, sampler and error policy (kjob_trainer.torch.data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from kjob_trainer.torch.input import FastInputError, image_transform


class FastImageDataset(torch.utils.data.Dataset):
    """(path, label) samples -> (uint8 (3, size, size) tensor, label), decoded by `decoder`.

    `decoder` is "torchvision" or "pil" (DALI has its own loader: kjob_trainer.torch.dali.make_dali_loader).
    Raises FastInputError for an unknown decoder; __getitem__ raises CorruptImage.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], *, size: int = 224, train: bool = True,
                 decoder: str = "torchvision") -> None:
        self.samples = list(samples)
        self.decoder = decoder
        self.transform = image_transform(decoder, size, train=train)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(path), label


@dataclass(frozen=True)
class LoaderOptions:
    """DataLoader settings of the fast path. pin_memory=None means "when CUDA is available"."""

    num_workers: int = 4
    pin_memory: bool | None = None
    persistent_workers: bool = True
    prefetch_factor: int = 4
    drop_last: bool = True

    def dataloader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for torch's DataLoader; worker-only options only with workers.

        Raises FastInputError for a negative worker count or prefetch factor below 1.
        """
        if self.num_workers < 0:
            raise FastInputError(f"loader workers must be >= 0, got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise FastInputError(f"prefetch factor must be >= 1, got {self.prefetch_factor}")
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        kwargs: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": pin,
                                  "drop_last": self.drop_last}
        if self.num_workers > 0:
            # torch refuses these two without worker processes.
            kwargs["persistent_workers"] = self.persistent_workers
            kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, *, sampler: Any = None,
                shuffle: bool = False, options: LoaderOptions = LoaderOptions(),
                seed: int | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader of uint8 batches with the fast-path options. Raises FastInputError."""
    if batch_size < 1:
        raise FastInputError(f"batch size must be >= 1, got {batch_size}")
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle and sampler is None,
        generator=generator, **options.dataloader_kwargs())




def scan_image_folder(root: str | Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) for root/<class>/<file> in sorted order, and the class names.

    A small scanner for the benchmarks and tests; the trainer's own data module handles list
    files and its error policy. Raises FastInputError for a missing or empty folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FastInputError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir()) if f.is_file()]
    if not samples:
        raise FastInputError(f"{root}: no images in class folders")
    return samples, classes
