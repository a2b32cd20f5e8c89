"""Pod Security admission on the real control plane (issue 16, item 5): each of kjob's
examples submitted into a namespace that enforces `restricted`, and one that enforces
`baseline`; the real mpi-operator, training-operator or Trainer v2 and JobSet create the
pods, the real kube-apiserver admits or refuses them, and what it did is compared with
what `kjob submit` warned (kjob.cluster.jobs.pod_security_warnings).

A refused pod never exists: the refusal is read from the Events of whoever tried to
create it (mpi-operator for MPIJob workers, the batch Job controller for the launcher and
for a TrainJob's node pods, training-operator for PyTorchJob pods): `pods "NAME" is
forbidden: violates PodSecurity`.
An MPIJob's launcher is created only once its workers are Ready (WaitForWorkersReady),
so a job whose workers are refused never gets one."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

from waiting import time_scale, wait_for
from kjob.names import JOB_NAME_LABEL, JOBSET_NAME_LABEL
from kjob.render.manifests import render_objects
from kjob.spec.load import load_spec
from test_real_trainjob import apply_runtime, runtime_docs

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180 * time_scale())]

EXAMPLES = sorted(glob.glob("examples/*.yaml"))
REFUSED = re.compile(r'pods "([^"]+)" is forbidden: violates PodSecurity "([a-z]+):[^"]*": (.*)')
# What real admission refuses, by (level, example): the replicas whose pods are refused
# (a replica name as `kjob status` shows it), and a word of the reason that must be in
# both kjob's warning and the API server's refusal. Every other pod of every example is
# admitted.
EXPECTED_REFUSALS = {
    ("restricted", "resnest50"): ({"worker-0"}, '"nfs"'),  # NFS data volume; the launcher is never made
    ("restricted", "resnext50-torchrun"): ({"worker-0"}, '"init-pytorch"'),  # training-operator's init container
    ("restricted", "resnest50-trainjob"): ({"node-0"}, '"nfs"'),  # the same NFS volume, through runtimePatches
}


def replicas(example: str) -> tuple[str, str, dict[str, int]]:
    """(kind, name, {replica: count}) of the job kjob renders for `example`."""
    job = next(o for o in render_objects(load_spec(example)) if o["kind"] in ("MPIJob", "PyTorchJob", "TrainJob"))
    if job["kind"] == "TrainJob":  # kjob's runtimes: one replicated job, `node`
        return job["kind"], job["metadata"]["name"], {"node": job["spec"]["trainer"]["numNodes"]}
    specs = next(v for k, v in job["spec"].items() if k.endswith("ReplicaSpecs"))
    return job["kind"], job["metadata"]["name"], {k.lower(): v["replicas"] for k, v in specs.items()}


def replica_of(job: str, pod: str) -> str:
    """worker-0 / master-0 / launcher from a pod name the operators made; node-<i> from a
    TrainJob's <job>-node-<job index>-<completion index>-<suffix> (the Job controller's)."""
    rest = pod[len(job) + 1:]
    node = re.fullmatch(r"node-\d+-(\d+)-[a-z0-9]+", rest)
    return "launcher" if rest.startswith("launcher") else f"node-{node.group(1)}" if node else rest


def pods_of(real, kind: str, job: str) -> list[dict]:
    label = JOBSET_NAME_LABEL if kind == "TrainJob" else JOB_NAME_LABEL
    return real.api.items(real.path("pods"), labelSelector=f"{label}={job}")


def refusals(real, job: str) -> dict[str, str]:
    """replica -> the API server's reason, for every pod of `job` Pod Security refused."""
    out = {}
    for ev in real.api.items(real.path("events")):
        m = REFUSED.search(ev.get("message") or "")
        if m and m.group(1).startswith(f"{job}-"):
            out[replica_of(job, m.group(1))] = m.group(3)
    return out


def expected_pods(kind: str, counts: dict[str, int], refused: set[str]) -> set[str]:
    """The replicas that must exist: all of them, but an MPIJob's launcher only when no
    worker is refused (it waits for every worker to be Ready)."""
    names = {f"{role}-{i}" for role, n in counts.items() if role != "launcher" for i in range(n)} - refused
    if kind == "MPIJob" and not refused:
        names.add("launcher")
    return names


