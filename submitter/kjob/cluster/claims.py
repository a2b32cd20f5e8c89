"""Where one more pod can mount a PersistentVolumeClaim now (fetch-ckpt's helper pod).

A ReadWriteMany/ReadOnlyMany claim mounts anywhere. A ReadWriteOnce claim attaches to
one node at a time: a pod elsewhere waits in Multi-Attach / FailedAttachVolume for as
long as a pod on that node holds it, so the new pod must go to that node. A
ReadWriteOncePod claim admits one pod in the whole cluster: while another holds it, no
new pod can start anywhere, and waiting for one is pointless. After its pods end, a
ReadWriteOnce volume can stay attached to their node for a while (its VolumeAttachment
says so until the detach finishes): a pod elsewhere waits on that too. The PV's own
nodeAffinity (local volumes) needs nothing here: the scheduler's VolumeBinding plugin
honours it.

`place` is pure (claim, pods and attachments as read from the API); `read_holders` does
the reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from kjob.cluster import requests
from kjob.errors import Conflict, Forbidden, NotFound

RWOP = "ReadWriteOncePod"
RWO = "ReadWriteOnce"
# Modes under which a volume may be mounted on several nodes at once.
SHARED = ("ReadWriteMany", "ReadOnlyMany")
# Pods in these phases hold no volume any more.
ENDED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Placement:
    """The node a new pod must run on to mount the claim (None: wherever the scheduler
    likes), and why, in words for the user."""

    node: str | None = None
    why: str = ""


def access_modes(claim_obj: dict | None) -> list[str]:
    """The claim's modes: the bound volume's (status) when known, else the requested."""
    if not claim_obj:
        return []
    return list((claim_obj.get("status") or {}).get("accessModes") or (claim_obj.get("spec") or {}).get("accessModes") or [])


def holders(pods: list[dict], claim: str) -> list[dict]:
    """The pods that use `claim` and are on a node and not ended (sorted by name)."""
    def uses(pod: dict) -> bool:
        return any((v.get("persistentVolumeClaim") or {}).get("claimName") == claim for v in (pod.get("spec") or {}).get("volumes") or [])

    live = [p for p in pods if uses(p) and (p.get("spec") or {}).get("nodeName")
            and (p.get("status") or {}).get("phase") not in ENDED]
    return sorted(live, key=lambda p: p["metadata"]["name"])


def _who(pods: list[dict]) -> str:
    return ", ".join(f'{p["metadata"]["name"]} on {p["spec"]["nodeName"]}' for p in pods)


def attached_to(claim_obj: dict | None, attachments: list[dict]) -> tuple[str, str] | None:
    """(node, VolumeAttachment name) where the claim's bound volume is attached, if any."""
    volume = ((claim_obj or {}).get("spec") or {}).get("volumeName")
    found = sorted((a["spec"]["nodeName"], a["metadata"]["name"]) for a in attachments
                   if volume and ((a.get("spec") or {}).get("source") or {}).get("persistentVolumeName") == volume
                   and (a.get("status") or {}).get("attached") and a["spec"].get("nodeName"))
    return found[0] if found else None


def place(claim: str, claim_obj: dict | None, pods: list[dict], attachments: list[dict] = ()) -> Placement:
    """Where a new pod can mount `claim`, given its object (None: unknown), the pods of
    its namespace and the cluster's VolumeAttachments (empty when they cannot be read).
    Raises Conflict (exit 6) when no pod can mount it now: a ReadWriteOncePod claim held
    by another pod, or a ReadWriteOnce claim wanted on several nodes and mounted on none
    (every one of them waits on Multi-Attach)."""
    modes = access_modes(claim_obj)
    held = holders(pods, claim)
    if not modes or any(m in SHARED for m in modes):
        return Placement()
    if not held:
        # No pod holds it, but its volume may not be detached yet.
        where = attached_to(claim_obj, list(attachments))
        if where is None:
            return Placement()
        node, attachment = where
        return Placement(node, f'claim "{claim}" is {"ReadWriteOncePod" if RWOP in modes else "ReadWriteOnce"} and its volume '
                               f'is still attached to node {node} (VolumeAttachment {attachment})')
    if RWOP in modes:
        raise Conflict(f'claim "{claim}" is ReadWriteOncePod and pod {_who(held[:1])} is using it: '
                       "no other pod can mount it while that pod exists",
                       hint="fetch when that pod has ended (kjob status shows the job's pods), or delete it")
    running = [p for p in held if (p.get("status") or {}).get("phase") == "Running"]
    nodes = sorted({p["spec"]["nodeName"] for p in running or held})
    if not running and len(nodes) > 1:
        raise Conflict(f'claim "{claim}" is ReadWriteOnce and pods on {len(nodes)} nodes want it ({_who(held)}), '
                       "none of them running: it is attached to at most one of those nodes and a new pod would wait on Multi-Attach too",
                       hint="kjob status shows why the job's pods wait; fetch once they run or have ended")
    # A running holder proves the volume is mounted on its node (a ReadWriteOnce NFS
    # volume may be on several: any of them will do).
    pod = next(p for p in running or held if p["spec"]["nodeName"] == nodes[0])
    return Placement(nodes[0], f'claim "{claim}" is ReadWriteOnce and pod {pod["metadata"]["name"]} uses it on node {nodes[0]}')


def read_holders(kube, namespace: str, claim: str) -> tuple[dict | None, list[dict], list[dict]]:
    """The claim object (None when it cannot be read: the scheduler then says why the pod
    waits), every pod of the namespace and, when none of them holds the claim, the
    cluster's VolumeAttachments (empty when this user may not list them, as many may not:
    the helper then may wait for the detach). Raises what Kube.send raises for the pod list."""
    try:
        claim_obj = kube.send(requests.get_claim(namespace, claim))
    except (NotFound, Forbidden):
        claim_obj = None
    if not access_modes(claim_obj) or any(m in SHARED for m in access_modes(claim_obj)):
        return claim_obj, [], []  # mountable anywhere (or unknown): no need to list pods
    pods = kube.send(requests.list_pods(namespace)).get("items") or []
    if holders(pods, claim) or not (claim_obj.get("spec") or {}).get("volumeName"):
        return claim_obj, pods, []
    try:
        attachments = kube.send(requests.list_volume_attachments()).get("items") or []
    except (NotFound, Forbidden):
        attachments = []
    return claim_obj, pods, attachments
