"""The real node joined to the control plane of tests/cluster (controlplane.py, the same
processes as tier 3: etcd, kube-apiserver, controller-manager, scheduler, mpi-operator,
training-operator, kwok), with kwok restricted to nodes labelled `type=kwok` and none of
them made, so that every pod lands on the one real kubelet (kubelet.py) beside CoreDNS
(coredns.py). One per test session (conftest.py `node_cluster`); each test gets its own
namespace (`namespace()`): Pod Security `restricted` enforced, with the checkpoint claim
kjob's specs mount bound to a hostPath directory owned by uid 1000."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "cluster"))

from controlplane import ControlPlane, build_dir  # noqa: E402
from coredns import CoreDNS  # noqa: E402
from kubelet import NODE_IP, Kubelet  # noqa: E402
from pki import node_credentials  # noqa: E402
from waiting import wait_for  # noqa: E402

NODE = "kjob-node"
CLAIM = "kjob-checkpoints"


def init_container_template(image: str) -> str:
    """training-operator's init container for PyTorchJob workers (it waits until the
    master's name resolves), as its --pytorch-init-container-template-file takes it
    (pkg/controller.v1/pytorch/initcontainer.go; Go template: MasterAddr, MaxTries). Its
    default image (alpine:3.10) cannot be pulled here and its container has no
    securityContext, which `restricted` refuses; this one runs the trainer image, which
    the node has, as restricted asks (the pod's securityContext gives the user)."""
    return yaml.safe_dump([{
        "name": "init-pytorch", "image": image, "imagePullPolicy": "IfNotPresent",
        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}, "requests": {"cpu": "50m", "memory": "32Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "command": ["sh", "-c", "err=1; for i in $(seq {{.MaxTries}}); do if getent hosts {{.MasterAddr}}; then err=0; break; fi; "
                    "echo waiting for master; sleep 2; done; exit $err"],
    }], sort_keys=False)


class NodeCluster:
    def __init__(self, root: Path, node_bins: Path, init_image: str) -> None:
        self.root, self.node_bins, self.init_image = root.resolve(), node_bins, init_image
        self.plane: ControlPlane | None = None
        self.dns: CoreDNS | None = None
        self.kubelet: Kubelet | None = None

    def start(self) -> "NodeCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        template = self.root / "init-pytorch.yaml"
        template.write_text(init_container_template(self.init_image))
        self.plane = ControlPlane(self.root / "plane", build_dir(), kwok_nodes=0, kwok_selector="type=kwok",
                                  extra_args={"training-operator": [f"--pytorch-init-container-template-file={template}"]})
        try:
            self.plane.start()
            pki = self.plane.pki
            kubeconfig, serving = node_credentials(self.root / "node-pki", name=NODE, node_ip=NODE_IP, server=self.plane.api.server,
                                                   ca=(pki.ca_crt, pki.ca_key))
            self.dns = CoreDNS(self.root / "coredns", self.node_bins / "coredns", self.plane.kubeconfig).start()
            self.kubelet = Kubelet(self.root / "kubelet", self.node_bins, name=NODE, kubeconfig=kubeconfig, client_ca=pki.ca_crt,
                                   serving_cert=serving, cluster_dns=NODE_IP).start()
            wait_for(f"Node {NODE} Ready", self._ready, 180, alive=self.alive, interval=0.25)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        node = self.plane.api.get(f"/api/v1/nodes/{NODE}") or {}
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))

    def alive(self) -> None:
        self.plane.check_alive()
        if self.dns:
            self.dns.alive()
        if self.kubelet:
            self.kubelet.alive()

    def namespace(self, ns: str, kubeconfig: Path) -> Path:
        """Make namespace `ns` (Pod Security restricted) with claim kjob-checkpoints bound
        to a fresh hostPath directory, which is returned; write a kubeconfig for it."""
        api = self.plane.api
        api.create("/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        ckpt = self.root / "volumes" / ns
        ckpt.mkdir(parents=True)
        # The kubelet applies no fsGroup to a hostPath volume: the trainer (uid 1000) owns it.
        os.chown(ckpt, 1000, 1000)
        pv = f"{ns}-{CLAIM}"[:63]
        api.create("/api/v1/persistentvolumes", {"metadata": {"name": pv}, "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(ckpt), "type": "Directory"},
            "claimRef": {"namespace": ns, "name": CLAIM}}})
        api.create(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {"metadata": {"name": CLAIM}, "spec": {
            "accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}})
        wait_for(f"default ServiceAccount in {ns}", lambda: api.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default"), 60)
        wait_for(f"claim bound in {ns}", lambda: (api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{CLAIM}") or {})
                 .get("status", {}).get("phase") == "Bound", 60)
        self.plane.kubeconfig_for(kubeconfig, namespace=ns)
        return ckpt

    def stop(self) -> None:
        if self.kubelet:
            self.kubelet.stop()
        if self.dns:
            self.dns.stop()
        if self.plane:
            self.plane.stop()
