"""Kubeflow Trainer v2 and JobSet on the real control plane (marker `cluster`): the harness
(trainer_v2.py) runs both controllers with their webhooks on 127.0.0.1, and what they do
with a TrainJob is what upstream's install does with it.

The ClusterTrainingRuntimes here are the tests' own, small ones (an Open MPI one with a
launcher and node replicated jobs, shaped like upstream's MPI runtimes; a torch one like
upstream's torch-distributed): kjob's own runtimes are tested by the tests of kjob's
TrainJob commands. Pods run on kwok nodes; a test ends them (nodeside.end_pod).
"""

from __future__ import annotations

import json

import pytest

from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

GROUP = "trainer.kubeflow.org/v1alpha1"
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
IMAGE = "kjob.invalid/trainer:test"
MPI_RUNTIME, TORCH_RUNTIME = "kjob-harness-test-mpi", "kjob-harness-test-torch"


def mpi_runtime() -> dict:
    """Open MPI: node pods run sshd, the launcher (after the nodes are Ready) runs mpirun;
    the job succeeds when the launcher does."""
    return {
        "apiVersion": GROUP, "kind": "ClusterTrainingRuntime", "metadata": {"name": MPI_RUNTIME},
        "spec": {
            "mlPolicy": {"numNodes": 1, "mpi": {"numProcPerNode": 1, "mpiImplementation": "OpenMPI",
                                                "sshAuthMountPath": "/home/mpiuser/.ssh", "runLauncherAsNode": False}},
            "template": {"spec": {
                "network": {"publishNotReadyAddresses": True},
                "successPolicy": {"operator": "All", "targetReplicatedJobs": ["launcher"]},
                "replicatedJobs": [
                    {"name": "node", "template": {"spec": {"template": {"spec": {"containers": [
                        {"name": "node", "image": IMAGE, "command": ["/usr/sbin/sshd", "-De"]}]}}}}},
                    {"name": "launcher", "dependsOn": [{"name": "node", "status": "Ready"}],
                     "template": {"metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                  "spec": {"template": {"spec": {"containers": [
                                      {"name": "node", "image": IMAGE, "command": ["mpirun", "hostname"]}]}}}}},
                ],
            }},
        },
    }


def torch_runtime() -> dict:
    return {
        "apiVersion": GROUP, "kind": "ClusterTrainingRuntime", "metadata": {"name": TORCH_RUNTIME},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {"replicatedJobs": [
                {"name": "node", "template": {"metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                              "spec": {"template": {"spec": {"containers": [
                                                  {"name": "node", "image": IMAGE, "command": ["torchrun", "train.py"]}]}}}}},
            ]}},
        },
    }


@pytest.fixture(scope="module")
def runtimes(trainer_v2):
    """Both runtimes, created through the trainer's validating webhook; removed after."""
    api = trainer_v2.api
    path = f"/apis/{GROUP}/clustertrainingruntimes"
    for runtime in (mpi_runtime(), torch_runtime()):
        api.create(path, runtime)
    try:
        yield trainer_v2
    finally:
        for name in (MPI_RUNTIME, TORCH_RUNTIME):
            api.delete(f"{path}/{name}")


def trainjob(name: str, runtime: str, *, nodes: int = 2, env: list[dict] | None = None) -> dict:
    trainer = {"numNodes": nodes}
    if env:
        trainer["env"] = env
    return {"apiVersion": GROUP, "kind": "TrainJob", "metadata": {"name": name},
            "spec": {"runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
                     "trainer": trainer}}


def jobset_pods(real, name: str, replicated_job: str | None = None) -> list[dict]:
    selector = f"{JOBSET_NAME}={name}" + (f",{REPLICATED_JOB}={replicated_job}" if replicated_job else "")
    return sorted(real.api.items(real.path("pods"), labelSelector=selector), key=lambda p: p["metadata"]["name"])


def running(real, name: str, replicated_job: str, count: int) -> list[dict]:
    def ready():
        pods = [p for p in jobset_pods(real, name, replicated_job) if p.get("status", {}).get("phase") == "Running"]
        return pods if len(pods) == count else None
    try:
        return wait_for(f"{count} Running {replicated_job} pods of {name}", ready, 90, interval=0.25)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; {describe(real, name)}") from None


def describe(real, name: str) -> str:
    job = real.api.get(real.path("trainjobs", name, group=GROUP)) or {}
    pods = [f"{p['metadata']['name']} {p.get('status', {}).get('phase')}" for p in jobset_pods(real, name)]
    events = [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['reason']} {e.get('message', '')}"
              for e in real.api.items(real.path("events"))][-10:]
    return f"TrainJob status {json.dumps(job.get('status', {}))}; pods {pods}; events {events}"


def wait_complete(real, name: str) -> dict:
    def complete():
        job = real.api.get(real.path("trainjobs", name, group=GROUP)) or {}
        conds = job.get("status", {}).get("conditions", [])
        failed = [c for c in conds if c["type"] == "Failed" and c["status"] == "True"]
        if failed:
            raise AssertionError(f"TrainJob {name} Failed: {failed}")
        return job if any(c["type"] == "Complete" and c["status"] == "True" for c in conds) else None
    try:
        return wait_for(f"TrainJob {name} Complete", complete, 90, interval=0.25)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; {describe(real, name)}") from None


