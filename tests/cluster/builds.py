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
    its CRDs; node: kubelet, CoreDNS, crictl); returns the folder holding bin/ (and crds/).
    Raises CalledProcessError when the build fails (its error is on stderr)."""
    out = subprocess.run(["bash", str(BUILD), "--set", tool_set], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


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
