"""Fixtures of the real-node tier (marker `node`): the node's binaries
(tests/cluster/build.sh --set node) and the trainer images (images/build-local.sh), both
cached outside the clone. The harness (process supervision, waiting, PKI, builds) is
tests/cluster's."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cluster"))
sys.path.insert(0, str(HERE))

from builds import build_dir, hold  # noqa: E402
from runtime import IMAGES, build_images  # noqa: E402


def pytest_collection_modifyitems(items):
    """The standalone kubelet's test first: the joined kubelet (`node_cluster`) lives until
    the session ends, and two kubelets on one containerd would each take the other's pods
    and cgroups for their own. Tests on Trainer v2 (`node_trainer_v2`) last: make test's
    background build of the trainer set may still be going when the tier starts."""
    items.sort(key=lambda item: (item.path.name != "test_kubelet_standalone.py", "node_trainer_v2" in getattr(item, "fixturenames", ())))


@pytest.fixture(scope="session")
def node_bins() -> Path:
    """bin/ holding kubelet, coredns and crictl; its build folder is held in use (so no
    other checkout's build removes it) until the session ends."""
    if os.geteuid() != 0:
        pytest.fail("the node tier runs containerd, podman and a kubelet: it needs root (make e2e as root)")
    built = build_dir("node")
    lock = hold(built)
    try:
        yield built / "bin"
    finally:
        os.close(lock)


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """framework -> tag of the trainer images, built and loaded into the node's containerd."""
    if os.geteuid() != 0:
        pytest.fail("the node tier runs containerd, podman and a kubelet: it needs root (make e2e as root)")
    build_images(*IMAGES)
    return dict(IMAGES)


@pytest.fixture(scope="session")
def pytorch_image() -> str:
    """The PyTorch trainer image alone (the cluster and most runs need only it), built and
    loaded: it does not wait for the MindSpore image's build."""
    if os.geteuid() != 0:
        pytest.fail("the node tier runs containerd, podman and a kubelet: it needs root (make e2e as root)")
    build_images("pytorch")
    return IMAGES["pytorch"]


@pytest.fixture(scope="session")
def node_trainer_v2(node_cluster):
    """`node_cluster` with Kubeflow Trainer v2 and JobSet started into its control plane
    (tests/cluster/trainer_v2.py: CRDs, both controllers, their webhooks on 127.0.0.1);
    their build folder (build.sh --set trainer) is waited for or built, and held in use."""
    node_cluster.plane.start_trainer(build_dir("trainer"))
    return node_cluster


@pytest.fixture(scope="session")
def node_cluster(node_bins, pytorch_image, tmp_path_factory):
    """The control plane of tests/cluster with the real kubelet joined (cluster.py), once
    per session: it holds the machine's control-plane lock while it runs."""
    from cluster import NodeCluster

    t0 = time.monotonic()
    cluster = NodeCluster(tmp_path_factory.mktemp("node-cluster"), node_bins, pytorch_image).start()
    print(f"\n[node tier] control plane and joined kubelet up in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    try:
        yield cluster
    finally:
        cluster.stop()
