"""Why a job waits or died (issue 24 point 2), from API objects shaped as the components
that write them do (k8s.io/kubernetes v1.34, mpi-operator v0.8; see
kjob.cluster.disruptions). tests/cluster/test_real_why.py makes each happen for real."""

from __future__ import annotations

from kjob.cluster.pods import pod_reason
from kjob.cluster.status import job_status
from kjob.report import format_status

T0, T1, T2, T3 = "2026-12-07T08:00:00Z", "2026-12-07T08:01:00Z", "2026-12-07T08:02:00Z", "2026-12-07T08:03:00Z"


def job(*conds: str, at: str = T0) -> dict:
    return {"kind": "MPIJob", "metadata": {"name": "j", "namespace": "ns"}, "spec": {"runPolicy": {"cleanPodPolicy": "Running"}},
            "status": {"conditions": [{"type": c, "status": "True", "lastTransitionTime": at, "message": f"MPIJob ns/j is {c.lower()}"}
                                      for c in conds]}}


def pod(replica: str, phase: str = "Running", *, uid: str = "u1", node: str = "kwok-node-1", conditions=(), statuses=None, **status) -> dict:
    role, _, index = replica.partition("-")
    labels = {"training.kubeflow.org/job-role": role} | ({"training.kubeflow.org/replica-index": index} if index else {})
    name = f"j-{replica}" if index else "j-launcher-x7k2p"
    running = [{"name": "main", "ready": phase == "Running", "restartCount": 0, "state": {"running": {"startedAt": T0}}}]
    return {"metadata": {"name": name, "uid": uid, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "img:1", "resources": {"limits": {"memory": "8Gi"}}}]},
            "status": {"phase": phase, "conditions": list(conditions), "containerStatuses": running if statuses is None else statuses, **status}}


def event(obj: str, reason: str, message: str, at: str, *, kind: str = "Pod", type_: str = "Warning", uid: str = "u1", **more) -> dict:
    return {"involvedObject": {"kind": kind, "name": obj, "namespace": "ns", "uid": uid}, "reason": reason, "message": message,
            "type": type_, "firstTimestamp": at, "lastTimestamp": at, **more}


def preempted(obj: str, at: str) -> dict:
    # The scheduler's events.k8s.io/v1 Event: eventTime, the preemptor as `related`.
    e = event(obj, "Preempted", "Preempted by pod 9f1c-uid on node kwok-node-1", at, type_="Normal",
              related={"kind": "Pod", "namespace": "ns", "name": "hog"})
    e.pop("firstTimestamp"), e.pop("lastTimestamp")
    return e | {"eventTime": at}


PREEMPTED = "preempted by pod ns/hog on node kwok-node-1 (the scheduler made room for a higher priority)"


def test_quota_exceeded_is_told_by_the_mpijobs_own_warning_event():
    quota = event("j", "MPIJobFailed", 'worker pod created failed: pods "j-worker-1" is forbidden: exceeded quota: tight, '
                  "requested: pods=1, used: pods=3, limited: pods=3", T1, kind="MPIJob")
    st = job_status(job("Created"), [pod("launcher", "Pending", statuses=[]), pod("worker-0")], [quota])
    assert (st.state, st.message) == ("Pending", f"MPIJob: MPIJobFailed: {quota['message']}")


def test_preempted_by_the_scheduler_names_the_preemptor():
    victim = pod("worker-3", conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                                          "message": "default-scheduler: preempting to accommodate a higher priority pod", "lastTransitionTime": T1}])
    st = job_status(job("Created", "Running"), [pod("launcher"), victim], [preempted("j-worker-3", T1)])
    assert st.message == f"worker-3: {PREEMPTED}"
    # The operator recreated it under the same name; the new pod waits for GPUs.
    again = pod("worker-3", "Pending", uid="u2", statuses=[], conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": T2,
         "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}])
    st = job_status(job("Created", "Running"), [pod("launcher"), again], [preempted("j-worker-3", T1)])
    assert st.message == f"worker-3: {PREEMPTED}; its replacement waits: FailedScheduling: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu."


def test_a_lost_node_names_the_node_and_since_when():
    stuck = pod("worker-5", conditions=[{"type": "Ready", "status": "False", "lastTransitionTime": T2}])
    lost = event("j-worker-5", "NodeNotReady", "Node is not ready", T2)
    st = job_status(job("Created", "Running"), [pod("launcher"), stuck], [lost])
    assert st.message == f"worker-5: its node kwok-node-1 NotReady since {T2} (the node stopped reporting: Node is not ready)"
    tainted = pod("worker-5", conditions=[{"type": "Ready", "status": "False"}, {"type": "DisruptionTarget", "status": "True",
              "reason": "DeletionByTaintManager", "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": T3}])
    assert pod_reason(tainted, [lost]) == ("deleted by the taint manager: Taint manager: deleting due to NoExecute taint; "
                                           f"its node kwok-node-1 NotReady since {T2} (the node stopped reporting: Node is not ready)")


def test_evicted_says_evicted_not_the_containers_exit_137():
    api = pod("worker-1", conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                       "message": "Eviction API: evicting", "lastTransitionTime": T1}])
    assert pod_reason(api, []) == "Evicted: Eviction API: evicting"
    pressure = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 12Mi. "
    kubelet = pod("worker-1", "Failed", reason="Evicted", message=pressure, statuses=[
        {"name": "main", "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": T1}}}])
    assert pod_reason(kubelet, []) == f"Evicted: {pressure}".rstrip()


