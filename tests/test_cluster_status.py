"""kjob.cluster.status and kjob.cluster.pods: one state from conditions + pods + Events,
pending reasons shown by `kjob status` and by `kjob logs -f` while it waits, output
formats (kjob.report)."""

from __future__ import annotations

import json
import threading

import pytest
import yaml

from kjob.cluster.pods import pod_reason
from kjob.cluster.status import job_state, job_status

pytestmark = pytest.mark.timeout(180)  # a bound against hangs, scaled by KJOB_TEST_TIME_SCALE


def cond(type_, status="True", t="2026-11-23T04:00:00Z", message=None):
    return {"type": type_, "status": status, "lastTransitionTime": t, "message": message or type_}


def job(*conds, kind="MPIJob"):
    return {"kind": kind, "metadata": {"name": "j", "namespace": "ns", "annotations": {"kjob.dev/workers": "2", "kjob.dev/gpus-per-worker": "8"}},
            "spec": {"runPolicy": {"cleanPodPolicy": "None"}}, "status": {"conditions": list(conds)}}


def pod(name, replica, phase="Running", **status):
    role, _, index = replica.partition("-")
    return {"metadata": {"name": name, "labels": {"training.kubeflow.org/replica-type": role, "training.kubeflow.org/replica-index": index or "0"}},
            "spec": {"containers": [{"name": "main", "image": "img:1", "resources": {"limits": {"memory": "8Gi"}}}], "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt-pvc"}}]},
            "status": {"phase": phase, **status}}


def test_state_from_conditions():
    assert job_state(job()) == ("Pending", "no conditions yet: waiting for the operator to pick the job up")
    assert job_state(job(cond("Created"), cond("Running", t="2026-11-23T04:01:00Z")))[0] == "Running"
    assert job_state(job(cond("Created"), cond("Running", t="2026-11-23T04:01:00Z"), cond("Restarting", t="2026-11-23T04:02:00Z")))[0] == "Restarting"
    assert job_state(job(cond("Running", "False"), cond("Succeeded")))[0] == "Succeeded"
    assert job_state(job(cond("Running"), cond("Failed", message="launcher exited 1"))) == ("Failed", "launcher exited 1")
    assert job_state(job(cond("Created"), cond("Suspended")))[0] == "Suspended"


def test_succeeded_while_workers_still_running_is_warned():
    st = job_status(job(cond("Succeeded")), [pod("j-launcher-abcde", "launcher", "Succeeded"), pod("j-worker-0", "worker-0"), pod("j-worker-1", "worker-1")], [])
    assert st.state == "Succeeded"
    assert st.warnings == ["job Succeeded while 2 worker pod(s) are still Running (cleanPodPolicy None): they hold their GPUs until `kjob delete j`"]


def test_pod_reasons_from_status_and_events():
    crash = {"containerStatuses": [{"name": "main", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}
    assert pod_reason(pod("p", "worker-0", **crash), []) == 'CrashLoopBackOff: container "main" keeps exiting with code 3 (restarted 4 times; kjob logs --previous shows why)'
    oom = {"containerStatuses": [{"name": "main", "restartCount": 1, "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}
    # Over (the container runs again): the pod's history, worded so.
    assert pod_reason(pod("p", "worker-0", **oom), []) == 'OOMKilled: container "main" ran out of memory (limit 8Gi), restarted 1 times; was OOMKilled, running again since ?'
    mount = {"involvedObject": {"name": "p"}, "reason": "FailedMount", "message": 'MountVolume.SetUp failed for volume "ckpt" : something', "lastTimestamp": "x"}
    assert pod_reason(pod("p", "worker-0", "Pending"), [mount]) == 'FailedMount: claim "ckpt-pvc" cannot be mounted: MountVolume.SetUp failed for volume "ckpt" : something'
    assert pod_reason(pod("p", "worker-0"), []) is None


def test_failed_job_reports_the_launcher_exit_code():
    launcher = pod("j-launcher-abcde", "launcher", "Failed", containerStatuses=[{"name": "main", "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}])
    st = job_status(job(cond("Failed")), [launcher], [])
    assert (st.state, st.exit_code) == ("Failed", 2)
    assert st.pods[0].reason == 'Error: container "main" exited with code 2'


REASONS = {
    "unschedulable": (lambda k, p: k.unschedulable(p, "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available."),
                      "FailedScheduling: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available."),
    "image": (lambda k, p: k.image_pull_backoff(p), 'ImagePullBackOff: cannot pull image "ghcr.io/kjob/kjob-trainer-pytorch:0.1.0"'),
    "pvc": (lambda k, p: k.missing_pvc(p, "kjob-checkpoints"),
            'FailedMount: claim "kjob-checkpoints" cannot be mounted: MountVolume.SetUp failed for volume "checkpoints" : persistentvolumeclaim "kjob-checkpoints" not found'),
    "crashloop": (lambda k, p: k.crash_loop(p, exit_code=2, restarts=5), 'CrashLoopBackOff: container "launcher" keeps exiting with code 2 (restarted 5 times; kjob logs --previous shows why)'),
    "oom": (lambda k, p: k.oom_killed(p, restarts=2), 'OOMKilled: container "launcher" ran out of memory'),
}


@pytest.mark.parametrize("case", REASONS)
def test_pending_reason_in_status_and_while_logs_wait(kube, run_kjob, case):
    make, expected = REASONS[case]
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    launcher = kube.start_job("smoke")[0]
    make(kube, launcher)
    st = run_kjob("status", "smoke")
    assert st.code == 0
    assert f"Message:   launcher: {expected}" in st.out
    assert json.loads(run_kjob("status", "smoke", "-o", "json").out)["message"].startswith(f"launcher: {expected}")
    events_before = kube.requests("list", "events")

    def end():
        # Events are listed right before the waiting line is printed; the second list
        # comes a poll later, after that line.
        kube.wait_for_requests("list", "events", events_before + 2)
        kube.set_condition("smoke", "Failed")

    threading.Thread(target=end, daemon=True).start()
    r = run_kjob("logs", "smoke", "-f")
    assert f"waiting for launcher ({launcher}) to start: {expected}" in r.err
    assert r.err.count("waiting for launcher") == 1  # said once, not on every poll
    assert r.code == 1 and r.err.endswith("job smoke Failed\n")


def test_status_text_json_yaml_and_list(kube, run_kjob):
    assert run_kjob("submit", "examples/smoke.yaml").code == 0
    kube.run_job("smoke")
    text = run_kjob("status", "smoke").out
    assert text.splitlines()[:3] == ["Job:       default/smoke (MPIJob)", "State:     Running", "Message:   job smoke is running"]
    assert "Replicas:  Launcher 1 active; Worker 2 active" in text
    as_json = json.loads(run_kjob("status", "smoke", "-o", "json").out)
    assert as_json == yaml.safe_load(run_kjob("status", "smoke", "-o", "yaml").out)
    assert [p["replica"] for p in as_json["pods"]] == ["launcher", "worker-0", "worker-1"]
    listed = run_kjob("list").out.splitlines()
    assert listed[0].split() == ["NAME", "KIND", "STATE", "AGE", "WORKERS", "IMAGE"]
    assert listed[1].split()[:3] == ["smoke", "MPIJob", "Running"]
    assert [j["name"] for j in json.loads(run_kjob("list", "-A", "-o", "json").out)] == ["smoke"]