# The network opt-ins (issue 22 point 1) on the smoke job: both levels refuse its workers.
OPT_INS = {
    "capabilities": ("capabilities: [IPC_LOCK]\n", '"IPC_LOCK"'),
    "host-network": ("hostNetwork: true\n", "hostNetwork"),
}


@pytest.mark.parametrize("level", ["restricted", "baseline"])
@pytest.mark.parametrize("example", [e for e in EXAMPLES if not e.endswith("-trainjob.yaml")],
                         ids=lambda p: p.split("/")[-1].removesuffix(".yaml"))
def test_real_admission_refuses_exactly_what_kjob_submit_warns(real, run_kjob, level, example):
    kind, job, counts = replicas(example)
    refused_want, reason_word = EXPECTED_REFUSALS.get((level, job), (set(), None))
    admitted_as_warned(real, run_kjob, level, example, refused_want, reason_word)


# The TrainJob twins, on kjob's runtimes. Through the trainer_v2 fixture, so that they run
# with the other Trainer v2 tests, last (conftest.py): a test before them stops and starts
# the session's plane again (test_real_controlplane), which Trainer v2 does not survive.
@pytest.mark.parametrize("level", ["restricted", "baseline"])
@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.endswith("-trainjob.yaml")],
                         ids=lambda p: p.split("/")[-1].removesuffix(".yaml"))
def test_real_admission_of_trainjobs_refuses_exactly_what_kjob_submit_warns(real, trainer_v2, run_kjob, level, example):
    for doc in runtime_docs():
        apply_runtime(trainer_v2.api, doc)
    kind, job, counts = replicas(example)
    refused_want, reason_word = EXPECTED_REFUSALS.get((level, job), (set(), None))
    admitted_as_warned(real, run_kjob, level, example, refused_want, reason_word)


@pytest.mark.parametrize("level", ["restricted", "baseline"])
@pytest.mark.parametrize("opt_in", sorted(OPT_INS))
def test_real_admission_of_the_network_opt_ins_is_what_kjob_submit_warns(real, run_kjob, level, opt_in, tmp_path):
    extra, reason_word = OPT_INS[opt_in]
    spec = tmp_path / f"{opt_in}.yaml"
    # One worker: mpi-operator marks the job Failed at its first refused worker and makes no other pod.
    text = Path("examples/smoke.yaml").read_text().replace("name: smoke", f"name: smoke-{opt_in}")
    spec.write_text(text.replace("workers: 2\n", "workers: 1\n") + extra)
    admitted_as_warned(real, run_kjob, level, str(spec), {"worker-0"}, reason_word)


def admitted_as_warned(real, run_kjob, level: str, example: str, refused_want: set[str], reason_word: str | None) -> None:
    """Submit `example` into a namespace enforcing `level`: kjob warns exactly when the real
    API server refuses pods, with the reason's word, and exactly `refused_want` are refused."""
    real.api.merge_patch(f"/api/v1/namespaces/{real.ns}", {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": level}}})
    kind, job, counts = replicas(example)

    r = run_kjob("submit", example)
    assert r.code == 0, r
    warnings = [line for line in r.err.splitlines() if f'enforces Pod Security "{level}"' in line]
    assert bool(warnings) == bool(refused_want), r
    if reason_word:
        assert all(reason_word.strip('"') in w for w in warnings), warnings

    want = expected_pods(kind, counts, refused_want)

    def settled():
        pods = {replica_of(job, p["metadata"]["name"]) for p in pods_of(real, kind, job)}
        refused = refusals(real, job)
        return (pods, refused) if pods >= want and set(refused) >= refused_want else None

    pods, refused = wait_for(f"{job}'s pods created or refused under {level}", settled, 90 * time_scale(), interval=0.3)
    assert pods == want and set(refused) == refused_want, (pods, refused)
    for replica, why in refused.items():
        assert reason_word in why, (replica, why)  # the reason kjob gave is the API server's
