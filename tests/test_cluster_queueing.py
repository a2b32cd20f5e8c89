"""A job that names a Kueue LocalQueue (issue 24 point 1): submit's check of the queue,
and what `status` and `logs -f` say while Kueue holds the job back, from Workloads shaped
as Kueue v0.19.2 writes them (see kjob.cluster.queueing; tests/cluster/test_real_kueue.py
makes each happen with the real Kueue)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from kjob.cluster.queueing import explain, queueing, workload_of
from kjob.errors import ClusterUnavailable

pytestmark = pytest.mark.timeout(120)

# Kueue's words (pkg/scheduler/flavorassigner), as the real control plane's test saw them.
QUOTA = ("couldn't assign flavors to pod set worker: insufficient quota for nvidia.com/gpu in flavor kwok, "
         "previously considered podsets requests (0) + current podset request (24) > maximum capacity (16)")
UNUSED = "couldn't assign flavors to pod set worker: insufficient unused quota for nvidia.com/gpu in flavor kwok, 16 more needed"
PREEMPTION = ("Preempted to accommodate a workload (UID: 7d1e-wl, JobUID: 4c2a-job) due to prioritization in the ClusterQueue; "
              "preemptor path: /cluster-gpus; preemptee path: /cluster-gpus")


def queued_spec(tmp_path: Path, queue: str = "team") -> str:
    spec = yaml.safe_load(Path("examples/smoke.yaml").read_text())
    spec["queue"] = queue
    path = tmp_path / "queued.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def pending(message: str = QUOTA) -> list[dict]:
    return [{"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message}]


def queued_job(kube, run_kjob, tmp_path: Path) -> None:
    """smoke submitted to LocalQueue team (of ClusterQueue cluster-gpus), held by Kueue
    for want of GPUs."""
    kube.install_kueue()
    kube.local_queue("team", "cluster-gpus")
    assert run_kjob("submit", queued_spec(tmp_path)).code == 0
    kube.kueue_holds("smoke")
    kube.workload("smoke", pending())


def status_of(run_kjob) -> str:
    r = run_kjob("status", "smoke")
    assert r.code == 0, r
    return r.out


# -- submit -----------------------------------------------------------------------------------
def test_submit_to_a_local_queue_that_does_not_exist_is_exit_5_naming_it(kube, run_kjob, tmp_path):
    kube.install_kueue()
    kube.local_queue("other")
    r = run_kjob("submit", queued_spec(tmp_path, "team"))
    assert r.code == 5, r
    assert 'LocalQueue "team" not found in namespace "default"' in r.err and "kubectl get localqueues -n default" in r.err, r.err
    assert kube.list("MPIJob") == []


def test_submit_with_a_queue_to_a_cluster_without_kueue_warns_that_nothing_queues_it(kube, run_kjob, tmp_path):
    r = run_kjob("submit", queued_spec(tmp_path))
    assert r.code == 0, r
    assert "does not serve Kueue's API (kueue.x-k8s.io/v1beta2 localqueues): the job runs without queueing" in r.err, r.err
    assert len(kube.list("MPIJob")) == 1


def test_submit_warns_when_local_queues_cannot_be_read(kube, run_kjob, tmp_path):
    kube.install_kueue()
    kube.deny("get", "localqueues")
    r = run_kjob("submit", queued_spec(tmp_path))
    assert r.code == 0, r
    assert "warning: " in r.err and "cannot check that LocalQueue team exists" in r.err, r.err
    assert [j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] for j in kube.list("MPIJob")] == ["team"]


def test_submit_to_an_existing_local_queue_asks_nothing_more(kube, run_kjob, tmp_path):
    kube.install_kueue()
    kube.local_queue("team")
    r = run_kjob("submit", queued_spec(tmp_path))
    assert r.code == 0 and "warning" not in r.err, r
    assert kube.requests("get", "localqueues") == 1


# -- status -----------------------------------------------------------------------------------
def test_a_queued_job_says_its_queues_and_kueues_reason(kube, run_kjob, tmp_path):
    queued_job(kube, run_kjob, tmp_path)
    out = status_of(run_kjob)
    assert "State:     Pending" in out, out
    assert f"Message:   queued in LocalQueue team (ClusterQueue cluster-gpus): {QUOTA}" in out, out


def test_status_warns_when_workloads_cannot_be_read(kube, run_kjob, tmp_path):
    queued_job(kube, run_kjob, tmp_path)
    kube.deny("list", "workloads")
    out = " ".join(status_of(run_kjob).split())
    assert "State: Suspended" in out, out  # the operator's word stands
    assert ('Warning: forbidden: cannot list workloads in namespace "default": '
            "whether Kueue holds the job back (LocalQueue team) is not shown") in out, out


def test_list_shows_a_queued_job_pending_with_one_workload_request(kube, run_kjob, tmp_path):
    queued_job(kube, run_kjob, tmp_path)
    out = run_kjob("list").out
    assert "smoke" in out and "Pending" in out and "Suspended" not in out, out
    assert kube.requests("list", "workloads") == 1


def test_a_job_without_a_queue_asks_kueue_nothing(kube, run_kjob):
    kube.install_kueue()
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    kube.run_job("smoke")
    assert "State:     Running" in status_of(run_kjob)
    assert "Running" in run_kjob("list").out
    assert kube.requests("list", "workloads") == 0 and kube.requests("get", "localqueues") == 0


def test_an_admitted_job_shows_the_operators_state(kube, run_kjob, tmp_path):
    kube.install_kueue()
    kube.local_queue("team")
    assert run_kjob("submit", queued_spec(tmp_path)).code == 0
    kube.workload("smoke", [{"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "Quota reserved in ClusterQueue cluster-gpus"},
                            {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"}],
                  status={"admission": {"clusterQueue": "cluster-gpus", "podSetAssignments": []}})
    kube.run_job("smoke")
    out = status_of(run_kjob)
    assert "State:     Running" in out and "queued" not in out and "Kueue" not in out, out


def test_a_job_kueue_preempted_says_by_whom_and_that_it_is_requeued(kube, run_kjob, tmp_path):
    kube.install_kueue()
    kube.local_queue("team", "cluster-gpus")
    assert run_kjob("submit", queued_spec(tmp_path)).code == 0
    kube.kueue_holds("smoke")
    kube.workload("smoke", [
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": UNUSED},
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": PREEMPTION},
        {"type": "Preempted", "status": "True", "reason": "InClusterQueue", "message": PREEMPTION, "lastTransitionTime": "2026-12-07T08:01:00Z"},
        {"type": "Requeued", "status": "True", "reason": "Preempted", "message": PREEMPTION}])
    # The preemptor: another job's Workload in the namespace, labelled with its job's UID.
    kube._call(lambda s: s.put("workloads", {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": {
        "name": "mpijob-urgent-0a1b2", "namespace": "default", "uid": "7d1e-wl", "labels": {"kueue.x-k8s.io/job-uid": "4c2a-job"},
        "ownerReferences": [{"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob", "name": "urgent", "uid": "4c2a-job", "controller": True}]},
        "spec": {"podSets": []}}))
    out = " ".join(status_of(run_kjob).split())
    assert ("Message: preempted by Kueue at 2026-12-07T08:01:00Z for MPIJob default/urgent (prioritization in the ClusterQueue); "
            "Kueue requeues it, and it runs again when LocalQueue team (ClusterQueue cluster-gpus) admits it; "
            f"queued in LocalQueue team (ClusterQueue cluster-gpus): {UNUSED}") in out, out


# -- explain, pure ------------------------------------------------------------------------------
def job(queue: str | None = "team", uid: str = "j-uid", suspend: bool = True) -> dict:
    labels = {"kueue.x-k8s.io/queue-name": queue} if queue else {}
    return {"kind": "MPIJob", "metadata": {"name": "j", "namespace": "ns", "uid": uid, "labels": labels},
            "spec": {"runPolicy": {"suspend": suspend}}}


def workload(*conds: dict, **status) -> dict:
    return {"metadata": {"name": "mpijob-j-1", "namespace": "ns", "ownerReferences": [{"uid": "j-uid", "controller": True, "kind": "MPIJob", "name": "j"}]},
            "status": {"conditions": list(conds), **status}}


def test_the_position_is_told_from_1_as_kueues_visibility_api_counts_from_0():
    said = explain(job(), workload(*pending()), cluster_queue="cluster-gpus", position={"positionInLocalQueue": 0, "positionInClusterQueue": 2})
    assert said.message.endswith(f"{QUOTA}; position 1 in team, 3 in ClusterQueue cluster-gpus"), said


def test_quota_reserved_but_admission_checks_pending_says_so():
    # pkg/workload/admissionchecks.go: the reason without the UnadmittedWorkloadsObservability gate.
    said = explain(job(), workload({"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "Quota reserved in ClusterQueue cluster-gpus"},
                                   {"type": "Admitted", "status": "False", "reason": "UnsatisfiedChecks",
                                    "message": "The workload has not all checks ready"},
                                   admission={"clusterQueue": "cluster-gpus"}))
    assert said.message == ("queued in LocalQueue team (ClusterQueue cluster-gpus): quota reserved, not admitted yet "
                            "(UnsatisfiedChecks: The workload has not all checks ready)"), said


def test_a_requeue_backoff_says_when_kueue_queues_it_again():
    said = explain(job(), workload({"type": "Evicted", "status": "True", "reason": "PodsReadyTimeout", "message": "Exceeded the PodsReady timeout ns/j"},
                                   {"type": "Requeued", "status": "False", "reason": "PodsReadyTimeout", "message": "Exceeded the PodsReady timeout ns/j"},
                                   requeueState={"count": 2, "requeueAt": "2026-12-07T09:00:00Z"}))
    assert said.message == ("evicted by Kueue (PodsReadyTimeout): Exceeded the PodsReady timeout ns/j; "
                            "Kueue queues it again at 2026-12-07T09:00:00Z (evicted 2 time(s) so far)"), said


def test_kueue_holds_nothing_against_a_job_admitted_finished_or_not_queued():
    admitted = {"type": "Admitted", "status": "True", "reason": "Admitted"}
    assert explain(job(), workload(admitted)) is None
    assert explain(job(), workload({"type": "Finished", "status": "True", "reason": "Succeeded"})) is None
    assert explain(job(queue=None), workload(*pending())) is None
    assert explain(job(suspend=False), None) is None  # no Workload, and nothing stops it
    assert explain(job(), None).message == "queued in LocalQueue team: Kueue has not made its Workload yet"
    # Preempted while admitted: Kueue has decided, the pods are being stopped.
    stopping = explain(job(), workload(admitted, {"type": "Evicted", "status": "True", "reason": "Preempted", "message": PREEMPTION}))
    assert stopping.preempted and stopping.message.endswith("(stopping its pods now)"), stopping
    # Another job's Workload is not this job's.
    assert workload_of(job(uid="other"), [workload(*pending())]) is None


# -- logs -f ------------------------------------------------------------------------------------
def test_follow_says_why_the_job_is_queued_and_follows_it_once_admitted(kube, run_kjob, tmp_path):
    queued_job(kube, run_kjob, tmp_path)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=run_kjob("logs", "smoke", "-f")), daemon=True)
    t.start()
    kube.wait_for_requests("list", "workloads", 2)
    # Kueue admits it: the operator makes the pods, which run, log and end.
    kube.workload("smoke", [{"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"}],
                  status={"admission": {"clusterQueue": "cluster-gpus"}})
    kube.set_condition("smoke", "Suspended", "False")
    pods = kube.run_job("smoke")
    launcher = next(p for p in pods if "launcher" in p)
    kube.append_log(launcher, ["epoch 1 loss 0.5"])
    time.sleep(0.5)
    kube.finish_job("smoke", "Succeeded")
    t.join(60)
    r = result["r"]
    assert r.code == 0, r
    assert f"waiting for the launcher pod of smoke: queued in LocalQueue team (ClusterQueue cluster-gpus): {QUOTA}" in r.err, r.err
    assert "epoch 1 loss 0.5" in r.out, r


class CountingKube:
    """Answers kjob.cluster.queueing's requests from fixed dicts; the visibility API is
    unavailable (ClusterUnavailable: what kjob raises after retrying its 503s)."""

    def __init__(self, workloads: list[dict]) -> None:
        self.workloads, self.asked = workloads, []

    def send(self, req):
        self.asked.append(req.path)
        if "pendingworkloads" in req.path:
            raise ClusterUnavailable("503: the server is currently unable to handle the request")
        if req.path.endswith("/localqueues/team"):
            return {"spec": {"clusterQueue": "cluster-gpus"}}
        return {"items": self.workloads}


def test_a_following_session_asks_an_unavailable_visibility_api_once():
    kube, unserved = CountingKube([workload(*pending())]), set()
    for _ in range(3):
        said = queueing(kube, job(), unserved)
        assert said.message == f"queued in LocalQueue team (ClusterQueue cluster-gpus): {QUOTA}", said
    assert sum("pendingworkloads" in path for path in kube.asked) == 1, kube.asked
