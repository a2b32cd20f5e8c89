"""The local node's runtime, for the node tier's tests: containerd (tests/node/containerd.sh)
and the images images/build-local.sh made and loaded into it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTAINERD_SH = REPO / "tests" / "node" / "containerd.sh"
BUILD_LOCAL = REPO / "images" / "build-local.sh"
# The tags the examples run (images/README.md); build-local.sh loads them under these names.
IMAGES = {
    "pytorch": "ghcr.io/kjob/kjob-trainer-pytorch:0.1.0",
    "mindspore": "ghcr.io/kjob/kjob-trainer-mindspore:0.1.0",
}
PAUSE_IMAGE = "localhost/kjob/pause:local"
# containerd's default capability set (oci.populateDefaultUnixSpec): `ctr run --cap-drop`
# takes no "ALL", so each is dropped by name, as `drop: [ALL]` does in a pod.
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
                "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")


def containerd() -> str:
    """Start the node's containerd if it is not running; returns its socket.

    It is a machine-wide daemon by design, not a process of the test session, and so not
    under a watchdog (processes.py): images/build-local.sh loads the trainer images into it
    (GBs, minutes) and later sessions find them there; its pods are the kubelet's to
    remove (Kubelet.stop). `tests/node/containerd.sh stop` ends it."""
    out = subprocess.run(["bash", str(CONTAINERD_SH), "start"], check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def build_images(*names: str) -> None:
    """Build (or find unchanged) the images and load them into containerd: minutes cold,
    seconds warm (build-local.sh keeps its caches outside the clone)."""
    subprocess.run(["bash", str(BUILD_LOCAL), *names], check=True)


def ctr(sock: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ctr", "--address", sock, "--namespace", "k8s.io", *args], capture_output=True, text=True,
                          timeout=timeout, check=check)


def run_in_image(sock: str, image: str, argv: list[str], *, mounts: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    """Run argv in a throw-away container of `image` as the image defines it (its USER,
    ENV and WORKDIR), with every capability dropped and runc's default seccomp profile, as
    the rendered pods run. Returns the finished process (not checked)."""
    name = f"kjob-check-{os.getpid()}-{abs(hash((image, tuple(argv)))) % 10**8}"
    mount_args = [a for m in mounts for a in ("--mount", m)]
    drops = [a for c in DEFAULT_CAPS for a in ("--cap-drop", c)]
    return ctr(sock, "run", "--rm", *drops, "--seccomp", *mount_args, image, name, *argv, timeout=timeout, check=False)
