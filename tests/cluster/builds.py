"""The real tiers' binaries, built (or found cached) by build.sh, and held in use.

A build folder is ${KJOB_CACHE:-~/.cache/kjob}/<set>/<key>. build.sh removes the folders
of other keys (an older checkout's, a branch's) unless someone holds a lock on their
`in-use.lock`: whoever runs binaries from a folder holds a shared lock on it for as long
as they run (`hold`), build.sh takes an exclusive one, without waiting, before removing.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

BUILD = Path(__file__).resolve().parent / "build.sh"
LOCK = "in-use.lock"


def build_dir(tool_set: str = "cluster") -> Path:
    """Build (or find cached) the binaries of `tool_set` (cluster: the control plane, with
    its CRDs; node: kubelet, CoreDNS, crictl; trainer: Trainer v2, JobSet, the Lua runner,
    their CRDs and webhook configurations); returns the folder holding bin/ (and crds/).
    A build of the same key in progress (make test's background one) is waited for.
    Raises CalledProcessError when the build fails (its error is on stderr)."""
    out = subprocess.run(["bash", str(BUILD), "--set", tool_set], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def cached_dir(tool_set: str) -> Path | None:
    """The build folder of `tool_set` if it is complete, else None (builds nothing)."""
    out = subprocess.run(["bash", str(BUILD), "--set", tool_set, "--print-dir"], check=True, stdout=subprocess.PIPE, text=True).stdout
    folder = Path(out.strip().splitlines()[-1])
    return folder if (folder / "complete").exists() else None


def building(tool_set: str) -> bool:
    """Whether a build.sh is building `tool_set`'s current key now (it holds the folder's
    exclusive build lock): build_dir would wait for it rather than build again."""
    out = subprocess.run(["bash", str(BUILD), "--set", tool_set, "--print-dir"], check=True, stdout=subprocess.PIPE, text=True).stdout
    lock = Path(out.strip().splitlines()[-1]) / "build.lock"
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class BuildGone(RuntimeError):
    pass


def hold(built: Path) -> int:
    """Take a shared lock on the build folder `built` and return its file descriptor (close
    it to let go). Raises BuildGone when the folder was removed before the lock was taken
    (another checkout's build.sh found it unused a moment earlier) or is not a finished
    build: build it again."""
    lock = built / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise BuildGone(f"{built} is gone or incomplete (another key's build.sh may have pruned it); build again") from None
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a build.sh removes it
    try:
        same = os.stat(lock).st_ino == os.fstat(fd).st_ino and (built / "complete").exists()
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        raise BuildGone(f"{built} is gone or incomplete (another key's build.sh may have pruned it); build again")
    return fd
