"""Facts about one pod, read from its API object: which replica it is, whether its
container started or ended, why it is pending or failing, and the newest of several.

Pure functions over API dicts (no I/O); the status, logs, stopping and fetch code all
read pods through them.
"""

from __future__ import annotations

import re

from kjob.cluster.disruptions import Trouble, disruption, event_time, first_time, preempted_text
from kjob.cluster.kinds import replica_of
from kjob.names import (COMPLETION_INDEX_LABEL, JOB_INDEX_LABEL, JOB_ROLE_LABEL, JOBSET_NAME_LABEL, LAUNCHER, REPLICA_INDEX_LABEL,
                        REPLICA_TYPE_LABEL, REPLICATED_JOB_LABEL, TRAINJOB_CONTAINER)

# Waiting reasons that will not go away by waiting: shown as the pod's reason.
WAITING_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "InvalidImageName", "RunContainerError", "ErrImageNeverPull", "PreCreateHookError")


def replica_name(pod: dict) -> str:
    """launcher / master-0 / worker-3 / node-1, from the operators' labels: a PyTorchJob
    pod by training-operator's replica-type and replica-index; an MPIJob pod by
    mpi-operator's job-role (launcher|worker), with replica-index on workers only; a
    TrainJob's pod by JobSet's replicated job and job index and the Job controller's
    completion index (kinds.replica_of). A pod with none of them is shown by its name."""
    labels = pod["metadata"].get("labels") or {}
    if labels.get(REPLICATED_JOB_LABEL):
        try:
            return replica_of(labels[REPLICATED_JOB_LABEL], int(labels.get(JOB_INDEX_LABEL, 0)), int(labels.get(COMPLETION_INDEX_LABEL, 0)))
        except ValueError:
            return pod["metadata"]["name"]
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
    """The pod's main container: a JobSet pod's trainer container (Trainer v2 names it
    node, wherever the runtime put it), else the first one (kjob's templates put the
    trainer there)."""
    containers = [c["name"] for c in pod["spec"]["containers"]]
    if JOBSET_NAME_LABEL in (pod["metadata"].get("labels") or {}) and TRAINJOB_CONTAINER in containers:
        return TRAINJOB_CONTAINER
    return containers[0]


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


# The kubelet records a pull's own error ('Failed to pull image "x": ...: not found') and
# then, on every retry in its back-off, 'Error: ImagePullBackOff', all under one reason,
# Failed (pkg/kubelet/events: FailedToPullImage and FailedToCreateContainer): the newest
# Failed Event seldom holds the cause. The newest pull error is also kept under this key.
PULL_ERROR = "Failed to pull image"


def _latest_events(pod: dict, events: list[dict]) -> dict[str, dict]:
    """reason -> newest Event about this pod (by name: also those of an earlier pod of the
    same name, which the operator replaced); PULL_ERROR -> the newest pull error."""
    name = pod["metadata"]["name"]
    mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
    mine.sort(key=event_time)
    latest = {e.get("reason"): e for e in mine}
    pulls = [e for e in mine if e.get("reason") == "Failed" and (e.get("message") or "").startswith(PULL_ERROR)]
    if pulls:
        latest[PULL_ERROR] = pulls[-1]
    return latest


def _claim_in(pod: dict, message: str) -> str:
    m = re.search(r'persistentvolumeclaim "([^"]+)"', message)
    if m:
        return m.group(1)
    for vol in pod["spec"].get("volumes") or []:
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and f'"{vol["name"]}"' in message:
            return claim
    return "?"


def _pull_cause(pod: dict, waiting: dict, latest: dict[str, dict]) -> str:
    """Why an image pull fails, in the registry's words: the last part of the kubelet's
    newest pull error ('Failed to pull image "x": ...: not found'), else of the waiting
    message (ErrImagePull's holds the error; ImagePullBackOff's only says it backs off)."""
    text = (latest.get(PULL_ERROR) or {}).get("message") or waiting.get("message") or ""
    cause = text.rstrip(" .").rpartition(": ")[2].strip()
    return f": {cause}" if cause and "Back-off pulling image" not in cause else ""


