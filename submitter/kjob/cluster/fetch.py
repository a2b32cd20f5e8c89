"""`kjob fetch-ckpt` on a cluster: stream checkpoints out of the job's PVC, verified.

Where: the job's annotations name the claim (`kjob.dev/checkpoint-claim`) and the
trainer's output path (`kjob.dev/output-path`); checkpoints are in `<output>/checkpoints`.
If a Running pod of the job mounts the claim there, kjob execs in it (no new pod, no image
pull); otherwise it starts a short-lived helper pod that mounts the claim read-only
(deleted when done, on failure and on Ctrl-C; owned by the job so deleting the job
collects it; `activeDeadlineSeconds` ends it even if kjob is killed). The helper goes
where the claim can be mounted (claims.place: the node of a ReadWriteOnce claim's pods;
a ReadWriteOncePod claim held by another pod is an error at once), preferably onto a
node that ran the job, whose image is then already there.

How: `cat index.json`, choose entries (transfer.index.select), skip files already in
--dest and verified, then `tar cf - <files>` over the exec websocket, read frame by frame
into the streaming extractor (transfer.tarsafe.extract_verified): memory does not grow with the size
of the checkpoints, and nothing reaches a final path before its sha256 matches.
"""

from __future__ import annotations

import posixpath
import secrets
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from kjob import names, settings
from kjob.backend import FetchOptions
from kjob.cluster import requests
from kjob.cluster.claims import Placement, place, read_holders
from kjob.cluster.exec_stream import open_exec
from kjob.cluster.kinds import kind_of
from kjob.cluster.pods import pod_reason, replica_name
from kjob.errors import ClusterUnavailable, InvalidInput, KjobError, NotFound, VerificationFailed
from kjob.names import CHECKPOINT_CLAIM, OUTPUT_PATH
from kjob.transfer.index import INDEX_NAME, MAX_INDEX_BYTES, expected, parse_index, select, write_local_index
from kjob.transfer.progress import Progress, human_bytes
from kjob.transfer.tarsafe import BlockReader, TruncatedStream, extract_verified, plan, remove_stale_temps

# The helper runs `sleep`, then `cat` and `tar` through exec (the sha256 check is done
# here, not in the pod). Its default image is the job's own: it has all three, it is
# pullable wherever the job ran (registry, mirror, imagePullSecrets, which are copied),
# and the helper prefers the job's nodes, where it is already pulled. A small image
# (busybox) would need Docker Hub, which many clusters cannot reach. KJOB_FETCH_IMAGE
# overrides it; a pull in progress is said, never waited on silently.
FALLBACK_IMAGE = "busybox:1.36"
# A helper that outlives a SIGKILLed kjob ends itself after this long.
HELPER_DEADLINE_S = 3600
HELPER_POLL_S = 0.25


@dataclass
class Target:
    """Where the checkpoints are: the claim, the folder inside a pod, and the pod."""

    namespace: str
    job: str
    claim: str
    ckpt_dir: str  # <output-path>/checkpoints, as seen in the pod
    mount_path: str  # where the claim is mounted (the helper mounts it at the same place)
    pod: str | None = None
    container: str | None = None


def locate(job_obj: dict) -> Target:
    """Read the claim and output path from the job's annotations.

    Raises NotFound when the job has no checkpoint claim, InvalidInput when the output
    path annotation is not an absolute path.
    """
    meta = job_obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    name, ns = meta.get("name", "?"), meta.get("namespace") or "default"
    claim, output = ann.get(CHECKPOINT_CLAIM), ann.get(OUTPUT_PATH)
    if not claim or not output:
        raise NotFound(f"job {name} has no checkpoint volume (annotations {CHECKPOINT_CLAIM} and {OUTPUT_PATH})",
                       hint="jobs submitted by kjob carry them; was it created by another tool?")
    if not output.startswith("/") or ".." in output.split("/"):
        raise InvalidInput(f"job {name}: {OUTPUT_PATH} {output!r} is not an absolute path")
    output = posixpath.normpath(output)
    mount = _template_mount(job_obj, claim, output) or posixpath.dirname(output)
    return Target(ns, name, claim, posixpath.join(output, "checkpoints"), mount)


def _pod_templates(job_obj: dict) -> list[dict]:
    """The pod specs the job object gives its pods (a TrainJob: its runtimePatches), the
    replica that writes the checkpoints first."""
    return kind_of(job_obj).pod_templates(job_obj)


