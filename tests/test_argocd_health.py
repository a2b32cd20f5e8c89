"""The Argo CD health check (manifests/argocd/health.lua), run with real Lua (lupa)."""

from __future__ import annotations

from pathlib import Path

import pytest

lupa = pytest.importorskip("lupa")

SCRIPT_PATH = Path(__file__).resolve().parents[1] / "manifests" / "argocd" / "health.lua"
SCRIPT = SCRIPT_PATH.read_text()


def health(obj: dict) -> tuple[str, str]:
    """Run the script as Argo CD does: `obj` global, returns a table {status, message}."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value):
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


def cond(type_, status="True", time="2026-11-23T04:00:00Z", message=None, reason=None):
    c = {"type": type_, "status": status, "lastTransitionTime": time}
    if message is not None:
        c["message"] = message
    if reason is not None:
        c["reason"] = reason
    return c


def job(*conditions, replicas=None, kind="MPIJob", suspend=False):
    obj = {"kind": kind, "spec": {"runPolicy": {"suspend": suspend}}, "status": {}}
    if conditions:
        obj["status"]["conditions"] = list(conditions)
    if replicas is not None:
        obj["status"]["replicaStatuses"] = replicas
    return obj


def test_no_status_yet():
    assert health({"kind": "MPIJob", "spec": {}}) == ("Progressing", "Waiting for the operator to create the job's pods")


def test_suspended_before_any_status():
    assert health(job(suspend=True))[0] == "Suspended"


def test_created_then_running_with_replica_counts():
    created = cond("Created", time="2026-11-23T04:00:00Z", message="MPIJob default/pi is created.")
    assert health(job(created)) == ("Progressing", "MPIJob default/pi is created.")
    running = cond("Running", time="2026-11-23T04:01:00Z", message="MPIJob default/pi is running.")
    obj = job(created, running, replicas={"Launcher": {"active": 1}, "Worker": {"active": 2, "failed": 0}})
    assert health(obj) == ("Progressing", "MPIJob default/pi is running. (Launcher: 1 active; Worker: 2 active)")


def test_succeeded_is_healthy():
    obj = job(cond("Created"), cond("Running", status="False"), cond("Succeeded", time="2026-11-23T05:00:00Z", message="MPIJob default/pi successfully completed."))
    assert health(obj) == ("Healthy", "MPIJob default/pi successfully completed.")


def test_failed_is_degraded_with_the_reason():
    obj = job(cond("Created"), cond("Running", status="False"), cond("Failed", time="2026-11-23T05:00:00Z", reason="BackoffLimitExceeded"))
    assert health(obj) == ("Degraded", "BackoffLimitExceeded")


def test_terminal_condition_wins_over_a_later_one():
    obj = job(cond("Failed", time="2026-11-23T05:00:00Z", message="boom"), cond("Running", time="2026-11-23T06:00:00Z"))
    assert health(obj) == ("Degraded", "boom")


def test_restarting_pytorchjob():
    obj = job(cond("Created"), cond("Restarting", time="2026-11-23T04:30:00Z", message="PyTorchJob x is restarting because 1 Worker replica(s) failed."),
              replicas={"Master": {"active": 1}, "Worker": {"failed": 1}}, kind="PyTorchJob")
    assert health(obj) == ("Progressing", "Restarting: PyTorchJob x is restarting because 1 Worker replica(s) failed. (Master: 1 active; Worker: 1 failed)")


def test_suspended_condition():
    obj = job(cond("Created"), cond("Suspended", time="2026-11-23T04:30:00Z", message="MPIJob suspended"))
    assert health(obj) == ("Suspended", "MPIJob suspended")


def test_only_false_conditions():
    assert health(job(cond("Created", status="False"))) == ("Progressing", "Waiting for the job to start")


# --- TrainJob (trainer.kubeflow.org/v1alpha1) -----------------------------------------------
# A table, so that a runner under gopher-lua (Argo CD's own Lua) can import it and check
# the same answers: (id, object, (status, message)).


def trainjob(*conditions, jobs=None, suspend=None):
    obj: dict = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "spec": {"runtimeRef": {"name": "kjob-openmpi"}}}
    if suspend is not None:
        obj["spec"]["suspend"] = suspend
    status: dict = {}
    if conditions:
        status["conditions"] = list(conditions)
    if jobs is not None:
        status["jobsStatus"] = jobs
    if status:
        obj["status"] = status
    return obj


def rjob(name, active=0, ready=0, succeeded=0, failed=0, suspended=0):
    # The controller writes every count (they are required), zeros included.
    return {"name": name, "active": active, "ready": ready, "succeeded": succeeded, "failed": failed, "suspended": suspended}


TRAINJOB_CASES = [
    ("no-status", trainjob(), ("Progressing", "Waiting for the trainer controller to create the job's JobSet")),
    ("suspended-before-status", trainjob(suspend=True), ("Suspended", "The job is suspended (spec.suspend)")),
    ("suspended-condition", trainjob(cond("Suspended", reason="Suspended", message="TrainJob is suspended"),
                                     jobs=[rjob("node", suspended=1), rjob("launcher", suspended=1)], suspend=True),
     ("Suspended", "TrainJob is suspended")),
    ("resumed-pods-pending", trainjob(cond("Suspended", status="False", reason="Resumed"),
                                      jobs=[rjob("node"), rjob("launcher")]),
     ("Progressing", "Waiting for the job's pods")),
    ("starting", trainjob(jobs=[rjob("node", active=1), rjob("launcher")]),
     ("Progressing", "Running (node: 1 active)")),
    ("running", trainjob(jobs=[rjob("node", active=1, ready=1), rjob("launcher", active=1, ready=1)]),
     ("Progressing", "Running (node: 1 active, 1 ready; launcher: 1 active, 1 ready)")),
    ("between-restarts", trainjob(jobs=[rjob("node", failed=1)]),
     ("Progressing", "Waiting for the job's pods (node: 1 failed)")),
    ("complete", trainjob(cond("Complete", reason="AllJobsCompleted", message="jobset completed successfully"),
                          jobs=[rjob("node", succeeded=1), rjob("launcher", succeeded=1)]),
     ("Healthy", "jobset completed successfully")),
    ("complete-without-message", trainjob(cond("Complete", reason="AllJobsCompleted")), ("Healthy", "AllJobsCompleted")),
    ("failed", trainjob(cond("Failed", reason="FailedJobs", message="jobset failed due to reaching max number of restarts"),
                        jobs=[rjob("node", failed=1), rjob("launcher", active=1)]),
     ("Degraded", "jobset failed due to reaching max number of restarts")),
    ("failed-wins-over-suspended", trainjob(cond("Suspended", time="2026-11-23T06:00:00Z"), cond("Failed", reason="DeadlineExceeded")),
     ("Degraded", "DeadlineExceeded")),
    ("failed-bare", trainjob(cond("Failed")), ("Degraded", "The job failed")),
]


@pytest.mark.parametrize("obj, expected", [c[1:] for c in TRAINJOB_CASES], ids=[c[0] for c in TRAINJOB_CASES])
def test_trainjob_health(obj, expected):
    assert health(obj) == expected


def test_trainjob_running_condition_is_not_read():
    # Upstream has no Running condition; one written by hand is not taken for progress.
    obj = trainjob(cond("Running", message="hand-written"), jobs=[rjob("node", active=2, ready=2)])
    assert health(obj) == ("Progressing", "Running (node: 2 active, 2 ready)")


def test_the_patch_registers_the_check_for_all_three_kinds():
    import yaml

    patch = yaml.safe_load((SCRIPT_PATH.parent / "argocd-cm-patch.yaml").read_text())
    keys = {k for k in patch["data"] if k.startswith("resource.customizations.health.")}
    assert keys == {f"resource.customizations.health.{k}" for k in
                    ("kubeflow.org_MPIJob", "kubeflow.org_PyTorchJob", "trainer.kubeflow.org_TrainJob")}
    assert all(patch["data"][k] == SCRIPT for k in keys)