def test_an_image_pull_failure_keeps_its_cause():
    waiting = [{"name": "main", "image": "registry.local/kjob:nope", "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": 'Back-off pulling image "registry.local/kjob:nope"'}}}]
    p = pod("worker-0", "Pending", statuses=waiting)
    failed = event("j-worker-0", "Failed", 'Failed to pull image "registry.local/kjob:nope": rpc error: code = NotFound desc = failed to pull '
                   'and unpack image "registry.local/kjob:nope": failed to resolve reference "registry.local/kjob:nope": registry.local/kjob:nope: not found', T1)
    assert pod_reason(p, [failed]) == 'ImagePullBackOff: cannot pull image "registry.local/kjob:nope": not found'
    denied = dict(failed, message='Failed to pull image "x": failed to authorize: failed to fetch oauth token: 401 Unauthorized')
    assert pod_reason(p, [denied]).endswith(": 401 Unauthorized")
    # As the kubelet goes on: its back-off's own Failed Events come after the pull's error.
    error = event("j-worker-0", "Failed", "Error: ErrImagePull", T1)
    backoff = event("j-worker-0", "Failed", "Error: ImagePullBackOff", T2)
    assert pod_reason(p, [failed, error, backoff]) == 'ImagePullBackOff: cannot pull image "registry.local/kjob:nope": not found'


def test_the_headline_is_the_first_failure_in_time_and_an_oomkilled_that_is_over_is_history():
    crash = [{"name": "main", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
              "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": T3}}}]
    oom = [{"name": "main", "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": T1}}}]
    over = [{"name": "main", "restartCount": 1, "ready": True, "state": {"running": {"startedAt": T2}},
             "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": T0}}}]
    pods = [pod("launcher", statuses=crash), pod("worker-0", statuses=over), pod("worker-57", "Failed", statuses=oom)]
    st = job_status(job("Created", "Running"), pods, [])
    assert st.message == 'worker-57: OOMKilled: container "main" ran out of memory (limit 8Gi), restarted 0 times'
    rows = {p.replica: p.reason for p in st.pods}
    assert rows["worker-0"] == f'OOMKilled: container "main" ran out of memory (limit 8Gi), restarted 1 times; was OOMKilled at {T0}, running again since {T2}'
    assert job_status(job("Created", "Running"), [pods[1]], []).message == "MPIJob ns/j is running"  # history is no headline


def test_a_failed_job_whose_workers_were_cleaned_up_keeps_its_root_cause():
    launcher = pod("launcher", "Failed", statuses=[{"name": "main", "state": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": T2}}}])
    events = [preempted("j-worker-1", T1), event("j-worker-1", "FailedScheduling", "0/2 nodes are available", T0)]
    st = job_status(job("Created", "Running", "Failed", at=T3), [launcher], events)
    assert st.cause == f"worker-1 (gone): {PREEMPTED}"
    assert f"Cause:     worker-1 (gone): {PREEMPTED}" in format_status(st).splitlines()


def test_in_the_same_second_a_pods_trouble_comes_before_the_jobs_event_that_follows_it():
    gone = event("j-worker-1", "Evicted", "The node was low on resource: memory. ", T1)
    operator = event("j", "MPIJobEvicted", "1/2 workers are evicted", T1, kind="MPIJob")
    for events in ([gone, operator], [operator, gone]):
        st = job_status(job("Created", "Running", "Failed", at=T1), [pod("launcher")], events)
        assert st.cause == "worker-1 (gone): Evicted: The node was low on resource: memory.", events


def test_ready_is_the_pods_ready_condition_which_a_lost_node_turns_false():
    stuck = pod("worker-5", conditions=[{"type": "Ready", "status": "False", "lastTransitionTime": T2}])  # containers still say ready
    assert stuck["status"]["containerStatuses"][0]["ready"] is True
    rows = job_status(job("Running"), [stuck, pod("worker-0", conditions=[{"type": "Ready", "status": "True"}])], []).pods
    assert [(p.replica, p.ready) for p in rows] == [("worker-0", True), ("worker-5", False)]


def test_the_jobs_own_warning_from_before_it_started_running_is_over():
    quota = event("j", "MPIJobFailed", "worker pod created failed: exceeded quota: tight", T1, kind="MPIJob")
    assert job_status(job("Created", at=T0), [pod("worker-0")], [quota]).message.startswith("MPIJob: MPIJobFailed")
    assert job_status(job("Created", "Running", at=T2), [pod("worker-0")], [quota]).message == "MPIJob ns/j is running"