def _claim_mount(pod_spec: dict, claim: str, output: str) -> tuple[str, str, dict] | None:
    """(container name, mountPath, container) of a mount of `claim` that holds `output`."""
    vols = {v.get("name") for v in pod_spec.get("volumes") or []
            if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim}
    for c in pod_spec.get("containers") or []:
        for m in c.get("volumeMounts") or []:
            mp = (m.get("mountPath") or "").rstrip("/") or "/"
            if m.get("name") in vols and not m.get("subPath") and (output == mp or output.startswith(mp.rstrip("/") + "/")):
                return c.get("name"), mp, c
    return None


def _template_mount(job_obj: dict, claim: str, output: str) -> str | None:
    for tspec in _pod_templates(job_obj):
        hit = _claim_mount(tspec, claim, output)
        if hit:
            return hit[1]
    return None


def find_running_pod(pods: list[dict], target: Target, first: str | None = None) -> tuple[str, str] | None:
    """A Running pod of the job whose running container mounts the claim at the output
    path; the pod of replica `first` (the one that writes the checkpoints: an Open MPI
    job's launcher, a torch job's master-0 or node-0) when it is one."""
    output = posixpath.dirname(target.ckpt_dir)
    for pod in sorted(pods, key=lambda p: (replica_name(p) != first, p["metadata"]["name"])):
        status = pod.get("status") or {}
        if status.get("phase") != "Running":
            continue
        hit = _claim_mount(pod.get("spec") or {}, target.claim, output)
        running = {cs.get("name") for cs in status.get("containerStatuses") or [] if (cs.get("state") or {}).get("running")}
        if hit and hit[0] in running:
            return pod["metadata"]["name"], hit[0]
    return None


def _affinity(placement: Placement, job_nodes: list[str]) -> dict:
    """Required: the node the claim is usable on, if it is bound to one. Preferred: the
    nodes the job's pods ran on (the image is there). matchFields on the node's name, as
    DaemonSets pin their pods: it needs no hostname label."""
    aff: dict = {}
    if placement.node:
        aff["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [placement.node]}]}]}
    elif job_nodes:
        aff["preferredDuringSchedulingIgnoredDuringExecution"] = [{"weight": 100, "preference": {
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": sorted(set(job_nodes))}]}}]
    return {"nodeAffinity": aff} if aff else {}


def helper_pod(job_obj: dict, target: Target, name: str, placement: Placement = Placement(),
               job_nodes: Iterable[str] = ()) -> dict:
    """The helper pod manifest: the claim read-only, non-root, small limits, owned by the
    job, on `placement`'s node (else preferably one of `job_nodes`)."""
    meta = job_obj["metadata"]
    tmpl = next(iter(_pod_templates(job_obj)), {})
    hit = None
    for tspec in _pod_templates(job_obj):
        hit = _claim_mount(tspec, target.claim, posixpath.dirname(target.ckpt_dir))
        if hit:
            tmpl = tspec
            break
    container = hit[2] if hit else next(iter(tmpl.get("containers") or []), {})
    image = settings.current().fetch_image or container.get("image") or FALLBACK_IMAGE
    # Read the files as the user that wrote them (the trainer's), never as root.
    pod_sc = tmpl.get("securityContext") or {}
    c_sc = container.get("securityContext") or {}
    uid = c_sc.get("runAsUser", pod_sc.get("runAsUser", 1000)) or 1000
    gid = c_sc.get("runAsGroup", pod_sc.get("runAsGroup", uid)) or uid
    labels = {
        names.LABEL_NAME: "kjob",
        names.LABEL_INSTANCE: target.job,
        names.LABEL_MANAGED_BY: "kjob",
        names.LABEL_COMPONENT: "fetch-ckpt",
        names.HELPER_LABEL: target.job,
    }
    owner = {"apiVersion": job_obj.get("apiVersion"), "kind": job_obj.get("kind"), "name": meta["name"],
             "uid": meta.get("uid"), "controller": False, "blockOwnerDeletion": False}
    spec = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": HELPER_DEADLINE_S,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "fetch",
            "image": image,
            "command": ["sleep", str(HELPER_DEADLINE_S)],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                          "limits": {"cpu": "1", "memory": "256Mi", "ephemeral-storage": "64Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "checkpoints", "mountPath": target.mount_path, "readOnly": True}],
        }],
        "volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": target.claim, "readOnly": True}}],
    }
    # Pull like the job and tolerate its nodes' taints; no nodeSelector: the helper needs
    # no GPU, and the volume's own topology (a PV's nodeAffinity) tells the scheduler
    # where it can run; a ReadWriteOnce claim's node is made required here.
    for key in ("imagePullSecrets", "tolerations"):
        if tmpl.get(key):
            spec[key] = tmpl[key]
    affinity = _affinity(placement, list(job_nodes))
    if affinity:
        spec["affinity"] = affinity
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": target.namespace, "labels": labels,
                         "ownerReferences": [owner] if owner["uid"] else []},
            "spec": spec}


