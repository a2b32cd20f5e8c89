"""Acceptance 2 and 3 of issue 12: the errors kjob gets from a real API server (RBAC with
a real ServiceAccount token, missing CRD, a CRD clobbered to v1 only, a missing namespace)
and the real scheduler's own reason for a pod that fits no node."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
MPIJOBS_CRD = "mpijobs.kubeflow.org"


def test_a_narrow_role_is_exit_4_naming_the_denied_verb_and_resource(real, run_kjob, tmp_path):
    api = real.api
    api.create(real.path("serviceaccounts"), {"metadata": {"name": "narrow"}})
    api.create(real.path("roles", group="rbac.authorization.k8s.io/v1"), {
        "metadata": {"name": "read-jobs"},
        "rules": [{"apiGroups": ["kubeflow.org"], "resources": ["mpijobs"], "verbs": ["get", "list", "watch"]}]})
    api.create(real.path("rolebindings", group="rbac.authorization.k8s.io/v1"), {
        "metadata": {"name": "narrow-reads-jobs"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-jobs"},
        "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": real.ns}]})
    token = api.request("POST", real.path("serviceaccounts", "narrow") + "/token",
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})["status"]["token"]
    kubeconfig = real.plane.kubeconfig_for(tmp_path / "narrow", namespace=real.ns, token=token)
    r = run_kjob("submit", "examples/smoke.yaml", "--kubeconfig", str(kubeconfig))
    assert r.code == 4, r
    # Preflight names every missing permission at once (here also get namespaces, list
    # pods, pods/log, pods/exec), each with its hint; long lines are wrapped.
    err = " ".join(r.err.split())
    assert f'RBAC does not allow "create mpijobs.kubeflow.org" in namespace "{real.ns}"' in err, r
    assert "ask a cluster admin for a Role with create on mpijobs.kubeflow.org" in err, r


def test_a_missing_namespace_or_job_is_exit_5(real, run_kjob):
    server = real.api.server
    r = run_kjob("submit", "examples/smoke.yaml", "-n", "no-such-namespace")
    assert r.code == 5 and " ".join(r.err.split()).startswith(f'Error: namespace "no-such-namespace" not found on {server}'), r
    r = run_kjob("status", "nope")
    assert r.code == 5 and " ".join(r.err.split()).startswith(f'Error: job "nope" not found in namespace "{real.ns}" on {server}'), r


def _crd(real, name: str) -> dict | None:
    return real.api.get(f"{CRDS}/{name}")


def _serving(real, version: str) -> bool:
    """The API server's discovery lists mpijobs at kubeflow.org/VERSION (what kjob's
    preflight reads)."""
    found = real.api.get(f"/apis/kubeflow.org/{version}") or {}
    return any(r.get("name") == "mpijobs" for r in found.get("resources", []))


def _replace_crd(real, doc: dict | None) -> None:
    """Delete the mpijobs CRD, then (doc given) create doc and wait until it is Established;
    each time until discovery says so too. The API server updates discovery a moment after
    the CRD changes (on a loaded machine, seconds): a submit in between passed preflight on
    the old discovery and met the vanished API's 404 instead."""
    real.api.delete(f"{CRDS}/{MPIJOBS_CRD}")
    wait_for("mpijobs CRD gone", lambda: _crd(real, MPIJOBS_CRD) is None, 60)
    wait_for("mpijobs gone from discovery", lambda: not any(_serving(real, v) for v in ("v1", "v2beta1")), 60)
    if doc is None:
        return
    real.api.create(CRDS, doc)
    wait_for("mpijobs CRD Established", lambda: any(c["type"] == "Established" and c["status"] == "True"
                                                     for c in (_crd(real, MPIJOBS_CRD) or {}).get("status", {}).get("conditions", [])), 60)
    served = [v["name"] for v in doc["spec"]["versions"] if v.get("served")]
    wait_for("mpijobs in discovery", lambda: all(_serving(real, v) for v in served), 60)


@pytest.fixture
def mpijobs_crd_restored(real):
    """After the test, mpi-operator's own v2beta1 CRD is back and mpi-operator restarted
    (its informers gave up on the vanished API)."""
    yield
    original = yaml.safe_load((real.plane.crds / "kubeflow.org_mpijobs.yaml").read_text())
    _replace_crd(real, original)
    real.plane.restart("mpi-operator")


def test_no_crd_then_a_v1_only_crd_are_explained_by_preflight(real, run_kjob, mpijobs_crd_restored):
    _replace_crd(real, None)
    r = run_kjob("submit", "examples/smoke.yaml")
    assert r.code == 5, r
    err = " ".join(r.err.split())  # long lines are wrapped for the terminal
    assert "mpi-operator v0.8 is not installed" in err and "hint: install it: kubectl apply --server-side -f" in err, r

    clobber = yaml.safe_load((real.plane.crds.parent / "clobber" / "kubeflow.org_mpijobs.v1.yaml").read_text())
    assert [v["name"] for v in clobber["spec"]["versions"]] == ["v1"]
    _replace_crd(real, clobber)
    r = run_kjob("submit", "examples/smoke.yaml")
    assert r.code == 5, r
    err = " ".join(r.err.split())
    assert ("only as kubeflow.org/v1 mpijobs, not kubeflow.org/v2beta1: its CRD mpijobs.kubeflow.org was replaced by another one "
            "(training-operator's full install ships an MPIJob kubeflow.org/v1 CRD that replaces mpi-operator's v2beta1 one)") in err, r
    assert "hint: kubectl delete crd mpijobs.kubeflow.org, install mpi-operator again" in err and "--enable-scheme=pytorchjob" in err, r


GPU_HOG = {"name": "hog", "workers": 1, "gpusPerWorker": 9}


def test_more_gpus_than_any_node_has_shows_the_schedulers_reason(real, run_kjob, tmp_path):
    spec = yaml.safe_load(Path("examples/smoke.yaml").read_text())
    spec.update(GPU_HOG)
    spec.pop("local", None)
    path = tmp_path / "hog.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert run_kjob("submit", str(path)).code == 0
    reason = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    wait_for("the scheduler's verdict", lambda: any(reason in (c.get("message") or "") for p in real.pods("hog")
                                                    for c in p.get("status", {}).get("conditions", [])), 60)
    st = run_kjob("status", "hog")
    assert st.code == 0 and reason in st.out, st

    env = {**os.environ, "KUBECONFIG": str(real.kubeconfig)}
    with subprocess.Popen([sys.executable, "-m", "kjob", "logs", "hog", "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, text=True) as follow:
        try:
            deadline = time.monotonic() + 60 * time_scale()
            seen = []
            while time.monotonic() < deadline:
                line = follow.stderr.readline()
                seen.append(line)
                if reason in line or not line:
                    break
            assert any(reason in line for line in seen), seen
        finally:
            follow.kill()
