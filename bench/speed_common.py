"""Shared by the training-speed benchmarks (bench_input, bench_gpu_step, bench_end_to_end):
the machine/version banner every benchmark prints, and the generated-JPEG folder."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
# Where the benchmarks generate their JPEGs unless --data is given (reused between runs).
DEFAULT_JPEG_DIR = Path(os.environ.get("KJOB_BENCH_JPEGS", "/tmp/kjob-bench-jpegs"))


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def torchvision_libjpeg_version() -> str:
    """The libjpeg-turbo version bundled in torchvision's wheel (read from the library)."""
    import torchvision

    libs = Path(torchvision.__file__).parent.parent / "torchvision.libs"
    for lib in sorted(libs.glob("libjpeg*.so*")):
        found = re.search(rb"libjpeg-turbo version ([0-9.]+)", lib.read_bytes())
        if found:
            return f"libjpeg-turbo {found.group(1).decode()}"
    return "libjpeg (version not found in the wheel)"


def pil_libjpeg_version() -> str:
    """PIL's JPEG library, as PIL.features reports it."""
    from PIL import features

    turbo = features.version_feature("libjpeg_turbo")
    return f"libjpeg-turbo {turbo}" if turbo else f"libjpeg {features.version_codec('jpg')}"


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def banner(title: str, settings: dict) -> str:
    """Lines naming the machine, versions and settings, printed before the numbers."""
    import PIL
    import torch
    import torchvision

    lines = [f"== {title}",
             f"machine: {cpu_model()}, {usable_cores()} usable cores of {os.cpu_count()}, "
             f"GPU: {gpu_name() or 'none'}, load average {os.getloadavg()[0]:.1f} (shared machine)",
             f"python {platform.python_version()}, torch {torch.__version__}, "
             f"torchvision {torchvision.__version__} (decoder {torchvision_libjpeg_version()}), "
             f"Pillow {PIL.__version__} (decoder {pil_libjpeg_version()}), "
             f"torch threads {torch.get_num_threads()}",
             "settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    return "\n".join(lines)


def ensure_jpegs(folder: Path | None, *, classes: int = 4, per_class: int = 100) -> Path:
    """The JPEG folder to read: `folder` if given, else generate (once) the default one.

    Raises SystemExit(2) with a one-line message when the folder is missing or generation fails.
    """
    if folder is not None:
        if not (folder / "train").is_dir():
            _fail(f"{folder}/train does not exist (make one with bench/make_jpegs.py)")
        return folder
    cmd = [sys.executable, str(BENCH_DIR / "make_jpegs.py"), str(DEFAULT_JPEG_DIR),
           "--classes", str(classes), "--per-class", str(per_class), "--val-per-class", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        _fail(f"generating JPEGs failed: {done.stderr.strip()}")
    return DEFAULT_JPEG_DIR


def _fail(message: str) -> None:
    """One error line on stderr and exit 2 (bad input), the project's convention."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
