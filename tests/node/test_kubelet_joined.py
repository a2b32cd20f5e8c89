"""The kubelet joined to a real control plane (marker `node`): it registers its Node and
goes Ready; in a namespace whose Pod Security admission enforces `restricted`, the real
scheduler places a pod of the PyTorch image on it, with a checkpoint claim bound to a
hostPath volume; inside, CoreDNS resolves a headless Service's pod name (what mpi-operator's
hostfile and training-operator's MASTER_ADDR rely on); the API server serves the pod's
logs and an exec through the kubelet (what `kjob logs` and `kjob fetch-ckpt` use)."""

from __future__ import annotations

import gc

import pytest
from kubernetes import client, config
from kubernetes.stream import stream

from cluster import NODE
from waiting import wait_for

pytestmark = [
    pytest.mark.node, pytest.mark.timeout(1800),
    # The kubernetes client's exec websocket leaves its TLS socket to the garbage collector
    # even after close(); collected in the fixture's teardown, it is reported there.
    pytest.mark.filterwarnings("ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"),
]

NS = "kjob-e2e"
RESTRICTED = {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SC = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod(name: str, image: str, script: str, mounts: list[dict] | None = None, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name.split("-")[0]}},
            "spec": {"securityContext": RESTRICTED, "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": ["bash", "-c", script],
                                     "securityContext": CONTAINER_SC, "volumeMounts": mounts or []}], **spec}}


@pytest.fixture
def joined(node_cluster, tmp_path):
    ckpt = node_cluster.namespace(NS, tmp_path / "kubeconfig")
    api = config.new_client_from_config(str(node_cluster.plane.kubeconfig))
    try:
        yield node_cluster, ckpt, client.CoreV1Api(api)
    finally:
        api.close()
        gc.collect()
        node_cluster.plane.api.delete(f"/api/v1/namespaces/{NS}")


def test_joined_node_runs_restricted_pods_with_dns_logs_and_exec(joined, pytorch_image):
    cluster, ckpt, core = joined
    kubelet = cluster.kubelet
    assert any(c.type == "Ready" and c.status == "True" for c in core.read_node(NODE).status.conditions)
    # A headless Service and a pod named under it, as mpi-operator makes for its workers.
    core.create_namespaced_service(NS, {"metadata": {"name": "peer"}, "spec": {
        "clusterIP": "None", "selector": {"app": "peer"}, "publishNotReadyAddresses": True, "ports": [{"port": 2222}]}})
    image = pytorch_image
    core.create_namespaced_pod(NS, pod("peer-0", image, "exec sleep 600", hostname="peer-0", subdomain="peer"))
    core.create_namespaced_pod(NS, pod("trainer", image, (
        "until getent hosts peer-0.peer; do sleep 0.5; done; echo resolved $(getent hosts peer-0.peer); "
        "id -u > /checkpoints/written-by; python -m kjob_trainer.train --help | head -1; exec sleep 600"),
        mounts=[{"name": "ckpt", "mountPath": "/checkpoints"}],
        volumes=[{"name": "ckpt", "persistentVolumeClaim": {"claimName": "kjob-checkpoints"}}]))

    def running(name):
        p = core.read_namespaced_pod(name, NS)
        return p if p.status.phase == "Running" else None
    peer = wait_for("peer-0 Running", lambda: running("peer-0"), 300, alive=kubelet.alive)
    trainer = wait_for("trainer Running", lambda: running("trainer"), 300, alive=kubelet.alive)
    assert trainer.spec.node_name == NODE

    def logged():
        text = core.read_namespaced_pod_log("trainer", NS)
        return text if "usage:" in text else None
    logs = wait_for("the trainer's log through the API server", logged, 300, alive=kubelet.alive)
    assert f"resolved {peer.status.pod_ip} peer-0.peer.{NS}.svc.cluster.local" in logs, logs
    ws = stream(core.connect_get_namespaced_pod_exec, "trainer", NS, command=["cat", "/checkpoints/written-by"],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    try:
        ws.run_forever(timeout=60)
        out = ws.read_stdout()
    finally:
        ws.close()
    assert out.strip() == "1000"
    assert (ckpt / "written-by").read_text().strip() == "1000"
