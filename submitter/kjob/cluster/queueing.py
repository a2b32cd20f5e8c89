"""Kueue's word on a job that names a LocalQueue (the spec's `queue:`, the job's label
kueue.x-k8s.io/queue-name): is it queued, why, and where; did Kueue preempt it, and will
it requeue it. Read from the job's Workload, as Kueue v0.19 writes it.

Kueue (sigs.k8s.io/kueue v0.19.2) makes one Workload (kueue.x-k8s.io/v1beta2) per job,
controlled by the job (an owner reference with controller: true) and labelled with the
job's UID (kueue.x-k8s.io/job-uid, pkg/controller/jobframework/reconciler.go). Its
status.conditions (apis/kueue/v1beta2/workload_types.go):
- QuotaReserved: False while the job waits, the reason (Pending, or with the
  UnadmittedWorkloadsObservability gate WaitingForQuota, ExceedsMaxQuota, ...) and the
  scheduler's own words ("couldn't assign flavors to pod set worker: insufficient quota
  for nvidia.com/gpu in flavor ..."); Inadmissible when its LocalQueue or ClusterQueue is
  missing or stopped;
- Admitted: quota reserved and every admission check ready (the job is unsuspended);
- Evicted: reason Preempted, PodsReadyTimeout, AdmissionCheck, ClusterQueueStopped,
  LocalQueueStopped, Deactivated, ...; a preemption also sets Preempted, reason
  InClusterQueue / InCohort*, message "Preempted to accommodate a workload (UID: ...,
  JobUID: ...) due to ..." (pkg/scheduler/preemption/preemption.go preemptionMessage);
- Requeued: True once an evicted Workload is back in its queue, False while it waits for
  status.requeueState.requeueAt (a backoff);
- Finished: the job ended.
status.admission.clusterQueue names the ClusterQueue of an admitted Workload; a queued
one's is the LocalQueue's spec.clusterQueue. Kueue's visibility API (an aggregated API,
visibility.kueue.x-k8s.io/v1beta2, localqueues/NAME/pendingworkloads) gives a pending
Workload's positions, from 0; a cluster that does not serve it (or a user who may not read
it) gets no position.

Nothing here is asked of a job that names no queue. Only KjobError subclasses leave.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kjob.backend import FINAL_STATES, JobStatus
from kjob.cluster import requests
from kjob.errors import ClusterUnavailable, Forbidden, KjobError, NotFound
from kjob.names import KUEUE_QUEUE_LABEL

WORKLOAD_API = "kueue.x-k8s.io/v1beta2"
VISIBILITY_API = "visibility.kueue.x-k8s.io/v1beta2"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
PREEMPTOR = re.compile(r"Preempted to accommodate a workload \(UID: (?P<wl>[^,]*), JobUID: (?P<job>[^)]*)\) due to (?P<why>[^;]*)")


@dataclass(frozen=True)
class Queueing:
    """What Kueue says of a job that is not running because of it. `state` is the job
    state kjob shows (Pending: Kueue will run it without anyone's help); `message` says
    why, in Kueue's own words."""

    state: str | None  # None: Kueue's word is unknown (see `warning`)
    message: str | None
    preempted: bool = False
    warning: str | None = None  # why kjob could not read Kueue's word


def queue_of(job: dict) -> str | None:
    return ((job.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)


def _conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def _true(conds: dict[str, dict], kind: str) -> dict | None:
    c = conds.get(kind)
    return c if c is not None and c.get("status") == "True" else None


def workload_of(job: dict, workloads: list[dict]) -> dict | None:
    """The job's Workload among `workloads`: the one the job controls (owner reference by
    UID); the newest when a requeue or a change of the job left more than one."""
    uid = job["metadata"].get("uid")
    mine = [w for w in workloads if any(ref.get("uid") == uid and ref.get("controller") for ref in w["metadata"].get("ownerReferences") or [])]
    return max(mine, key=lambda w: w["metadata"].get("creationTimestamp") or "", default=None)


def _preemptor(message: str, workloads: list[dict]) -> str:
    """The job (or Workload) whose admission preempted this one, read from Kueue's
    Preempted message; `workloads` are those kjob could see (one namespace)."""
    m = PREEMPTOR.search(message or "")
    if not m:
        return "a workload of higher priority"
    for w in workloads:
        if w["metadata"].get("uid") == m["wl"] or (w["metadata"].get("labels") or {}).get(JOB_UID_LABEL) == m["job"]:
            owner = next((r for r in w["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
            where = w["metadata"].get("namespace")
            if owner:
                return f"{owner['kind']} {where}/{owner['name']} ({m['why']})"
            return f"Workload {where}/{w['metadata']['name']} ({m['why']})"
    return f"Workload UID {m['wl']} of job UID {m['job']} ({m['why']})"


def explain(job: dict, workload: dict | None, *, cluster_queue: str | None = None, position: dict | None = None,
            workloads: list[dict] | None = None) -> Queueing | None:
    """Kueue's reason the job does not run, or None when Kueue holds nothing against it
    (admitted, finished, or no Workload yet on a job that is not suspended). Pure.

    cluster_queue: the LocalQueue's ClusterQueue when the Workload is not admitted (None:
    unknown). position: the job's item of the visibility API's pendingworkloads, if any.
    workloads: the namespace's Workloads, to name a preemptor."""
    queue = queue_of(job)
    if queue is None:
        return None
    if workload is None:
        suspended = ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend")
        if not suspended:
            return None
        return Queueing("Pending", f"queued in LocalQueue {queue}: Kueue has not made its Workload yet")
    conds = _conditions(workload)
    if _true(conds, "Finished"):
        return None
    evicted, preempted = _true(conds, "Evicted"), _true(conds, "Preempted")
    admitted = _true(conds, "Admitted")
    if admitted and not evicted:
        return None
    st = workload.get("status") or {}
    cq = ((st.get("admission") or {}).get("clusterQueue")) or cluster_queue
    where = f"LocalQueue {queue}" + (f" (ClusterQueue {cq})" if cq else "")
    lines = []
    was_preempted = bool(preempted or (evicted and evicted.get("reason") == "Preempted"))
    if was_preempted:
        by = _preemptor((preempted or evicted).get("message", ""), workloads or [])
        at = (preempted or evicted).get("lastTransitionTime")
        lines.append(f"preempted by Kueue{f' at {at}' if at else ''} for {by}; Kueue requeues it, and it runs again when {where} admits it")
    elif evicted:
        lines.append(f"evicted by Kueue ({evicted.get('reason')}): {evicted.get('message', '')}".rstrip(": "))
    if evicted and admitted:
        # Kueue has decided; the job is being stopped (its pods end, then it is suspended).
        return Queueing("Pending", lines[0] + " (stopping its pods now)", preempted=was_preempted)
    requeued = conds.get("Requeued")
    again = (st.get("requeueState") or {}).get("requeueAt")
    if requeued is not None and requeued.get("status") == "False" and again:
        count = (st.get("requeueState") or {}).get("count")
        lines.append(f"Kueue queues it again at {again}" + (f" (evicted {count} time(s) so far)" if count else ""))
    else:
        reserved, checks = conds.get("QuotaReserved"), conds.get("Admitted")
        if reserved is not None and reserved.get("status") == "False" and reserved.get("message"):
            why = f": {reserved['message']}"
        elif reserved is not None and reserved.get("status") == "True" and checks is not None and checks.get("message"):
            why = f": quota reserved, not admitted yet ({checks.get('reason')}: {checks['message']})"  # admission checks pending
        else:
            why = ": waiting for Kueue to consider it"
        spot = ""
        if position is not None:
            spot = f"; position {position.get('positionInLocalQueue', 0) + 1} in {queue}"
            if "positionInClusterQueue" in position:
                spot += f", {position['positionInClusterQueue'] + 1} in ClusterQueue {cq or '?'}"
        lines.append(f"queued in {where}{why}{spot}")
    return Queueing("Pending", "; ".join(lines), preempted=was_preempted)


# -- reading it from the cluster ------------------------------------------------------------------
def queueing(kube, job: dict, unserved: set[str] | None = None) -> Queueing | None:
    """explain() of the job as the cluster has it now: one Workload LIST (by the job's
    UID), and while the job is queued its LocalQueue and its position. Nothing is asked of
    a job that names no queue. A cluster without Kueue's API gets None (the operator's own
    state stands); a user who may not read Workloads, a Queueing that only warns so.
    `unserved`: kept by a caller that asks again (logs -f, once a poll): the optional
    APIs that failed once (the visibility API, perhaps unavailable: 503s are retried) are
    not asked again."""
    queue = queue_of(job)
    if queue is None:
        return None
    md = job["metadata"]
    try:
        found = kube.send(requests.list_workloads(md["namespace"], f"{JOB_UID_LABEL}={md.get('uid')}")).get("items", [])
    except Forbidden as e:
        return Queueing(None, None, warning=f"{e.message.split(' (context')[0]}: whether Kueue holds the job back (LocalQueue {queue}) is not shown")
    except (NotFound, ClusterUnavailable):
        return None
    workload = workload_of(job, found)
    first = explain(job, workload)
    if first is None or workload is None:
        return first
    cq = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue") or _cluster_queue(kube, md["namespace"], queue)
    position = _position(kube, md["namespace"], queue, workload["metadata"]["name"], set() if unserved is None else unserved)
    preempting = []
    if first.preempted:
        try:
            preempting = kube.send(requests.list_workloads(md["namespace"])).get("items", [])
        except KjobError:
            preempting = []
    return explain(job, workload, cluster_queue=cq, position=position, workloads=preempting)


def held_states(kube, jobs: list[dict], statuses: list[JobStatus], namespace: str | None) -> list[JobStatus]:
    """`kjob list`: the statuses of `jobs` (the same order) with Kueue's word on those that
    name a queue, from one Workload LIST (by their UIDs, in `namespace` or all: None) and
    none when no job names a queue. Kueue's reasons are for `status`; a list without
    them (Kueue's API not served, Workloads not readable) keeps the operators' states."""
    queued = [j for j in jobs if queue_of(j) is not None]
    if not queued:
        return statuses
    uids = ",".join(sorted(j["metadata"]["uid"] for j in queued))
    try:
        found = kube.send(requests.list_workloads(namespace, f"{JOB_UID_LABEL} in ({uids})")).get("items", [])
    except KjobError:
        return statuses
    return [with_queueing(st, explain(job, workload_of(job, found))) for job, st in zip(jobs, statuses)]


def _cluster_queue(kube, namespace: str, queue: str) -> str | None:
    try:
        return (kube.send(requests.get_local_queue(namespace, queue)).get("spec") or {}).get("clusterQueue")
    except KjobError:
        return None


def _position(kube, namespace: str, queue: str, workload: str, unserved: set[str]) -> dict | None:
    if "visibility" in unserved:
        return None
    try:
        items = kube.send(requests.pending_workloads(namespace, queue)).get("items", [])
    except KjobError:
        unserved.add("visibility")
        return None  # not served (no visibility API), not allowed, or not ready: no position
    return next((i for i in items if (i.get("metadata") or {}).get("name") == workload), None)


def check_local_queue(kube, job: dict, namespace: str) -> str | None:
    """Preflight of a job that names a LocalQueue: raises NotFound (exit 5) when the
    namespace has no LocalQueue of that name (Kueue would hold the job for ever); returns
    a warning when the user may not read LocalQueues (Kueue then decides) or the cluster
    has no Kueue at all (nothing holds the job: it runs as any other)."""
    queue = queue_of(job)
    if queue is None:
        return None
    try:
        kube.send(requests.get_local_queue(namespace, queue))
    except Forbidden as e:
        return f"{e.message.split(' (context')[0]}: cannot check that LocalQueue {queue} exists; Kueue leaves the job queued if it does not"
    except NotFound:
        served = True
        try:
            served = "localqueues" in [r.get("name") for r in kube.send(requests.api_resources(WORKLOAD_API)).get("resources", [])]
        except NotFound:
            served = False
        except KjobError:
            pass
        if not served:
            # No Kueue: nothing suspends the job, which runs at once, queue or not.
            return (f"the spec names LocalQueue {queue}, but {kube.where()} does not serve Kueue's API ({WORKLOAD_API} localqueues): "
                    "the job runs without queueing")
        raise NotFound(f'LocalQueue "{queue}" not found in namespace "{namespace}" on {kube.where()}: Kueue would hold the job queued for ever',
                       hint=f"kubectl get localqueues -n {namespace} lists the queues; ask a cluster admin for one, or fix `queue:`") from None
    return None


def with_queueing(status: JobStatus, word: Queueing | None) -> JobStatus:
    """A JobStatus with Kueue's word on it: a job Kueue holds back is Pending for Kueue's
    reason, whatever the operator's condition (Suspended) or a leftover pod says; a word
    kjob may not read is a warning."""
    if word is None:
        return status
    if word.warning:
        status.warnings.append(word.warning)
    if word.state is not None and status.state not in FINAL_STATES:
        status.state, status.message = word.state, word.message
    return status
