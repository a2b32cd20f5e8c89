"""One state per job, explained: from the job's conditions, its replica statuses, its
pods and their Warning Events — and the text/json/yaml that `kjob status`/`kjob list`
print. Pure functions over API dicts (no I/O, no client import), shared by both backends'
output."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from kjob.backend import FINAL_STATES, JobStatus, PodInfo

CONDITION_STATES = ("Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
# training-operator labels a PyTorchJob's pods with the replica type (master|worker) and
# index (kubeflow/common constants.go ReplicaTypeLabel / ReplicaIndexLabel).
REPLICA_LABEL = "training.kubeflow.org/replica-type"
INDEX_LABEL = "training.kubeflow.org/replica-index"
# mpi-operator v2beta1 never sets replica-type: its defaultLabels give every pod the role
# (launcher|worker) and only workers an index (mpi_job_controller.go, defaultLabels/newWorker).
ROLE_LABEL = "training.kubeflow.org/job-role"
WAITING_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "InvalidImageName", "RunContainerError", "ErrImageNeverPull", "PreCreateHookError")


def job_state(job: dict) -> tuple[str, str | None]:
    """(state, condition message). Final conditions win; otherwise the newest True one.
    No conditions yet means the operator has not picked the job up: Pending."""
    conds = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True" and c.get("type") in CONDITION_STATES]
    for final in ("Failed", "Succeeded", "Suspended"):
        for c in conds:
            if c["type"] == final:
                return final, c.get("message")
    if not conds:
        return "Pending", "no conditions yet: waiting for the operator to pick the job up"
    newest = max(enumerate(conds), key=lambda ic: (ic[1].get("lastTransitionTime") or "", ic[0]))[1]
    return newest["type"], newest.get("message")


def replica_name(pod: dict) -> str:
    """launcher / master-0 / worker-3, from the operators' labels."""
    labels = pod["metadata"].get("labels") or {}
    role = labels.get(REPLICA_LABEL) or labels.get(ROLE_LABEL, "")
    if role == "launcher" or not role:
        return role or pod["metadata"]["name"]
    return f"{role}-{labels.get(INDEX_LABEL, '0')}"


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


def pod_info(pod: dict, events: list[dict]) -> PodInfo:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return PodInfo(
        name=pod["metadata"]["name"],
        replica=replica_name(pod),
        phase=status.get("phase", "Unknown"),
        ready=bool(statuses) and all(cs.get("ready") for cs in statuses),
        restarts=sum(cs.get("restartCount", 0) for cs in statuses),
        node=pod.get("spec", {}).get("nodeName"),
        reason=pod_reason(pod, events),
    )


def _order(info: PodInfo) -> tuple:
    role, _, index = info.replica.partition("-")
    return (0 if role in ("launcher", "master") else 1, int(index) if index.isdigit() else 0, info.name)


def _image(job: dict) -> str | None:
    for replica in (job.get("spec") or {}).values():
        if not isinstance(replica, dict):
            continue
        for key in ("Worker", "Master", "Launcher"):
            containers = (replica.get(key) or {}).get("template", {}).get("spec", {}).get("containers") or []
            if containers:
                return containers[0].get("image")
    return None


def job_status(job: dict, pods: list[dict] | None, events: list[dict]) -> JobStatus:
    """The JobStatus of a job object, its pods (None: not looked at) and Warning Events."""
    md, st = job["metadata"], job.get("status") or {}
    ann = md.get("annotations") or {}
    state, message = job_state(job)
    infos = sorted((pod_info(p, events) for p in pods or []), key=_order)
    out = JobStatus(
        name=md["name"], namespace=md.get("namespace"), kind=job["kind"], state=state, message=message,
        workers=int(ann.get("kjob.dev/workers", 0) or 0), gpus_per_worker=int(ann.get("kjob.dev/gpus-per-worker", 0) or 0),
        image=_image(job), created=md.get("creationTimestamp"), started=st.get("startTime"), finished=st.get("completionTime"),
        replicas=st.get("replicaStatuses") or {}, pods=infos,
    )
    troubled = [i for i in infos if i.reason]
    if state not in FINAL_STATES and troubled:
        out.message = f"{troubled[0].replica}: {troubled[0].reason}"
        if state == "Created":
            out.state = "Pending"
    elif state == "Created" and infos and all(i.phase == "Pending" for i in infos):
        out.state = "Pending"
    if state == "Failed":
        leaders = [p for p in pods or [] if replica_name(p) in ("launcher", "master-0")]
        out.exit_code = next((c for c in map(_exit_code, leaders) if c is not None), None)
    running_workers = [i for i in infos if i.replica.startswith("worker") and i.phase == "Running"]
    if state == "Succeeded" and running_workers:
        policy = (job.get("spec") or {}).get("runPolicy", {}).get("cleanPodPolicy", "None")
        out.warnings.append(f"job Succeeded while {len(running_workers)} worker pod(s) are still Running (cleanPodPolicy {policy}): they hold their GPUs until `kjob delete {md['name']}`")
    return out


def _exit_code(pod: dict) -> int | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term.get("exitCode")
    return None


# -- output ----------------------------------------------------------------------------------------------
def dump(data, output: str) -> str:
    """`-o json|yaml` output of a JobStatus / list of them."""
    plain = [d.to_dict() for d in data] if isinstance(data, list) else data.to_dict()
    if output == "yaml":
        import yaml

        return yaml.safe_dump(plain, sort_keys=False).rstrip("\n")
    return json.dumps(plain, indent=2)


def age(created: str | None, now: datetime | None = None) -> str:
    if not created:
        return "-"
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    secs = int(((now or datetime.now(timezone.utc)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_status(st: JobStatus) -> str:
    where = f"{st.namespace}/{st.name}" if st.namespace else st.name
    lines = [f"Job:       {where} ({st.kind})", f"State:     {st.state}"]
    if st.message:
        lines.append(f"Message:   {st.message}")
    if st.exit_code is not None:
        lines.append(f"Exit code: {st.exit_code}")
    if st.workers:
        lines.append(f"Workers:   {st.workers} x {st.gpus_per_worker} GPU")
    if st.image:
        lines.append(f"Image:     {st.image}")
    times = [f"{k} {v}" for k, v in (("created", st.created), ("started", st.started), ("finished", st.finished)) if v]
    if times:
        lines.append("Time:      " + ", ".join(times))
    if st.replicas:
        parts = [f"{role} " + " ".join(f"{n} {word}" for word, n in counts.items()) for role, counts in st.replicas.items()]
        lines.append("Replicas:  " + "; ".join(parts))
    if st.pods:
        rows = [["REPLICA", "POD", "PHASE", "READY", "RESTARTS", "NODE", "REASON"]]
        rows += [[p.replica, p.name, p.phase, "yes" if p.ready else "no", str(p.restarts), p.node or "-", p.reason or ""] for p in st.pods]
        lines += ["Pods:"] + ["  " + r for r in _table(rows)]
    lines += [f"Warning:   {w}" for w in st.warnings]
    return "\n".join(lines)


def format_list(jobs: list[JobStatus], all_namespaces: bool = False) -> str:
    if not jobs:
        return "No kjob jobs found."
    head = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "KIND", "STATE", "AGE", "WORKERS", "IMAGE"]
    rows = [head]
    for j in jobs:
        rows.append(([j.namespace or "-"] if all_namespaces else []) + [j.name, j.kind, j.state, age(j.created), f"{j.workers}x{j.gpus_per_worker}", j.image or "-"])
    return "\n".join(_table(rows))
