"""A real kubelet runs real containers on this machine (marker `node`): standalone, with no
API server, it starts a static pod of the PyTorch trainer image as the rendered pods run
(uid 1000, non-root, every capability dropped, seccomp RuntimeDefault), on the CNI bridge,
and the trainer's --help runs to exit 0."""

from __future__ import annotations

import json

import pytest
import yaml

from kubelet import Kubelet
from waiting import wait_for

pytestmark = [pytest.mark.node, pytest.mark.timeout(1800)]

POD = "trainer-help"


def static_pod(image: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "trainer", "image": image, "imagePullPolicy": "Never",
                "command": ["python", "-m", "kjob_trainer.train", "--help"],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


def test_static_pod_runs_the_trainer(node_bins, images, tmp_path):
    kubelet = Kubelet(tmp_path / "kubelet", node_bins).start()
    try:
        # Written whole, then renamed: the kubelet skips dot files and reads the rest at once.
        (kubelet.manifests / f".{POD}.yaml").write_text(yaml.safe_dump(static_pod(images["pytorch"])))
        (kubelet.manifests / f".{POD}.yaml").rename(kubelet.manifests / f"{POD}.yaml")

        def exited():
            got = kubelet.containers(**{"io.kubernetes.container.name": "trainer"})
            return got if got and got[0]["state"] == "CONTAINER_EXITED" else None

        (container,) = wait_for("the static pod's container to exit", exited, 300, alive=kubelet.alive, interval=0.25)
        status = json.loads(kubelet.crictl("inspect", container["id"]))["status"]
        logs = kubelet.crictl("logs", container["id"])
        assert status["exitCode"] == 0, (status, logs[-2000:])
        assert "--output-path" in logs and "--synthetic" in logs
        assert container["labels"]["io.kubernetes.pod.name"] == f"{POD}-{kubelet.name}"
        (sandbox,) = [s for s in kubelet.pod_sandboxes() if s["id"] == container["podSandboxId"]]
        net = json.loads(kubelet.crictl("inspectp", sandbox["id"]))["status"]["network"]
        assert net["ip"].startswith("10.244.0."), net
    finally:
        kubelet.stop()
    assert not kubelet.pod_sandboxes()
