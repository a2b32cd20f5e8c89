"""Fixtures of the real-node tier (marker `node`): the node's binaries (build.sh) and the
trainer images (images/build-local.sh), both cached outside the clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from runtime import IMAGES, build_images  # noqa: E402


@pytest.fixture(scope="session")
def node_bins() -> Path:
    """bin/ holding kubelet, coredns and crictl."""
    if os.geteuid() != 0:
        pytest.fail("the node tier runs containerd, podman and a kubelet: it needs root (make e2e as root)")
    out = subprocess.run(["bash", str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1]) / "bin"


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """framework -> tag of the trainer images, built and loaded into the node's containerd."""
    if os.geteuid() != 0:
        pytest.fail("the node tier runs containerd, podman and a kubelet: it needs root (make e2e as root)")
    build_images(*IMAGES)
    return dict(IMAGES)
