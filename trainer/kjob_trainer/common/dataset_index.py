"""Finding the images of an ImageNet-layout dataset, and checking it before training.

Framework-neutral (no torch): both trainers and `evaluate` use it.

Accepted layouts of `--data-path DIR`:
- `DIR/train/<class>/*.JPEG` and optional `DIR/val/<class>/*` (torchvision, MindCV);
- `DIR/train_list.txt` / `DIR/val_list.txt`: lines `relative/path.JPEG <label>`, paths
  relative to DIR (PaddleClas, the MindSpore model zoo);
- `DIR` is itself the train folder (`.../imagenet/train`, as the MindSpore GPU reference
  passes it); its sibling `val/` is the val split.
Classes are the sorted folder names, so every rank and framework maps them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kjob_trainer.common.errors import BadInput

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


@dataclass(frozen=True)
class Split:
    """One split: parallel tuples of image paths and integer labels, plus class names."""

    name: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_folder(folder: Path, name: str) -> Split:
    """Images of `folder/<class>/*`. Raises BadInput for no classes or an empty class."""
    try:
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise BadInput(f"dataset: cannot read {folder} ({e.strerror or e})") from e
    if not classes:
        raise BadInput(f"dataset: {folder} has no class folders (expected {folder}/<class>/<image>)")
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        files = sorted(f for f in os.listdir(folder / cls) if _is_image(f))
        if not files:
            raise BadInput(f"dataset: empty class folder {folder / cls} (no {'/'.join(IMAGE_EXTENSIONS[:3])} files)")
        paths.extend(str(folder / cls / f) for f in files)
        labels.extend([label] * len(files))
    return Split(name, tuple(paths), tuple(labels), tuple(classes))


def read_list(root: Path, list_file: Path, name: str) -> Split:
    """Images of a `path label` list file. Raises BadInput for malformed lines."""
    paths: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise BadInput(f"dataset: {list_file}:{lineno}: expected 'path label', got {line.strip()!r}")
        paths.append(str(root / parts[0]))
        labels.append(int(parts[1]))
    if not paths:
        raise BadInput(f"dataset: {list_file} lists no images")
    count = max(labels) + 1
    missing = sorted(set(range(count)) - set(labels))
    if missing and name == "train":
        raise BadInput(f"dataset: {list_file}: labels run 0..{count - 1} but class {missing[0]} has no images")
    return Split(name, tuple(paths), tuple(labels), tuple(str(i) for i in range(count)))


def find_splits(data_path: str, need_val: bool) -> tuple[Split, Split | None]:
    """(train, val) of a dataset folder; val is None when the dataset has none.

    Raises BadInput for a missing folder, unknown layout, empty class folder, or val classes
    that differ from train's."""
    root = Path(data_path)
    if not root.is_dir():
        raise BadInput(f"dataset folder {data_path} does not exist" if not root.exists() else f"dataset path {data_path} is not a folder")
    if (root / "train").is_dir():
        train = scan_folder(root / "train", "train")
        val_dir = root / "val"
        val = scan_folder(val_dir, "val") if need_val and val_dir.is_dir() else None
    elif (root / "train_list.txt").is_file():
        train = read_list(root, root / "train_list.txt", "train")
        vl = root / "val_list.txt"
        val = read_list(root, vl, "val") if need_val and vl.is_file() else None
    elif root.name == "train" or any(e.is_dir() for e in os.scandir(root)):
        train = scan_folder(root, "train")
        val_dir = root.parent / "val"
        val = scan_folder(val_dir, "val") if need_val and root.name == "train" and val_dir.is_dir() else None
    else:
        raise BadInput(f"dataset: {data_path} has neither train/<class>/ folders nor train_list.txt")
    if val is not None and val.classes != train.classes:
        extra = sorted(set(val.classes) - set(train.classes))
        raise BadInput(
            f"dataset: class mismatch: train has {len(train.classes)} classes, val has {len(val.classes)}"
            + (f" (val-only: {', '.join(extra[:3])})" if extra else ""))
    return train, val


def find_val_split(data_path: str) -> Split:
    """The validation images of DIR for `evaluate`: DIR/val/<class>/*, DIR/val_list.txt, or
    DIR itself holding class folders (as the references pass `.../imagenet/val`).
    Raises BadInput if there are none."""
    root = Path(data_path)
    if not root.is_dir():
        raise BadInput(f"dataset folder {data_path} does not exist")
    if (root / "val").is_dir():
        return scan_folder(root / "val", "val")
    if (root / "val_list.txt").is_file():
        return read_list(root, root / "val_list.txt", "val")
    return scan_folder(root, "val")


def check_num_classes(split: Split, num_classes: int | None) -> int:
    """The model's class count. Raises BadInput if --num-classes disagrees with the data."""
    found = len(split.classes)
    if num_classes is not None and num_classes != found:
        raise BadInput(f"--num-classes {num_classes} does not match the dataset, which has {found} classes")
    return found
