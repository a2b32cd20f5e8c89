"""Facts about one pod, read from its API object: which replica it is, whether its
container started or ended, why it is pending or failing, and the newest of several.

Pure functions over API dicts (no I/O); the status, logs, stopping and fetch code all
read pods through them.
"""

from __future__ import annotations

import re

from kjob.names import JOB_ROLE_LABEL, LAUNCHER, REPLICA_INDEX_LABEL, REPLICA_TYPE_LABEL

# Waiting reasons that will not go away by waiting: shown as the pod's reason.
WAITING_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "InvalidImageName", "RunContainerError", "ErrImageNeverPull", "PreCreateHookError")


def replica_name(pod: dict) -> str:
    """launcher / master-0 / worker-3, from the operators' labels: a PyTorchJob pod by
    training-operator's replica-type and replica-index; an MPIJob pod by mpi-operator's
    job-role (launcher|worker), with replica-index on workers only. A pod with neither
    is shown by its name."""
    labels = pod["metadata"].get("labels") or {}
    role = labels.get(REPLICA_TYPE_LABEL) or labels.get(JOB_ROLE_LABEL, "")
    if not role:
        return pod["metadata"]["name"]
    if role == LAUNCHER:
        return LAUNCHER
    return f"{role}-{labels.get(REPLICA_INDEX_LABEL, '0')}"


def newest(pods: list[dict]) -> dict | None:
    """The most recently created pod (a retried launcher replaces the old one)."""
    return max(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]), default=None)


def container_of(pod: dict) -> str:
    """The pod's main container: the first one (kjob's templates put the trainer there)."""
    return pod["spec"]["containers"][0]["name"]


def container_status(pod: dict, container: str) -> dict:
    """The status of one container of the pod ({} before it has one)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return cs
    return {}


def started(pod: dict) -> bool:
    """The main container runs or has run: it has a log."""
    state = container_status(pod, container_of(pod)).get("state") or {}
    return "running" in state or "terminated" in state


def terminated(pod: dict) -> bool:
    """The pod is over, or its main container has ended."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return True
    return "terminated" in (container_status(pod, container_of(pod)).get("state") or {})


def restarts(pod: dict) -> int:
    """How often the pod's containers were restarted, all together."""
    return sum(cs.get("restartCount", 0) for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def exit_code(pod: dict) -> int | None:
    """The exit code of the first container that has ended, if any."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term.get("exitCode")
    return None


def _latest_events(pod: dict, events: list[dict]) -> dict[str, dict]:
    """reason -> newest Event about this pod."""
    name = pod["metadata"]["name"]
    mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
    mine.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return {e.get("reason"): e for e in mine}


def _claim_in(pod: dict, message: str) -> str:
    m = re.search(r'persistentvolumeclaim "([^"]+)"', message)
    if m:
        return m.group(1)
    for vol in pod["spec"].get("volumes") or []:
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and f'"{vol["name"]}"' in message:
            return claim
    return "?"


def _container_reason(pod: dict, cs: dict) -> str | None:
    state, last = cs.get("state") or {}, (cs.get("lastState") or {}).get("terminated") or {}
    waiting, term = state.get("waiting") or {}, state.get("terminated") or {}
    name, restarts = cs["name"], cs.get("restartCount", 0)
    if "OOMKilled" in (last.get("reason"), term.get("reason")):
        limit = next((c.get("resources", {}).get("limits", {}).get("memory") for c in pod["spec"].get("containers", []) if c["name"] == name), None)
        return f'OOMKilled: container "{name}" ran out of memory' + (f" (limit {limit})" if limit else "") + f", restarted {restarts} times"
    if waiting.get("reason") in ("ImagePullBackOff", "ErrImagePull"):
        return f'{waiting["reason"]}: cannot pull image "{cs.get("image") or "?"}"'
    if waiting.get("reason") == "CrashLoopBackOff":
        code = last.get("exitCode", "?")
        return f'CrashLoopBackOff: container "{name}" keeps exiting with code {code} (restarted {restarts} times; kjob logs --previous shows why)'
    if waiting.get("reason") in WAITING_ERRORS:
        return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    if term and term.get("exitCode", 0) != 0:
        return f'{term.get("reason") or "Error"}: container "{name}" exited with code {term["exitCode"]}'
    return None


def pod_reason(pod: dict, events: list[dict]) -> str | None:
    """Why a pod is pending or failing, in one line; None when nothing is wrong."""
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        reason = _container_reason(pod, cs)
        if reason:
            return reason
    latest = _latest_events(pod, events)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            ev = latest.get("FailedScheduling")
            return f"FailedScheduling: {(ev or {}).get('message') or cond.get('message') or cond.get('reason')}"
    if status.get("phase") == "Pending":
        for reason in ("FailedScheduling", "FailedMount", "FailedAttachVolume"):
            ev = latest.get(reason)
            if ev and reason == "FailedScheduling":
                return f"FailedScheduling: {ev.get('message')}"
            if ev:
                return f'{reason}: claim "{_claim_in(pod, ev.get("message", ""))}" cannot be mounted: {ev.get("message")}'
    if status.get("phase") == "Failed" and status.get("reason"):
        return f"{status['reason']}: {status.get('message', '')}".rstrip(": ")
    return None


