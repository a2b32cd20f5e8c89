"""The fake keeps to the truth (issue 12, item 4): the same MPIJob and PyTorchJob, submitted
by kjob to the real control plane and to tests/kubefake, must give the same pods (names,
labels, annotations, owner references) and the same Services, ConfigMaps and Secrets.
What the real operators make is the reference; the simulator is fixed to match it."""

from __future__ import annotations

import json
import re

import pytest

from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The Job controller names a launcher pod <job>-launcher-<5 random characters>.
LAUNCHER_POD = re.compile(r"^(?P<job>.+)-launcher-[bcdfghjklmnpqrstvwxz2456789]{5}$")
# The harness's own pod annotations (nodeside.py, stages.py): not an operator's.
HARNESS = "kjob.test/"
# Objects every namespace has, whoever made it: the root CA the controller-manager publishes.
EVERY_NAMESPACE = {"kube-root-ca.crt"}


def _name(name: str) -> str:
    m = LAUNCHER_POD.match(name)
    return f"{m['job']}-launcher-*" if m else name


def _value(v: str) -> str:
    return "<uid>" if UID.match(v) else v


def _pod_shape(pod: dict) -> dict:
    md = pod["metadata"]
    return {
        "labels": {k: _value(v) for k, v in sorted((md.get("labels") or {}).items())},
        "annotations": {k: v for k, v in sorted((md.get("annotations") or {}).items()) if not k.startswith(HARNESS)},
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