@contextmanager
def exec_pod(kube, job_obj: dict, target: Target, say: Callable[[str], None]):
    """Yield `target` with .pod/.container set: a Running pod of the job, or a helper pod
    that is deleted on the way out whatever happens (success, error, Ctrl-C)."""
    job_pods = kube.send(requests.list_job_pods(job_obj)).get("items") or []
    writer = kind_of(job_obj).default_replica(job_obj, lambda: {replica_name(p) for p in job_pods})
    found = find_running_pod(job_pods, target, writer)
    if found:
        target.pod, target.container = found
        yield target
        return
    # Before any pod is made: a claim no new pod can mount now is an error at once.
    placement = place(target.claim, *read_holders(kube, target.namespace, target.claim))
    if placement.node:
        say(f"helper pod goes to node {placement.node}: {placement.why}")
    name = f"{target.job[:40]}-fetch-{secrets.token_hex(3)}"
    job_nodes = [p["spec"]["nodeName"] for p in job_pods if (p.get("spec") or {}).get("nodeName")]
    manifest = helper_pod(job_obj, target, name, placement, job_nodes)
    try:
        kube.send(requests.create_pod(target.namespace, manifest))
    except KeyboardInterrupt:  # the server may have created it before the answer came back
        _delete_quietly(kube, target.namespace, name, lambda line: None)
        raise
    try:
        _wait_running(kube, target.namespace, name, say)
        target.pod, target.container = name, "fetch"
        yield target
    finally:
        _delete_quietly(kube, target.namespace, name, say)


def _wait_running(kube, namespace: str, name: str, say: Callable[[str], None]) -> None:
    timeout = settings.current().fetch_pod_timeout
    deadline = time.monotonic() + timeout
    shown = None
    while True:
        pod = kube.send(requests.get_pod(namespace, name))
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running":
            return
        events = kube.send(requests.events_of(namespace, name)).get("items") or []
        reason = pod_reason(pod, events) or pulling(pod, events)
        if phase in ("Failed", "Succeeded"):
            raise ClusterUnavailable(f"helper pod {name} ended ({phase}) before the transfer: {reason or 'no reason given'}")
        if reason and reason != shown:
            say(f"waiting for helper pod {name}: {reason}")
            shown = reason
        if time.monotonic() > deadline:
            hint = "kjob status shows the job's pods; KJOB_FETCH_POD_TIMEOUT waits longer"
            if reason and reason.startswith("pulling"):
                hint = ("KJOB_FETCH_POD_TIMEOUT waits longer; KJOB_FETCH_IMAGE names a smaller image "
                        "with sleep, cat and tar (e.g. busybox:1.36)")
            raise ClusterUnavailable(f"helper pod {name} did not start within {timeout:g} s: {reason or 'Pending'}", hint=hint)
        time.sleep(HELPER_POLL_S)


def pulling(pod: dict, events: list[dict]) -> str | None:
    """`pulling image "X" on node N (since T)` while kubelet's newest pull Event of the
    pod is Pulling (it says Pulled, or BackOff/Failed, when that ends)."""
    name = pod["metadata"]["name"]
    pulls = [e for e in events if (e.get("involvedObject") or {}).get("name") == name
             and e.get("reason") in ("Pulling", "Pulled", "Failed", "BackOff")]
    pulls.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    if not pulls or pulls[-1].get("reason") != "Pulling":
        return None
    ev = pulls[-1]
    image = next((c.get("image") for c in (pod.get("spec") or {}).get("containers") or []), "?")
    node = (pod.get("spec") or {}).get("nodeName") or (ev.get("source") or {}).get("host")
    since = ev.get("lastTimestamp") or ev.get("eventTime")
    return f'pulling image "{image}"' + (f" on node {node}" if node else "") + (f" (since {since})" if since else "")


def _delete_quietly(kube, namespace: str, name: str, say: Callable[[str], None]) -> None:
    """Delete the helper; a failure here must not hide the error that got us here."""
    try:
        kube.send(requests.delete_pod_now(namespace, name))
    except NotFound:
        pass
    except KjobError as e:
        say(f"warning: could not delete helper pod {name} ({e.message}); it ends itself within {HELPER_DEADLINE_S} s")


