"""TrainJobs end to end on the real node (marker `node`, issue 21 point 6): kjob's CLI
submits `kind: TrainJob` specs to the control plane of tests/cluster with Kubeflow Trainer
v2.3.0 and JobSet v0.12.0 running (conftest.py `node_trainer_v2`), on kjob's own
ClusterTrainingRuntimes (manifests/runtimes/), and the real kubelet runs the pods from
the images built from images/, in a namespace where Pod Security enforces `restricted`.

The specs are test_e2e.py's (specs/), each turned into a TrainJob the way the README moves a
spec: `kind: TrainJob` added (and `imagePullPolicy` left to the runtime, which refuses it).
The helpers and the namespace fixture are test_e2e.py's too."""

from __future__ import annotations

import json
import re
import socket
import struct
from pathlib import Path

import pytest
import yaml

from kubelet import CLUSTER_DOMAIN, NODE_IP
from test_e2e import (RUN_LIMIT, SPECS, Namespace, both_ranks_trained, deleted_mid_run_resumes, fetches_every_checkpoint,  # noqa: F401
                      namespace, submit_and_follow)  # (namespace: the fixture)
from test_e2e import _timed  # noqa: F401 (autouse fixture: the tier's per-test times)
from waiting import wait_for

pytestmark = [pytest.mark.node, pytest.mark.timeout(3600)]

RUNTIMES = Path(__file__).resolve().parents[2] / "manifests" / "runtimes"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"


@pytest.fixture
def space(node_trainer_v2, namespace) -> Namespace:
    """test_e2e's namespace on the cluster with Trainer v2, kjob's runtimes installed."""
    api = node_trainer_v2.plane.api
    for path in sorted(RUNTIMES.glob("*.yaml")):
        runtime = yaml.safe_load(path.read_text())
        api.create("/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes", runtime, exist_ok=True)
    return namespace


def trainjob_spec(tmp_path: Path, spec: str, name: str) -> Path:
    """specs/<spec> as a TrainJob named `name`, written under tmp_path."""
    doc = yaml.safe_load((SPECS / spec).read_text())
    doc.pop("imagePullPolicy", None)
    doc.update(name=name, kind="TrainJob")
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def pods(space: Namespace, job: str) -> list[dict]:
    return space.cluster.plane.api.items(f"/api/v1/namespaces/{space.ns}/pods", labelSelector=f"{JOBSET_LABEL}={job}")


def resolve(name: str) -> list[str]:
    """The A records the tier's CoreDNS (the pods' nameserver) answers for `name`."""
    query = b"\x4b\x4a\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
        bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, (NODE_IP, 53))
        reply = s.recv(4096)
    assert reply[:2] == b"\x4b\x4a", reply
    count, at = struct.unpack(">H", reply[6:8])[0], len(query)
    addresses = []
    for _ in range(count):
        while reply[at] and reply[at] < 0xC0:  # the owner name: labels, then 0 or a pointer
            at += reply[at] + 1
        at += 2 if reply[at] >= 0xC0 else 1
        rtype, _, _, length = struct.unpack(">HHIH", reply[at:at + 10])
        at += 10
        if rtype == 1:
            addresses.append(socket.inet_ntoa(reply[at:at + length]))
        at += length
    return addresses


def test_resolve_reads_a_records_of_a_crafted_answer(monkeypatch):
    """resolve()'s parser on an answer made here: a CNAME then an A record, owner names
    compressed (pointer) and not; so that the DNS check below cannot pass on a misread."""
    name = "a.b"
    question = b"\x01a\x01b\x00\x00\x01\x00\x01"
    cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 1, 3) + b"\x01c\x00"
    a = b"\x01c\x00" + struct.pack(">HHIH", 1, 1, 1, 4) + socket.inet_aton("10.1.2.3")
    reply = b"\x4b\x4a\x81\x80\x00\x01\x00\x02\x00\x00\x00\x00" + question + cname + a

    class Fake:
        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def settimeout(self, t):
            pass

        def sendto(self, q, addr):
            assert q.endswith(question)

        def recv(self, n):
            return reply

    monkeypatch.setattr(socket, "socket", Fake)
    assert resolve(name) == ["10.1.2.3"]


