"""kjob.cluster.requests: every API request kjob sends is built there, as data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kjob.cluster import requests
from kjob.cluster.requests import Request
from kjob.errors import InvalidInput

CLUSTER = Path(__file__).resolve().parents[1] / "submitter" / "kjob" / "cluster"
JOB = {"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob", "metadata": {"name": "smoke", "namespace": "team"}}


def test_job_requests():
    assert requests.get_job("PyTorchJob", "r50", "team") == Request(
        "GET", "/apis/kubeflow.org/v1/namespaces/team/pytorchjobs/r50", verb="get", resource="pytorchjobs", name="r50", namespace="team")
    assert requests.list_jobs("MPIJob", None) == Request(
        "GET", "/apis/kubeflow.org/v2beta1/mpijobs", verb="list", resource="mpijobs", query={"labelSelector": "app.kubernetes.io/managed-by=kjob"})
    assert requests.delete_job(JOB).body == {"propagationPolicy": "Background"}
    assert requests.create(JOB, "team").path == "/apis/kubeflow.org/v2beta1/namespaces/team/mpijobs"


def test_pod_requests():
    assert requests.list_job_pods({"kind": "MPIJob", "metadata": {"name": "smoke", "namespace": "team"}}) == Request(
        "GET", "/api/v1/namespaces/team/pods", verb="list", resource="pods", namespace="team",
        query={"labelSelector": "training.kubeflow.org/job-name=smoke"})
    # A TrainJob's pods are its JobSet's (named as the TrainJob): JobSet's label selects them.
    assert requests.list_job_pods({"kind": "TrainJob", "metadata": {"name": "smoke", "namespace": "team"}}).query == {
        "labelSelector": "jobset.sigs.k8s.io/jobset-name=smoke"}
    assert requests.pod_log("team", "smoke-launcher", {"follow": True}) == Request(
        "GET", "/api/v1/namespaces/team/pods/smoke-launcher/log", verb="get", resource="pods/log", name="smoke-launcher",
        namespace="team", query={"follow": True})
    assert requests.delete_pod_now("team", "h").query == {"gracePeriodSeconds": 0}
    assert requests.events_of("team", "h").query == {"fieldSelector": "involvedObject.name=h"}
    assert requests.exec_query(["kill", "-USR1", "1"], "launcher") == [
        ("command", "kill"), ("command", "-USR1"), ("command", "1"), ("container", "launcher"),
        ("stderr", "true"), ("stdin", "false"), ("stdout", "true"), ("tty", "false")]


def test_access_review_names_the_subresource_only_when_there_is_one():
    attrs = requests.access_review("team", "create", "pods", "exec", "").body["spec"]["resourceAttributes"]
    assert attrs == {"namespace": "team", "verb": "create", "resource": "pods", "group": "", "subresource": "exec"}
    assert "subresource" not in requests.access_review("team", "get", "pods", "", "").body["spec"]["resourceAttributes"]


def test_only_rendered_kinds_can_be_created():
    with pytest.raises(InvalidInput):
        requests.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}, "team")


def test_no_module_assembles_a_request_by_hand():
    """Outside api.py (which sends) every call is `kube.send(requests.<builder>(...))`."""
    hand_made = {p.name: re.findall(r"\.request\(", p.read_text()) for p in CLUSTER.glob("*.py") if p.name != "api.py"}
    assert {name: calls for name, calls in hand_made.items() if calls} == {}
    sent = sum(len(re.findall(r"\.send\(requests\.\w+\(", p.read_text())) for p in CLUSTER.glob("*.py"))
    assert sent >= 20, f"only {sent} requests found: the pattern no longer matches kjob's calls, so the check above proves nothing"
