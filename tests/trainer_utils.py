"""Shared helpers of the trainer tests: launching the trainer (alone or under mpirun) and
writing small image datasets in the ImageNet folder layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MPIRUN = VENV_BIN / "mpirun"


def mpirun_prefix(np_: int) -> list[str]:
    """mpirun with the flags this machine needs (root in CI, 2 cores)."""
    cmd = [str(MPIRUN), "-np", str(np_), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    # One compute thread per rank: 8 ranks share 2 cores; more threads only thrash.
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    env.pop("KJOB_DEBUG", None)
    return env


def trainer_cmd(*args: str, np_: int | None = None, module: str = "kjob_trainer.train") -> list[str]:
    base = [sys.executable, "-m", module, *args]
    return mpirun_prefix(np_) + base if np_ else base


def run_trainer(*args: str, np_: int | None = None, timeout: float = 240, module: str = "kjob_trainer.train",
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_cmd(*args, np_=np_, module=module), capture_output=True, text=True,
                          timeout=timeout, env=env or trainer_env(), cwd=REPO)


def write_digits(root: Path, *, val_fraction: float = 0.2, fmt: str = "png", seed: int = 0) -> tuple[int, int]:
    """scikit-learn's 8x8 digits as `root/{train,val}/digit<k>/<i>.<fmt>` (grey 0..16 -> 0..255,
    saved as RGB). A seeded, stratified split. Returns (train count, val count)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = [0, 0]
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        for pos, i in enumerate(idx):
            split = "val" if pos < n_val else "train"
            folder = root / split / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").convert("RGB").save(folder / f"{i:04d}.{fmt}")
            counts[split == "val"] += 1
    return counts[0], counts[1]


def write_tiny_folder(root: Path, classes: int = 2, per_class: int = 3, size: int = 12) -> None:
    """A few random JPEGs per class in `root/train` and `root/val`."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.JPEG", quality=90)


def rank_process(mpirun: subprocess.Popen, rank: int) -> psutil.Process:
    """The trainer process of one rank under `mpirun` (not a helper it started, such as
    MindSpore's scheduler, which inherits the rank's environment)."""
    for child in psutil.Process(mpirun.pid).children(recursive=True):
        try:
            if child.environ().get("OMPI_COMM_WORLD_RANK") == str(rank) and "kjob_trainer.train" in child.cmdline():
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"rank {rank} process not found")
