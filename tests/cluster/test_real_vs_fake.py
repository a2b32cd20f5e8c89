"""The fake keeps to the truth (issue 12, item 4): the same MPIJob and PyTorchJob, submitted
by kjob to the real control plane and to tests/kubefake, must give the same pods (names,
labels, annotations, owner references) and the same Services, ConfigMaps and Secrets.
What the real operators make is the reference; the simulator is fixed to match it."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The Job controller names a launcher pod <job>-launcher-<5 random characters>, and an
# Indexed Job's pod (a TrainJob's, through JobSet's child Job) <job>-<index>-<5 random characters>.
LAUNCHER_POD = re.compile(r"^(?P<job>.+)-launcher-[bcdfghjklmnpqrstvwxz2456789]{5}$")
INDEXED_POD = re.compile(r"^(?P<job>.+-\d+-\d+)-[bcdfghjklmnpqrstvwxz2456789]{5}$")
# The harness's own pod annotations (nodeside.py, stages.py): not an operator's.
HARNESS = "kjob.test/"
# Objects every namespace has, whoever made it: the root CA the controller-manager publishes.
EVERY_NAMESPACE = {"kube-root-ca.crt"}


def _name(name: str) -> str:
    m = LAUNCHER_POD.match(name)
    if m:
        return f"{m['job']}-launcher-*"
    m = INDEXED_POD.match(name)
    return f"{m['job']}-*" if m else name


def _value(v: str) -> str:
    return "<uid>" if UID.match(v) else v


# JobSet's job-key: sha1 of <namespace>/<child Job>, which differs with the namespace.
JOB_KEY = "jobset.sigs.k8s.io/job-key"


def _key(md: dict, k: str, v: str) -> str:
    job = (md.get("labels") or {}).get("batch.kubernetes.io/job-name", "")
    if k == JOB_KEY and v == hashlib.sha1(f"{md['namespace']}/{job}".encode()).hexdigest():
        return "<sha1 of namespace/job>"
    return _value(v)


def _pod_shape(pod: dict) -> dict:
    md = pod["metadata"]
    return {
        "labels": {k: _key(md, k, v) for k, v in sorted((md.get("labels") or {}).items())},
        "annotations": {k: _key(md, k, v) for k, v in sorted((md.get("annotations") or {}).items()) if not k.startswith(HARNESS)},
        "owners": [{"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["name"], "controller": o.get("controller"),
                    "blockOwnerDeletion": o.get("blockOwnerDeletion")} for o in md.get("ownerReferences") or []],
    }


def _named(objs: list[dict]) -> dict:
    """name -> labels and owners of each object, without the ones every namespace has."""
    return {o["metadata"]["name"]: {"labels": {k: _value(v) for k, v in sorted((o["metadata"].get("labels") or {}).items())},
                                    "owners": [(r["kind"], r["name"]) for r in o["metadata"].get("ownerReferences") or []]}
            for o in objs if o["metadata"]["name"] not in EVERY_NAMESPACE}


def shape(pods: list[dict], services: list[dict], configmaps: list[dict], secrets: list[dict]) -> dict:
    return {"pods": {_name(p["metadata"]["name"]): _pod_shape(p) for p in pods},
            "services": _named(services), "configmaps": _named(configmaps), "secrets": _named(secrets)}


def _real_shape(real, job: str, pods: int) -> dict:
    found = real.wait_pods(job, pods)
    return shape(found, real.api.items(real.path("services")), real.api.items(real.path("configmaps")),
                 [s for s in real.api.items(real.path("secrets")) if s["type"] != "kubernetes.io/service-account-token"])


def _fake_shape(kube, job: str) -> dict:
    kube.run_job(job)
    pods = [kube.get("Pod", p) for p in kube.pods(job)]
    return shape(pods, kube.list("services", kube.namespace), kube.list("configmaps", kube.namespace), kube.list("secrets", kube.namespace))


@pytest.mark.parametrize("spec, job, pods", [("examples/smoke.yaml", "smoke", 3), ("examples/resnext50-torchrun.yaml", "resnext50-torchrun", 2)])
def test_the_simulator_makes_what_the_real_operators_make(real, kube, run_kjob, spec, job, pods):
    assert run_kjob("submit", spec, "--kubeconfig", str(real.kubeconfig)).code == 0
    assert run_kjob("submit", spec, "--kubeconfig", kube.kubeconfig).code == 0
    real_shape = _real_shape(real, job, pods)
    wait_for("the operator's objects", lambda: len(_real_shape(real, job, pods)["services"]) >= 1, 30)
    real_shape = _real_shape(real, job, pods)
    fake_shape = _fake_shape(kube, job)
    assert fake_shape == real_shape, "fake:\n" + json.dumps(fake_shape, indent=1) + "\nreal:\n" + json.dumps(real_shape, indent=1)


TRAINER = "trainer.kubeflow.org/v1alpha1"
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"


def _namespace_objects(api_list) -> tuple[list[dict], list[dict], list[dict]]:
    return (api_list("services"), api_list("configmaps"),
            [s for s in api_list("secrets") if s["type"] != "kubernetes.io/service-account-token"])


@pytest.mark.parametrize("launcher", ["mpi", "torchrun"])
def test_the_simulator_makes_what_trainer_v2_and_jobset_make(real, trainer_v2, kube, run_kjob, tmp_path, launcher):
    """A TrainJob on each of kjob's runtimes (manifests/runtimes), installed on both."""
    from pathlib import Path

    import yaml

    for path in sorted(Path("manifests/runtimes").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        real.api.create(f"/apis/{TRAINER}/clustertrainingruntimes", doc, exist_ok=True)
        kube.install_runtime(doc["metadata"]["name"], doc["spec"]["template"]["spec"]["replicatedJobs"], doc["spec"]["mlPolicy"],
                             doc["spec"]["template"]["spec"].get("failurePolicy"))
    spec = yaml.safe_load(Path("examples/smoke-trainjob.yaml").read_text())
    job = f"vs-{launcher}"
    spec.update(name=job, launcher=launcher)
    spec.pop("local", None)
    (tmp_path / "tj.yaml").write_text(yaml.safe_dump(spec))
    assert run_kjob("submit", str(tmp_path / "tj.yaml"), "--kubeconfig", str(real.kubeconfig)).code == 0
    assert run_kjob("submit", str(tmp_path / "tj.yaml"), "--kubeconfig", kube.kubeconfig).code == 0

    def real_shape():
        pods = [p for p in real.api.items(real.path("pods"), labelSelector=f"{JOBSET_NAME}={job}") if p.get("status", {}).get("phase") == "Running"]
        if len(pods) < 2 or not real.api.items(real.path("services")):
            return None
        return shape(pods, *_namespace_objects(lambda plural: real.api.items(real.path(plural))))

    got = wait_for("the TrainJob's pods Running and its Service", real_shape, 90 * time_scale(), interval=0.25)
    fake_shape = _fake_shape(kube, job)
    assert fake_shape == got, "fake:\n" + json.dumps(fake_shape, indent=1) + "\nreal:\n" + json.dumps(got, indent=1)
