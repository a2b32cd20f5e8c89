"""Shared helpers of the trainer tests: launching the trainer (alone or under mpirun),
stopping it by a signal at step 2, and writing small image datasets in the ImageNet
folder layout."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import psutil
import pytest

from kjob.local.waiter import SESSION_BASE_VAR
from timing import scaled

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MPIRUN = VENV_BIN / "mpirun"


def mpirun_prefix(np_: int) -> list[str]:
    """mpirun with the flags this machine needs (root in CI, 2 cores)."""
    cmd = [str(MPIRUN), "-np", str(np_), "--oversubscribe", "--bind-to", "none"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd


# mpirun's session folders of this test process, one fresh folder per launch: a test that
# kills mpirun leaves its folder behind, and a later mpirun given the same pid would fail
# on it (see kjob.local.waiter) if they shared /tmp.
_SESSIONS = Path(tempfile.mkdtemp(prefix="kjob-tests-mpi-"))
atexit.register(shutil.rmtree, _SESSIONS, ignore_errors=True)


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    # One compute thread per rank: 8 ranks share 2 cores; more threads only thrash.
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
    env[SESSION_BASE_VAR] = tempfile.mkdtemp(dir=_SESSIONS)
    env.pop("KJOB_DEBUG", None)
    return env


def trainer_cmd(*args: str, np_: int | None = None, module: str = "kjob_trainer.train") -> list[str]:
    base = [sys.executable, "-m", module, *args]
    return mpirun_prefix(np_) + base if np_ else base


def run_trainer(*args: str, np_: int | None = None, timeout: float = 240, module: str = "kjob_trainer.train",
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the trainer (under mpirun with `np_` ranks) to its end."""
    return subprocess.run(trainer_cmd(*args, np_=np_, module=module), capture_output=True, text=True,
                          timeout=scaled(timeout), env=env or trainer_env(), cwd=REPO)


def index_of(out: Path) -> dict:
    """The trainer's checkpoints/index.json under `out`, {} while there is none."""
    try:
        return json.loads((out / "checkpoints" / "index.json").read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def no_stray_processes():
    """Kill, on the way out, every process this one started meanwhile and left running
    (a failed assertion must not leave a wrapper and its children behind for the next
    test to count)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    try:
        yield
    finally:
        for p in me.children(recursive=True):
            if p.pid not in before:
                with contextlib.suppress(psutil.Error):
                    p.kill()


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll `predicate` while `proc` runs; fail when it exits first or after scaled(timeout) s."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"trainer exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def signal_stop_run(tmp_path: Path, send, *, launch: Sequence[str] = ()) -> tuple[int, str, Path]:
    """Train 2 ranks of the PyTorch trainer under mpirun (run by `launch`, a command that
    starts it, if given); at step 2 call send(the process started); returns (exit code,
    log, output)."""
    out = tmp_path / "out"
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([*launch, *trainer_cmd("--synthetic", "--synthetic-samples", "4000", "--num-classes", "5",
                                                       "--image-size", "24", "--batch-size", "2", "--workers", "0",
                                                       "--log-interval", "1", "--epochs", "1", "--output-path", str(out),
                                                       np_=2)],
                                stdout=log, stderr=subprocess.STDOUT, env=trainer_env(), cwd=REPO)
        try:
            wait_for(lambda: "step 2/" in (tmp_path / "log").read_text(), proc, 240, "step 2")
            send(proc)
            code = proc.wait(timeout=scaled(120))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, (tmp_path / "log").read_text(), out


def assert_loadable_step_checkpoint(out: Path) -> None:
    """The latest checkpoint of a signal_stop_run is a step checkpoint the model loads."""
    from kjob_trainer.torch.models import build_model
    from kjob_trainer.torch.state import load_state, restore_model

    index = index_of(out)
    assert index["latest"].startswith("step-")
    state = load_state(out / "checkpoints" / index["latest"])
    assert state["step"] >= 2 and state["batches"] == state["step"]
    restore_model(build_model("resnext50_32x4d", 5), state, Path(index["latest"]))


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
