"""One state per cluster job, explained: from the job's conditions, its replica statuses,
its pods and their Warning Events. Pure functions over API dicts (no I/O, no client
import)."""

from __future__ import annotations

from kjob import names
from kjob.backend import FINAL_STATES, JobStatus, PodInfo
from kjob.cluster.gitops import gitops_owner
from kjob.cluster.disruptions import DISRUPTION_EVENTS, first_time, gone_pod_trouble
from kjob.cluster.pods import exit_code, pod_reason, pod_trouble, replica_name

# The operators' condition types that are job states (kubeflow/common JobConditionType).
CONDITION_STATES = ("Created", "Running", "Restarting", "Succeeded", "Failed", "Suspended")


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


def ended(job: dict) -> tuple[str | None, str | None]:
    """(Succeeded | Failed, when) of a job that has ended, else (None, None). When: the
    final condition's lastTransitionTime, else status.completionTime."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in FINAL_STATES:
            return c["type"], c.get("lastTransitionTime") or (job.get("status") or {}).get("completionTime")
    return None, None


def pod_info(pod: dict, events: list[dict]) -> PodInfo:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return PodInfo(
        name=pod["metadata"]["name"],
        replica=replica_name(pod),
        phase=status.get("phase", "Unknown"),
        ready=_ready(status, statuses),
        restarts=sum(cs.get("restartCount", 0) for cs in statuses),
        node=pod.get("spec", {}).get("nodeName"),
        reason=pod_reason(pod, events),
    )


def _ready(status: dict, statuses: list[dict]) -> bool:
    """The pod's Ready condition (the node lifecycle controller turns it False on a lost
    node while the containers still say ready); the containers' when it has none."""
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if cond is not None:
        return cond.get("status") == "True"
    return bool(statuses) and all(cs.get("ready") for cs in statuses)


def troubles(job: dict, pods: list[dict], events: list[dict]) -> list[tuple[str, str, str]]:
    """(when, who, why) of every current trouble of the job, earliest first: its pods'
    (an OOMKilled that is over is not one), the job's own Warning Events (mpi-operator's
    "worker pod created failed: ... exceeded quota"), and what the Events of its pods that
    are gone say took them (events outlive pods: cleanPodPolicy removed the workers)."""
    md = job["metadata"]
    found = []
    for p in pods:
        t = pod_trouble(p, events)
        if t and not t.over:
            found.append((t.when, replica_name(p), t.text))
    kind = job.get("kind")
    for e in events:
        obj = e.get("involvedObject") or {}
        if obj.get("kind") == kind and obj.get("name") == md["name"] and e.get("type") == "Warning":
            found.append((first_time(e), kind, f"{e.get('reason')}: {e.get('message', '')}".rstrip(": ")))
    names = {p["metadata"]["name"] for p in pods}
    gone: dict[str, list[dict]] = {}
    for e in events:
        obj = e.get("involvedObject") or {}
        if obj.get("kind") == "Pod" and obj.get("name") not in names and e.get("reason") in DISRUPTION_EVENTS:
            gone.setdefault(obj["name"], []).append(e)
    for name, evs in gone.items():
        t = gone_pod_trouble(evs)
        if t:
            found.append((t.when, f"{gone_replica(md['name'], name)} (gone)", t.text))
    # Unknown times go last: a failure with a time is known to be first. In the same second
    # a pod's trouble comes before the job's Event (mpi-operator's "1/2 workers are
    # evicted" follows the eviction).
    return sorted(found, key=lambda f: (not f[0], f[0], f[1] == kind))


def gone_replica(job: str, pod: str) -> str:
    """worker-3 of <job>-worker-3, launcher of <job>-launcher-x7k2p: a pod that no longer
    exists has no labels to read."""
    rest = pod.removeprefix(f"{job}-")
    return "launcher" if rest.startswith("launcher") else rest


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
    found = troubles(job, pods or [], events) if pods is not None else []
    if state not in FINAL_STATES:
        # The job's own Warning Events last an hour: one older than the job's last change
        # of state (the quota was raised, the job runs now) is over.
        changed = max((c.get("lastTransitionTime") or "" for c in st.get("conditions") or [] if c.get("status") == "True"), default="")
        found = [f for f in found if f[1] != job["kind"] or f[0] >= changed]
    out = JobStatus(
        name=md["name"], namespace=md.get("namespace"), kind=job["kind"], state=state, message=message,
        workers=int(ann.get(names.WORKERS, 0) or 0), gpus_per_worker=int(ann.get(names.GPUS_PER_WORKER, 0) or 0),
        image=_image(job), created=md.get("creationTimestamp"), started=st.get("startTime"), finished=st.get("completionTime"),
        replicas=st.get("replicaStatuses") or {}, pods=infos,
    )
    owner = gitops_owner(job)
    out.managed_by = str(owner) if owner else None
    if state not in FINAL_STATES and found:
        out.message = f"{found[0][1]}: {found[0][2]}"
        if state == "Created":
            out.state = "Pending"
    elif state == "Failed" and found:
        out.cause = f"{found[0][1]}: {found[0][2]}"
    elif state == "Created" and infos and all(i.phase == "Pending" for i in infos):
        out.state = "Pending"
    if state == "Failed":
        leaders = [p for p in pods or [] if replica_name(p) in names.LEADERS]
        out.exit_code = next((c for c in map(exit_code, leaders) if c is not None), None)
    running_workers = [i for i in infos if i.replica.startswith("worker") and i.phase == "Running"]
    if state == "Succeeded" and running_workers:
        policy = (job.get("spec") or {}).get("runPolicy", {}).get("cleanPodPolicy", "None")
        out.warnings.append(f"job Succeeded while {len(running_workers)} worker pod(s) are still Running (cleanPodPolicy {policy}): they hold their GPUs until `kjob delete {md['name']}`")
    return out
