"""Issue 24 point 2 on the real control plane: why a job waits or died, each made to happen
by the real components (API server quota admission and mpi-operator, the scheduler's
preemption), `kjob status` read back. Where only a kubelet acts (a node-pressure
eviction), the test plays the kubelet as this tier plays the containers: it writes what
the kubelet writes (k8s.io/kubernetes v1.34 pkg/kubelet/eviction), and the real
mpi-operator reacts to it. Each `kjob status` output is printed (pytest -rP shows it):
README's status section quotes them."""

from __future__ import annotations

import datetime
import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240 * time_scale())]


def spec_file(tmp_path, name: str, **changes) -> str:
    spec = yaml.safe_load(Path("examples/smoke.yaml").read_text())
    spec.update(name=name, **changes)
    spec.pop("local", None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def events(real, reason: str) -> list[dict]:
    return real.api.items(real.path("events"), fieldSelector=f"reason={reason}")


def status(run_kjob, name: str) -> str:
    r = run_kjob("status", name)
    assert r.code == 0, r
    # Past run_kjob's capsys (which empties sys.stdout's capture), to the test's own output.
    os.write(1, f"$ kjob status {name}\n{r.out}\n".encode())
    return " ".join(r.out.split())


def test_a_resource_quota_that_refuses_a_worker_is_told_by_the_mpijobs_own_event(real, run_kjob, tmp_path):
    real.api.create(real.path("resourcequotas"), {"metadata": {"name": "tight"}, "spec": {"hard": {"pods": "1"}}})
    wait_for("quota counted", lambda: "pods" in (real.api.get(real.path("resourcequotas", "tight")) or {}).get("status", {}).get("hard", {}), 30)
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    wait_for("mpi-operator's MPIJobFailed", lambda: events(real, "MPIJobFailed"), 60, interval=0.2)
    out = status(run_kjob, "smoke")
    assert "Message: MPIJob: MPIJobFailed: worker pod created failed:" in out and "exceeded quota: tight" in out, out


@pytest.fixture
def high_priority(real):
    name = f"{real.ns}-high"[:63]
    real.api.create("/apis/scheduling.k8s.io/v1/priorityclasses", {"metadata": {"name": name}, "value": 1000000})
    yield name
    real.api.delete(f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}")


def test_preemption_by_a_higher_priority_pod_names_the_preemptor(real, run_kjob, tmp_path, high_priority):
    # Two workers of 8 GPUs fill both kwok nodes; a pod of higher priority wanting 8 GPUs
    # makes the real scheduler preempt one of them.
    assert run_kjob("submit", spec_file(tmp_path, "gpus", gpusPerWorker=8)).code == 0
    real.wait_pods("gpus", 3)
    real.api.create(real.path("pods"), {"metadata": {"name": "hog"}, "spec": {
        "priorityClassName": high_priority, "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "hog", "image": "hog:1", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}})
    wait_for("the scheduler's Preempted event", lambda: events(real, "Preempted"), 60, interval=0.2)
    victim = events(real, "Preempted")[0]["involvedObject"]["name"]
    replica = victim.removeprefix("gpus-")
    wait_for("the preempted worker recreated", lambda: any(p["metadata"]["name"] == victim and p["metadata"]["uid"] != events(real, "Preempted")[0]["involvedObject"].get("uid")
                                                          for p in real.pods("gpus")), 60, interval=0.2)
    out = status(run_kjob, "gpus")
    assert f"Message: {replica}: preempted by pod {real.ns}/hog on node kwok-node-" in out, out


def kubelet_evicts(real, pod: str, message: str) -> None:
    """What a kubelet under memory pressure writes for the pod it evicts: phase Failed,
    reason Evicted, the DisruptionTarget condition, the container ended as
    ContainerStatusUnknown 137, and a Warning Event "Evicted"."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = real.path("pods", pod)
    obj = real.api.get(path)
    statuses = [{**c, "ready": False, "started": False, "state": {"terminated": {
        "exitCode": 137, "reason": "ContainerStatusUnknown", "message": "The container could not be located when the pod was terminated",
        "finishedAt": now}}} for c in obj["status"]["containerStatuses"]]
    conditions = [c for c in obj["status"]["conditions"] if c["type"] != "Ready"] + [
        {"type": "Ready", "status": "False", "lastTransitionTime": now},
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": message, "lastTransitionTime": now}]
    real.api.merge_patch(path + "/status", {"status": {"phase": "Failed", "reason": "Evicted", "message": message,
                                                       "conditions": conditions, "containerStatuses": statuses}})
    real.api.create(real.path("events"), {
        "metadata": {"name": f"{pod}.evicted"}, "type": "Warning", "reason": "Evicted", "message": message,
        "involvedObject": {"kind": "Pod", "namespace": real.ns, "name": pod, "uid": obj["metadata"]["uid"], "apiVersion": "v1"},
        "source": {"component": "kubelet", "host": obj["spec"]["nodeName"]}, "firstTimestamp": now, "lastTimestamp": now, "count": 1})


PRESSURE = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 12Mi. Container main was using 3900Mi, request is 4Gi, has larger consumption of memory."


def test_an_evicted_worker_says_evicted_and_stays_the_cause_after_it_is_gone(real, run_kjob):
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    real.wait_pods("smoke", 3)
    kubelet_evicts(real, "smoke-worker-1", PRESSURE)
    # The real mpi-operator fails the job: "1/2 workers are evicted".
    wait_for("smoke Failed", lambda: any(c["type"] == "Failed" and c["status"] == "True" for c in
                                         (real.job("mpijobs", "smoke", "v2beta1") or {}).get("status", {}).get("conditions", [])), 60, interval=0.2)
    out = status(run_kjob, "smoke")
    assert "State: Failed" in out and f"Cause: worker-1: Evicted: {PRESSURE}" in out, out
    assert "exited with code 137" not in out, out
    # The pod goes, as the pod garbage collector removes a terminated pod (grace period 0: at
    # once, not after kwok confirms; under load that confirmation took over a minute). Its
    # Event stays, and so does the cause.
    real.api.delete(real.path("pods", "smoke-worker-1"), gracePeriodSeconds="0")
    wait_for("worker-1 gone", lambda: not any(p["metadata"]["name"] == "smoke-worker-1" for p in real.pods("smoke")), 60, interval=0.2)
    out = status(run_kjob, "smoke")
    assert f"Cause: worker-1 (gone): Evicted: {PRESSURE}" in out, out


def test_an_eviction_through_the_eviction_api_says_evicted(real, run_kjob):
    """`kubectl drain` and `kubectl evict` go through the Eviction API: the API server marks
    the pod DisruptionTarget (EvictionByEvictionAPI) and deletes it with its grace period.
    A kubelet takes up to that period (120 s) to stop the trainer; kwok would delete it at
    once, so kwok is paused while status looks (SIGSTOP, seconds: far inside its 40 s lease)."""
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    real.wait_pods("smoke", 3)
    group = real.plane.processes.procs["kwok"].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        real.api.create(real.path("pods", "smoke-worker-1") + "/eviction", {
            "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "smoke-worker-1", "namespace": real.ns}})
        out = status(run_kjob, "smoke")
    finally:
        os.killpg(group, signal.SIGCONT)
    assert "Message: worker-1: Evicted: Eviction API: evicting" in out, out


def _nodes_back(real) -> bool:
    nodes = real.api.items("/api/v1/nodes")
    return all(any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
               and not n["spec"].get("taints") for n in nodes)


def test_a_lost_node_names_the_node_and_since_when(real, run_kjob):
    """kwok stops heart-beating (SIGSTOP: the node side of this tier goes silent, as a dead
    machine's kubelet does); the real node lifecycle controller finds the nodes' leases
    stale after its grace period (50 s), marks them NotReady, the pods on them not Ready,
    and records NodeNotReady on each pod."""
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    real.wait_pods("smoke", 3)
    group = real.plane.processes.procs["kwok"].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        wait_for("NodeNotReady on smoke-worker-0", lambda: any(e["involvedObject"]["name"] == "smoke-worker-0" for e in events(real, "NodeNotReady")),
                 150, interval=0.5)
        out = status(run_kjob, "smoke")
        assert re.search(r"Message: (launcher|worker-\d): its node kwok-node-\d NotReady since \S+Z \(the node stopped reporting: Node is not ready\)", out), out
        assert re.search(r"worker-0 smoke-worker-0 Running no 0 kwok-node-\d its node kwok-node-\d NotReady since", out), out
    finally:
        os.killpg(group, signal.SIGCONT)
        wait_for("the nodes Ready again, untainted", lambda: _nodes_back(real), 120, interval=0.5)