def node_dns_names(space: Namespace, job: str, count: int = 2) -> None:
    """While the job runs: each node pod's name `<job>-node-0-<i>.<job>` resolves through
    the tier's CoreDNS to that pod's IP (JobSet's headless Service and pod subdomain)."""
    def running() -> dict[str, str] | None:
        got = {p["spec"].get("hostname"): p["status"].get("podIP") for p in pods(space, job)
               if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")}
        return got if len(got) == count else None

    ips = wait_for(f"{count} node pods of {job} running", running, RUN_LIMIT, interval=1)
    for i in range(count):
        host = f"{job}-node-0-{i}"
        assert host in ips, ips
        fqdn = f"{host}.{job}.{space.ns}.svc.{CLUSTER_DOMAIN}"
        assert resolve(fqdn) == [ips[host]], (fqdn, ips)


def trains_on_two_node_pods(space: Namespace, tmp_path: Path, spec: str, job: str) -> None:
    """The TrainJob of specs/<spec> followed to Complete; both ranks in one all-reduce of
    2 (test_e2e's both_ranks_trained), their hosts the two node pods: rank 1 ran on node 1,
    reached across pods by mpirun or torchrun, not beside rank 0 on node 0."""
    out = submit_and_follow(space, str(trainjob_spec(tmp_path, spec, job)), job)
    assert "on 2 x cpu" in out, out
    assert re.search(r"^done: step 30\b", out, re.M), out
    both_ranks_trained(space.volume, job)
    hosts = {json.loads((space.volume / job / "ranks" / f"rank-{r}.json").read_text())["host"] for r in (0, 1)}
    assert hosts == {f"{job}-node-0-0", f"{job}-node-0-1"}, hosts


def node_env(space: Namespace, job: str) -> dict[str, str]:
    """The node container's plain variables in the JobSet the trainer made of the TrainJob
    (it outlives the pods, as long as the TrainJob)."""
    jobset = space.cluster.plane.api.get(f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{space.ns}/jobsets/{job}")
    (rjob,) = jobset["spec"]["replicatedJobs"]
    (node,) = [c for c in rjob["template"]["spec"]["template"]["spec"]["containers"] if c["name"] == "node"]
    return {e["name"]: e.get("value") for e in node.get("env", []) if "value" in e}


def test_openmpi_trainjob_trains_across_node_pods_follows_and_fetches(space, tmp_path):
    trains_on_two_node_pods(space, tmp_path, "mpi.yaml", "e2e-tj-mpi")
    # The hostfile node 0's mpirun was given (the MPI plugin's ConfigMap) names both pods by
    # their DNS names, one slot each.
    hostfile = space.cluster.plane.api.get(f"/api/v1/namespaces/{space.ns}/configmaps/e2e-tj-mpi-mpi-hostfile")
    assert hostfile["data"]["hostfile"].split("\n") == ["e2e-tj-mpi-node-0-0.e2e-tj-mpi slots=1",
                                                         "e2e-tj-mpi-node-0-1.e2e-tj-mpi slots=1", ""], hostfile["data"]
    fetches_every_checkpoint(space, "e2e-tj-mpi", tmp_path / "fetched")


def test_openmpi_trainjob_deleted_mid_run_resumes_from_its_step(space, tmp_path):
    """kjob delete on kjob-openmpi: SIGUSR1 to node 0's mpirun, the checkpoint, then the
    same step on the resubmitted job; the node pods' DNS names checked while it runs."""
    name = "e2e-tj-resume"
    deleted_mid_run_resumes(space, trainjob_spec(tmp_path, "resume.yaml", name), name, tmp_path,
                            lambda job: pods(space, job), while_running=node_dns_names)


def test_torch_trainjob_two_nodes_under_torchrun(space, tmp_path):
    trains_on_two_node_pods(space, tmp_path, "torchrun.yaml", "e2e-tj-torch")
    # torchrun's rendezvous came from the torch plugin's PET_* (the spec sets none).
    env = node_env(space, "e2e-tj-torch")
    assert {k: env.get(k) for k in ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR", "PET_MASTER_PORT")} == {
        "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "e2e-tj-torch-node-0-0.e2e-tj-torch",
        "PET_MASTER_PORT": "29500"}, env