def _container_trouble(pod: dict, cs: dict, latest: dict[str, dict]) -> Trouble | None:
    state, last = cs.get("state") or {}, (cs.get("lastState") or {}).get("terminated") or {}
    waiting, term = state.get("waiting") or {}, state.get("terminated") or {}
    name, restarts = cs["name"], cs.get("restartCount", 0)
    if "OOMKilled" in (last.get("reason"), term.get("reason")):
        limit = next((c.get("resources", {}).get("limits", {}).get("memory") for c in pod["spec"].get("containers", []) if c["name"] == name), None)
        text = f'OOMKilled: container "{name}" ran out of memory' + (f" (limit {limit})" if limit else "") + f", restarted {restarts} times"
        if "running" in state and term.get("reason") != "OOMKilled":
            # Over: the container runs again. History for the pod's row, not the headline.
            at = f" at {last['finishedAt']}" if last.get("finishedAt") else ""
            return Trouble(f"{text}; was OOMKilled{at}, running again since {state['running'].get('startedAt', '?')}", last.get("finishedAt", ""), over=True)
        return Trouble(text, (term or last).get("finishedAt", ""))
    if waiting.get("reason") in ("ImagePullBackOff", "ErrImagePull"):
        since = event_time(latest.get("Failed") or {}) or (pod.get("status") or {}).get("startTime", "")
        return Trouble(f'{waiting["reason"]}: cannot pull image "{cs.get("image") or "?"}"{_pull_cause(pod, waiting, latest)}', since)
    if waiting.get("reason") == "CrashLoopBackOff":
        code = last.get("exitCode", "?")
        return Trouble(f'CrashLoopBackOff: container "{name}" keeps exiting with code {code} (restarted {restarts} times; kjob logs --previous shows why)',
                       last.get("finishedAt", ""))
    if waiting.get("reason") in WAITING_ERRORS:
        return Trouble(f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": "), (pod.get("status") or {}).get("startTime", ""))
    if term and term.get("exitCode", 0) != 0:
        return Trouble(f'{term.get("reason") or "Error"}: container "{name}" exited with code {term["exitCode"]}', term.get("finishedAt", ""))
    return None


def pod_reason(pod: dict, events: list[dict]) -> str | None:
    """Why a pod is pending or failing, in one line; None when nothing is wrong (an
    OOMKilled that is over counts: it is the pod's history)."""
    trouble = pod_trouble(pod, events)
    return trouble.text if trouble else None


def pod_trouble(pod: dict, events: list[dict]) -> Trouble | None:
    """Why a pod is pending or failing, and since when; None when nothing is wrong. A
    disruption (preempted, evicted, its node lost) comes first: the container's end
    (ContainerStatusUnknown 137 of an evicted pod) is only its consequence."""
    status = pod.get("status") or {}
    latest = _latest_events(pod, events)
    taken = disruption(pod, latest)
    if taken:
        return taken
    history = None
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        trouble = _container_trouble(pod, cs, latest)
        if trouble and not trouble.over:
            return trouble
        history = history or trouble
    current = _pending_trouble(pod, status, latest)
    if current and latest.get("Preempted"):
        # The operator recreated a preempted pod under its name; the new one waits.
        current = Trouble(f"{preempted_text(latest['Preempted'], None)}; its replacement waits: {current.text}", first_time(latest["Preempted"]))
    return current or history


def _pending_trouble(pod: dict, status: dict, latest: dict[str, dict]) -> Trouble | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            ev = latest.get("FailedScheduling")
            return Trouble(f"FailedScheduling: {(ev or {}).get('message') or cond.get('message') or cond.get('reason')}", cond.get("lastTransitionTime") or "")
    if status.get("phase") == "Pending":
        for reason in ("FailedScheduling", "FailedMount", "FailedAttachVolume"):
            ev = latest.get(reason)
            if ev and reason == "FailedScheduling":
                return Trouble(f"FailedScheduling: {ev.get('message')}", first_time(ev))
            if ev:
                return Trouble(f'{reason}: claim "{_claim_in(pod, ev.get("message", ""))}" cannot be mounted: {ev.get("message")}', first_time(ev))
    if status.get("phase") == "Failed" and status.get("reason"):
        return Trouble(f"{status['reason']}: {status.get('message', '')}".rstrip(": "), "")
    return None
