"""Why a pod was taken away from a job that did nothing wrong: preempted by the scheduler
for a higher-priority pod, evicted (Eviction API, the kubelet under node pressure, the
taint manager), or left on a node that stopped reporting. Read from the pod's
DisruptionTarget condition, its status and the Events Kubernetes records about it, in
the words of the components that wrote them (k8s.io/kubernetes v1.34):

- scheduler (framework/preemption): DisruptionTarget reason PreemptionByScheduler; a
  Normal Event "Preempted" whose `related` object is the preemptor ("Preempted by pod
  <uid> on node <node>");
- Eviction API (registry/core/pod/storage/eviction.go): EvictionByEvictionAPI,
  "Eviction API: evicting";
- kubelet (eviction_manager.go): pod status reason Evicted, "The node was low on
  resource: memory. ...", DisruptionTarget TerminationByKubelet;
- taint eviction controller: DeletionByTaintManager, "Taint manager: deleting due to
  NoExecute taint";
- node lifecycle controller (util/node.MarkPodsNotReady): the pod's Ready goes False and a
  Warning Event "NodeNotReady", "Node is not ready".

Pure functions over API dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

# Events that tell of a disruption even after the pod is gone (events outlive pods).
DISRUPTION_EVENTS = ("Preempted", "Evicted", "NodeNotReady", "TaintManagerEviction")


@dataclass(frozen=True)
class Trouble:
    """Why a pod waits or failed, in one line, and since when (RFC 3339; "" unknown).
    `over`: history (an OOMKilled whose container runs again): shown in the pod's row,
    never the job's headline."""

    text: str
    when: str = ""
    over: bool = False


def event_time(e: dict) -> str:
    """When an Event last happened: core/v1's lastTimestamp, or eventTime for the
    events.k8s.io/v1 recorders (the scheduler's)."""
    return e.get("lastTimestamp") or e.get("eventTime") or (e.get("series") or {}).get("lastObservedTime") or ""


def first_time(e: dict) -> str:
    return e.get("firstTimestamp") or e.get("eventTime") or event_time(e)


def preempted_text(event: dict | None, node: str | None) -> str:
    """"preempted by pod NS/NAME on node N" from the scheduler's Event (its related object
    is the preemptor), else from what the pod itself says."""
    related = (event or {}).get("related") or {}
    by = f"pod {related['namespace']}/{related['name']}" if related.get("name") and related.get("namespace") else \
        f"pod {related['name']}" if related.get("name") else "a higher-priority pod"
    if not related.get("name") and event:
        by = (event.get("message") or "").removeprefix("Preempted by ").split(" on node ")[0] or by
    where = ((event or {}).get("message") or "").rpartition(" on node ")[2] if event else node
    return f"preempted by {by}" + (f" on node {where}" if where else "") + " (the scheduler made room for a higher priority)"


def node_lost_text(node: str | None, event: dict) -> str:
    return f"its node {node or '?'} NotReady since {first_time(event) or '?'} (the node stopped reporting: {event.get('message') or 'Node is not ready'})"


def disruption(pod: dict, latest: dict[str, dict]) -> Trouble | None:
    """Why `pod` was (or is being) taken away, or None. `latest`: reason -> newest Event
    about a pod of this name."""
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    node = spec.get("nodeName")
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
    lost = latest.get("NodeNotReady")
    uid = pod["metadata"].get("uid")
    if lost and uid and (lost.get("involvedObject") or {}).get("uid") not in (None, uid):
        lost = None  # told of an earlier pod of this name
    if cond:
        reason, when, message = cond.get("reason"), cond.get("lastTransitionTime") or "", cond.get("message") or ""
        if reason == "PreemptionByScheduler":
            return Trouble(preempted_text(latest.get("Preempted"), node), when)
        if reason == "DeletionByTaintManager":
            why = f"; {node_lost_text(node, lost)}" if lost else ""
            return Trouble(f"deleted by the taint manager: {message}{why}", when)
        if reason in ("EvictionByEvictionAPI", "TerminationByKubelet"):
            return Trouble(f"Evicted: {status.get('message') or message}".rstrip(": "), when)
        return Trouble(f"{reason}: {message}".rstrip(": "), when)
    if status.get("reason") == "Evicted":
        return Trouble(f"Evicted: {status.get('message', '')}".rstrip(": "), event_time(latest.get("Evicted") or {}))
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    if lost and ready.get("status") != "True" and status.get("phase") == "Running":
        gone = f"; being deleted since {pod['metadata']['deletionTimestamp']}" if pod["metadata"].get("deletionTimestamp") else ""
        return Trouble(node_lost_text(node, lost) + gone, first_time(lost))
    return None


def gone_pod_trouble(events: list[dict]) -> Trouble | None:
    """What the Events of a pod that no longer exists say took it away (the earliest), or None."""
    found = []
    for e in sorted(events, key=first_time):
        reason, message = e.get("reason"), e.get("message") or ""
        if reason == "Preempted":
            found.append(Trouble(preempted_text(e, None), first_time(e)))
        elif reason == "Evicted":
            found.append(Trouble(f"Evicted: {message}".rstrip(": "), first_time(e)))
        elif reason == "NodeNotReady":
            found.append(Trouble(node_lost_text((e.get("source") or {}).get("host"), e), first_time(e)))
        elif reason == "TaintManagerEviction":
            found.append(Trouble(f"deleted by the taint manager: {message}".rstrip(": "), first_time(e)))
    return found[0] if found else None
