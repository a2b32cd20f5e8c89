"""One state per cluster job, explained: from the job's conditions, its replica statuses,
its pods and their Warning Events. Pure functions over API dicts (no I/O, no client
import)."""

from __future__ import annotations

from typing import NamedTuple

from kjob import names
from kjob.backend import FINAL_STATES, JobStatus, PodInfo
from kjob.cluster.gitops import gitops_owner
from kjob.cluster.disruptions import DISRUPTION_EVENTS, first_time, gone_pod_trouble
from kjob.cluster.kinds import kind_of
from kjob.cluster.pods import exit_code, pod_reason, pod_trouble, replica_name


def job_state(job: dict) -> tuple[str, str | None]:
    """(state, the message that explains it), as the job's kind reads its status
    (kinds: an MPIJob's or PyTorchJob's conditions, a TrainJob's conditions and jobsStatus)."""
    return kind_of(job).state(job)


def ended(job: dict) -> tuple[str | None, str | None]:
    """(Succeeded | Failed, when) of a job that has ended, else (None, None). When: the
    final condition's lastTransitionTime, else status.completionTime."""
    return kind_of(job).ended(job)


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


class Found(NamedTuple):
    """One current trouble of a job: when it began, who has it, why; `own`: it is about
    one of the job's own objects (the job, a TrainJob's JobSet or child Job), not a pod."""

    when: str
    who: str
    why: str
    own: bool = False


def troubles(job: dict, pods: list[dict], events: list[dict]) -> list[Found]:
    """Every current trouble of the job, earliest first: its pods' (an OOMKilled that is
    over is not one), the Warning Events of the job's own objects (mpi-operator's "worker
    pod created failed: ... exceeded quota", a TrainJob's child Job's FailedCreate), and
    what the Events of its pods that are gone say took them (events outlive pods:
    cleanPodPolicy removed the workers)."""
    adapter = kind_of(job)
    found = []
    for p in pods:
        t = pod_trouble(p, events)
        if t and not t.over:
            found.append(Found(t.when, replica_name(p), t.text))
    for e in events:
        who = adapter.job_level_event(job, e)
        if who and e.get("type") == "Warning":
            found.append(Found(first_time(e), who, f"{e.get('reason')}: {e.get('message', '')}".rstrip(": "), own=True))
    names = {p["metadata"]["name"] for p in pods}
    gone: dict[str, list[dict]] = {}
    for e in events:
        obj = e.get("involvedObject") or {}
        if obj.get("kind") == "Pod" and obj.get("name") not in names and e.get("reason") in DISRUPTION_EVENTS:
            gone.setdefault(obj["name"], []).append(e)
    for name, evs in gone.items():
        t = gone_pod_trouble(evs)
        if t:
            found.append(Found(t.when, f"{gone_replica(job, name)} (gone)", t.text))
    # Unknown times go last: a failure with a time is known to be first. In the same second
    # a pod's trouble comes before the job's Event (mpi-operator's "1/2 workers are
    # evicted" follows the eviction).
    return sorted(found, key=lambda f: (not f.when, f.when, f.own))


def gone_replica(job: dict, pod: str) -> str:
    """worker-3 of <job>-worker-3, launcher of <job>-launcher-x7k2p, node-1 of
    <job>-node-0-1-x7k2p: a pod that no longer exists has no labels to read. A name the
    kind does not make is shown whole."""
    return kind_of(job).gone_replica(job["metadata"]["name"], pod) or pod


def _order(info: PodInfo) -> tuple:
    role, _, index = info.replica.partition("-")
    return (0 if role in ("launcher", "master") else 1, int(index) if index.isdigit() else 0, info.name)


def job_status(job: dict, pods: list[dict] | None, events: list[dict]) -> JobStatus:
    """The JobStatus of a job object, its pods (None: not looked at) and Warning Events."""
    md, st = job["metadata"], job.get("status") or {}
    ann, adapter = md.get("annotations") or {}, kind_of(job)
    state, message = adapter.state(job)
    started, finished = adapter.times(job)
    infos = sorted((pod_info(p, events) for p in pods or []), key=_order)
    found = troubles(job, pods or [], events) if pods is not None else []
    if state not in FINAL_STATES:
        # The job's own Warning Events last an hour: one older than the job's last change
        # of state (the quota was raised, the job runs now) is over.
        changed = max((c.get("lastTransitionTime") or "" for c in st.get("conditions") or [] if c.get("status") == "True"), default="")
        found = [f for f in found if not f.own or f.when >= changed]
    out = JobStatus(
        name=md["name"], namespace=md.get("namespace"), kind=job["kind"], state=state, message=message,
        workers=int(ann.get(names.WORKERS, 0) or 0), gpus_per_worker=int(ann.get(names.GPUS_PER_WORKER, 0) or 0),
        image=adapter.image(job), created=md.get("creationTimestamp"), started=started, finished=finished,
        replicas=adapter.replica_counts(job), pods=infos,
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
        leaders = [p for p in pods or [] if replica_name(p) in adapter.leaders(job, lambda: {i.replica for i in infos})]
        out.exit_code = next((c for c in map(exit_code, leaders) if c is not None), None)
    running_workers = [i for i in infos if i.replica.startswith("worker") and i.phase == "Running"]
    if state == "Succeeded" and running_workers:
        policy = (job.get("spec") or {}).get("runPolicy", {}).get("cleanPodPolicy", "None")
        out.warnings.append(f"job Succeeded while {len(running_workers)} worker pod(s) are still Running (cleanPodPolicy {policy}): they hold their GPUs until `kjob delete {md['name']}`")
    return out
