"""The node's kubelet is the control plane's Kubernetes release (no skew), with the same
staging modules; a quick check without building anything (not marked `node`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KUBELET = ROOT / "tests" / "node" / "tools" / "kubelet" / "go.mod"
CONTROL_PLANE = ROOT / "tests" / "cluster" / "tools" / "kubernetes" / "go.mod"


def pins(path: Path) -> tuple[str, dict[str, str]]:
    text = path.read_text()
    version = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", text, re.M).group(1)
    replaces = dict(re.findall(r"^\s*(k8s\.io/\S+) => k8s\.io/\S+ (v\S+)", text, re.M))
    return version, replaces


def test_kubelet_is_the_control_planes_release():
    kubelet, control_plane = pins(KUBELET), pins(CONTROL_PLANE)
    assert kubelet[0] == control_plane[0]
    assert kubelet[1] == control_plane[1]
    # Staging modules at the release's own v0.MINOR.PATCH (v1.34.4 <-> v0.34.4).
    assert set(kubelet[1].values()) == {"v0." + kubelet[0].split(".", 1)[1]}