def read_index(kube, target: Target) -> dict:
    """`cat` index.json in the pod. Raises NotFound when there is none yet."""
    path = posixpath.join(target.ckpt_dir, INDEX_NAME)
    stream = open_exec(kube, target.namespace, target.pod, target.container, ["cat", path], settings.current().fetch_idle_timeout)
    buf = bytearray()
    with stream:
        for chunk in stream:
            buf += chunk
            if len(buf) > MAX_INDEX_BYTES:
                raise VerificationFailed(f"{path} in pod {target.pod} is larger than {MAX_INDEX_BYTES} bytes; not a kjob index")
    code = stream.exit_code()
    if code != 0:
        err = stream.stderr_text()
        if "No such file" in err or code == 1:
            raise NotFound(f"no checkpoints yet: {path} does not exist on claim {target.claim}")
        raise ClusterUnavailable(f"cat {path} in pod {target.pod} failed (exit {code}): {err or 'no message'}")
    return parse_index(bytes(buf), f"{target.claim}:{path}")


def transfer(kube, target: Target, need: list, dest: Path, *, overwrite: bool, progress: Progress) -> None:
    """Stream `need` with tar and extract it verified into `dest`.

    Raises VerificationFailed (mismatch, hostile entry, files missing from a complete
    stream), ClusterUnavailable (the stream was cut or tar failed: files verified so far
    are kept, a rerun fetches the rest), Conflict.
    """
    argv = ["tar", "cf", "-", "-C", target.ckpt_dir] + [e.name for e in need]
    stream = open_exec(kube, target.namespace, target.pod, target.container, argv, settings.current().fetch_idle_timeout)
    blocks = BlockReader(stream)
    got: list = []
    try:
        with stream:
            try:
                extract_verified(stream, dest, need, overwrite=overwrite, on_bytes=progress.add,
                                 on_file=got.append, blocks=blocks)
            except TruncatedStream:
                pass  # a cut or a failed tar: told apart below from the status
            stream.drain()
    finally:
        progress.done()
    missing = [e.name for e in need if e not in got]
    if stream.cut:
        raise ClusterUnavailable(
            f"the transfer from pod {target.pod} was cut after {human_bytes(blocks.bytes_read)}: "
            f"{len(got)} of {len(need)} files verified and kept in {dest}",
            hint="run the same command again to fetch only the rest")
    code = stream.exit_code()
    # Every file that arrived was checked against its sha256: a non-zero tar exit matters
    # only when something is missing (e.g. the trainer rotated a checkpoint away).
    if missing:
        err = stream.stderr_text()
        detail = f"tar exited with code {code}: {err}" if code else "the stream ended early"
        cls = ClusterUnavailable if code else VerificationFailed
        raise cls(f"{len(missing)} checkpoint file(s) did not arrive from pod {target.pod} "
                  f"({', '.join(missing)}): {detail}".rstrip(": "),
                  hint="the trainer keeps only its newest checkpoints and may have removed it meanwhile; "
                       "run the command again (verified files are kept)")


def fetch(kube, job_obj: dict, options: FetchOptions, *, say: Callable[[str], None] | None = None) -> list[dict]:
    """List or fetch the checkpoints of `job_obj` (a job object as read from the API).

    `kube` is a kjob.cluster.api.Kube (requests are retried and translated there). Returns the selected index entries. Raises only
    KjobError subclasses: NotFound (no claim annotation, no index, nothing selected),
    VerificationFailed (exit 7), Conflict (a differing file in --dest), ClusterUnavailable,
    Forbidden; a KeyboardInterrupt passes through after the helper pod is deleted.
    """
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    target = locate(job_obj)
    dest = Path(options.dest)
    if not options.list_only and dest.exists() and not dest.is_dir():
        raise InvalidInput(f"--dest {dest} exists and is not a folder")
    with exec_pod(kube, job_obj, target, say) as t:
        index = read_index(kube, t)
        entries = select(index, options, f"{t.claim}:{t.ckpt_dir}")
        if options.list_only:
            return entries
        dest.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest)
        have, need = plan(dest, expected(entries), overwrite=options.overwrite)
        if have:
            say(f"{len(have)} file(s) already in {dest} and verified: skipped")
        if need:
            progress = Progress(sum(e.size for e in need), enabled=options.progress)
            transfer(kube, t, need, dest, overwrite=options.overwrite, progress=progress)
            secs = max(time.monotonic() - progress.start, 1e-6)
            say(f"transferred {len(need)} file(s), {human_bytes(progress.n)} in {secs:.2f} s "
                f"({human_bytes(progress.n / secs)}/s) from pod {t.pod}, sha256 verified")
        write_local_index(dest, index, entries)
    return entries
