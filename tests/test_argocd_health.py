"""The Argo CD health check (manifests/argocd/health.lua), run with real Lua (lupa)."""

from __future__ import annotations

from pathlib import Path

import pytest

lupa = pytest.importorskip("lupa")

SCRIPT = (Path(__file__).resolve().parents[1] / "manifests" / "argocd" / "health.lua").read_text()


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