def check_jobset(real, name: str, replicated: dict[str, int]) -> None:
    """The JobSet the trainer made, defaulted by JobSet's mutating webhook: every Job
    Indexed, with a restartPolicy; one Job per replicated job with `replicated[rj]` pods."""
    jobset = wait_for(f"JobSet {name}", lambda: real.api.get(real.path("jobsets", name, group="jobset.x-k8s.io/v1alpha2")), 30)
    assert {rj["name"] for rj in jobset["spec"]["replicatedJobs"]} == set(replicated)
    for rj in jobset["spec"]["replicatedJobs"]:
        spec = rj["template"]["spec"]
        assert spec.get("completionMode") == "Indexed", f"{rj['name']}: JobSet's defaulting did not run: {spec}"
        assert spec["template"]["spec"].get("restartPolicy"), rj["name"]
    jobs = wait_for(f"the Jobs of {name}", lambda: (lambda js: js if len(js) == len(replicated) else None)(
        real.api.items(f"/apis/batch/v1/namespaces/{real.ns}/jobs", labelSelector=f"{JOBSET_NAME}={name}")), 30, interval=0.25)
    for job in jobs:
        rj = job["metadata"]["labels"][REPLICATED_JOB]
        assert job["spec"]["completionMode"] == "Indexed"
        assert job["spec"]["parallelism"] == replicated[rj], job["metadata"]["name"]


def check_pods(pods: list[dict], name: str, replicated_job: str) -> None:
    assert [p["metadata"]["labels"][COMPLETION_INDEX] for p in pods] == [str(i) for i in range(len(pods))]
    for p in pods:
        labels = p["metadata"]["labels"]
        assert labels[JOBSET_NAME] == name and labels[REPLICATED_JOB] == replicated_job
        assert [c["name"] for c in p["spec"]["containers"]] == ["node"]
        # JobSet's DNS hostnames: <jobset>-<replicated job>-<job index>-<pod index>.
        assert p["spec"]["hostname"] == f"{name}-{replicated_job}-0-{labels[COMPLETION_INDEX]}"
        assert p["spec"]["subdomain"] == name


def test_mpi_trainjob_runs_as_an_indexed_jobset_and_completes(real, runtimes):
    name = "mpi"
    real.api.create(real.path("trainjobs", group=GROUP), trainjob(name, MPI_RUNTIME, nodes=2))
    nodes = running(real, name, "node", 2)
    check_pods(nodes, name, "node")
    # The launcher only once the nodes are Ready (dependsOn), with the MPI plugin's hostfile.
    [launcher] = running(real, name, "launcher", 1)
    check_pods([launcher], name, "launcher")
    check_jobset(real, name, {"node": 2, "launcher": 1})
    assert real.api.get(real.path("configmaps", f"{name}-mpi-hostfile")), "the MPI plugin's hostfile ConfigMap"
    assert real.api.get(real.path("secrets", f"{name}-mpi-ssh-auth")), "the MPI plugin's ssh Secret"
    real.end_pod(launcher["metadata"]["name"], 0)
    job = wait_complete(real, name)
    assert {s["name"] for s in job["status"].get("jobsStatus", [])} == {"node", "launcher"}


def test_torch_trainjob_gets_its_rendezvous_and_completes(real, runtimes):
    name = "torch"
    real.api.create(real.path("trainjobs", group=GROUP), trainjob(name, TORCH_RUNTIME, nodes=2))
    pods = running(real, name, "node", 2)
    check_pods(pods, name, "node")
    check_jobset(real, name, {"node": 2})
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0].get("env", [])}
    assert env.get("PET_NNODES") == "2" and env.get("PET_MASTER_PORT") == "29500"
    assert env.get("PET_MASTER_ADDR") == f"{name}-node-0-0.{name}"
    for p in pods:
        real.end_pod(p["metadata"]["name"], 0)
    job = wait_complete(real, name)
    assert [s["name"] for s in job["status"].get("jobsStatus", [])] == ["node"]


def test_the_validating_webhook_refuses_a_user_set_torch_variable(real, runtimes):
    r = real.api.session.post(real.api.server + real.path("trainjobs", group=GROUP), timeout=30,
                              json=trainjob("pet", TORCH_RUNTIME, env=[{"name": "PET_NNODES", "value": "3"}]))
    # An admission webhook's denial is 403 Forbidden, as RBAC's is: only the message
    # ("admission webhook ... denied the request") tells a client which it was.
    assert r.status_code == 403 and r.json()["reason"] == "Forbidden", r.text
    text = r.json()["message"]
    assert text.startswith('admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: spec.trainer.env'), text
    assert "validator.trainjob.trainer.kubeflow.org" in text and "must not have reserved envs" in text and "PET_NNODES" in text
    assert real.api.get(real.path("trainjobs", "pet", group=GROUP)) is None
