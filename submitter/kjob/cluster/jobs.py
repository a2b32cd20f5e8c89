"""Jobs on a cluster: preflight, create (all or nothing), idempotent re-submit, get, list
and delete, and the pods and Warning Events of a job.

Requests are built by kjob.cluster.requests and sent by kjob.cluster.api.Kube, so only
KjobError subclasses leave this module.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from kjob import settings
from kjob.cluster import requests
from kjob.backend import finished_conflict
from kjob.cluster.api import Kube
from kjob.cluster.disruptions import DISRUPTION_EVENTS
from kjob.cluster.kinds import JobKind, SchemaField, kind_of
from kjob.cluster.queueing import check_local_queue
from kjob.cluster.status import ended
from kjob.errors import ClusterUnavailable, Conflict, Forbidden, InvalidInput, KjobError, NotFound
from kjob.names import GROUP, JOB_KINDS, POD_SECURITY_ENFORCE, RUNTIMES, SPEC_HASH

# A job kind whose CRD another install is known to replace: (what happened, the fix).
# training-operator's standalone manifests carry an MPIJob kubeflow.org/v1 CRD of the same
# name as mpi-operator's v2beta1 one (kubeflow/trainer#1930, #1972).
CLOBBERED = {
    "MPIJob": ("training-operator's full install ships an MPIJob kubeflow.org/v1 CRD that replaces mpi-operator's v2beta1 one",
               f"kubectl delete crd mpijobs.{GROUP}, install mpi-operator again ({kind_of('MPIJob').install}), and run training-operator "
               "with --enable-scheme=pytorchjob and without its MPIJob CRD (README: Installing the operators side by side)"),
}
# Where kjob's own ClusterTrainingRuntimes are in a checkout of kjob (manifests/runtimes).
RUNTIME_MANIFESTS = "manifests/runtimes"
# What kjob does after submitting, checked up front by SelfSubjectAccessReview:
# (verb, resource, subresource) on top of "create <the job kind>" and exec_access().
NEEDED_ACCESS = [("get", "pods", ""), ("list", "pods", ""), ("get", "pods", "log")]
# kjob's exec (delete's checkpoint, fetch-ckpt) is a websocket GET of pods/NAME/exec: the
# API server authorizes it as "get pods/exec" up to 1.34; from 1.35 it also checks
# "create" (KEP-4006, feature gate AuthorizePodWebsocketUpgradeCreatePermission).
EXEC_CREATE_FROM = (1, 35)


def exec_access(version: dict | None) -> list[tuple[str, str, str]]:
    """The exec permissions the server of `version` (its /version answer) will check;
    both verbs when the version is unknown."""
    try:
        minor = re.match(r"\d+", version["minor"]).group()  # "35", or "35+" on some distributions
        server = (int(version["major"]), int(minor))
    except (TypeError, KeyError, ValueError, AttributeError):
        server = EXEC_CREATE_FROM
    return [("get", "pods", "exec")] + ([("create", "pods", "exec")] if server >= EXEC_CREATE_FROM else [])


def _server_version(kube: Kube) -> dict | None:
    try:
        return kube.send(requests.server_version())
    except KjobError:
        return None  # not allowed or not served: check both verbs


def poll_seconds() -> float:
    """How often waiting loops look again ($KJOB_POLL_SECONDS; tests make it short)."""
    return settings.current().poll_seconds


# -- preflight ------------------------------------------------------------------------------
def preflight(kube: Kube, job: dict, namespace: str) -> None:
    """In one round of concurrent calls: the operator's API is served at the version kjob
    renders (with the fields kjob renders), the training runtime a TrainJob names exists,
    the namespace exists, and RBAC allows what kjob will do. Reports every problem at
    once. Raises ClusterUnavailable, NotFound (CRD, runtime, namespace) or Forbidden."""
    adapter = kind_of(job)
    # The runtime is looked for once its API is known to be served: without the Trainer,
    # "install the Trainer" is the one thing to say.
    checks = [lambda: _check_api(kube, adapter) or _check_runtime(kube, adapter, job, namespace), lambda: _check_namespace(kube, namespace)]
    needed = NEEDED_ACCESS + exec_access(_server_version(kube))
    access = [("create", adapter.plural, "", adapter.group)] + [(v, r, s, "") for v, r, s in needed]
    checks += [lambda a=a: _check_access(kube, namespace, *a) for a in access]
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        problems = [p for p in pool.map(_capture, checks) if p is not None]
    if not problems:
        return
    for cls in (ClusterUnavailable, NotFound, Forbidden, KjobError):
        first = [p for p in problems if isinstance(p, cls)]
        if first:
            lines = [p.message for p in problems]
            hints = [p.hint for p in problems if p.hint]
            raise type(first[0])("\n".join(lines), hint="; ".join(hints) or None)


def _capture(check: Callable[[], KjobError | None]) -> KjobError | None:
    try:
        return check()
    except KjobError as e:
        return e


def _check_api(kube: Kube, adapter: JobKind) -> KjobError | None:
    kind, api_version, plural, install = adapter.kind, adapter.api_version, adapter.plural, adapter.install
    missing = NotFound(f"the {kind} API ({api_version} {plural}) is not served by {kube.where()}: {adapter.operator} is not installed", hint=f"install it: {install}")
    try:
        found = kube.send(requests.api_resources(api_version))
    except NotFound:
        found = None
    if plural in _served(found):
        field = adapter.schema_field()
        return _check_schema(kube, adapter, field) if field else None
    elsewhere = _served_at(kube, adapter.group, plural, api_version)
    if elsewhere is None:
        return missing
    # A CRD serves one set of versions: installing another operator's CRD of the same name
    # takes the version kjob renders away.
    what, fix = CLOBBERED.get(kind, ("", f"install it: {install}"))
    return NotFound(f"the {kind} API is served by {kube.where()} only as {elsewhere} {plural}, not {api_version}: "
                    f"its CRD {plural}.{adapter.group} was replaced by another one" + (f" ({what})" if what else ""), hint=fix)


def _check_schema(kube: Kube, adapter: JobKind, field: SchemaField) -> KjobError | None:
    """The served schema has `field` (a CRD drops unknown fields silently: a TrainJob
    created on Trainer v2.0/v2.1 would lose its runtimePatches and run without kjob's
    volumes). Read from the CRD, else (a user who may not read CRDs) from the OpenAPI v3
    document; when neither can be read, nothing is said."""
    schema = _crd_schema(kube, field)
    if schema is None:
        return None
    node = schema
    for part in field.path:
        node = (node.get("properties") or {}).get(part) if isinstance(node, dict) else None
        if node is None:
            where = ".".join(field.path)
            return NotFound(f"the {adapter.kind} API served by {kube.where()} has no {where}: its CRD {field.crd} is older than "
                            f"{field.since}, which kjob needs", hint=f"upgrade it: {adapter.install}")
    return None


def _crd_schema(kube: Kube, field: SchemaField) -> dict | None:
    """The openAPIV3Schema of the field's kind at its version, or None when unreadable."""
    try:
        crd = kube.send(requests.get_crd(field.crd))
        for version in crd.get("spec", {}).get("versions") or []:
            if version.get("name") == field.version:
                return (version.get("schema") or {}).get("openAPIV3Schema") or {}
        return None
    except (Forbidden, NotFound):
        pass  # many users may not read CRDs: the published OpenAPI document says the same
    except (KjobError, AttributeError):
        return None
    wanted = {"group": field.group, "version": field.version, "kind": field.kind}
    try:
        doc = kube.send(requests.openapi_v3(f"{field.group}/{field.version}"))
        for schema in (doc.get("components") or {}).get("schemas", {}).values():
            if wanted in (schema.get("x-kubernetes-group-version-kind") or []):
                return schema
    except (KjobError, AttributeError):
        pass
    return None


def _check_runtime(kube: Kube, adapter: JobKind, job: dict, namespace: str) -> KjobError | None:
    """The training runtime the TrainJob names exists (the controller would otherwise
    leave the job without pods and say so only in its log)."""
    ref = adapter.runtime(job)
    if ref is None:
        return None
    try:
        kube.send(requests.get_runtime(ref, namespace))
        return None
    except Forbidden:
        return None  # not allowed to read it: the job will tell
    except NotFound:
        pass
    where = f' in namespace "{namespace}"' if ref.namespaced else ""
    if ref.name in RUNTIMES.values():
        hint = f"install kjob's runtime: kubectl apply -f {RUNTIME_MANIFESTS}/{ref.name}.yaml (from a checkout of kjob)"
    else:
        hint = f"install that {ref.kind}, or name one that exists (kubectl get {ref.plural})"
    return NotFound(f'the {ref.kind} "{ref.name}" that {adapter.kind} {job["metadata"]["name"]} runs from is not on {kube.where()}{where}', hint=hint)


def _served(discovery: dict | None) -> list[str]:
    return [r.get("name") for r in discovery.get("resources", [])] if isinstance(discovery, dict) else []


def _served_at(kube: Kube, group_name: str, plural: str, wanted: str) -> str | None:
    """Another version of the group that serves `plural` (e.g. kubeflow.org/v1), or None."""
    try:
        group = kube.send(requests.api_resources(group_name))
        for version in group.get("versions", []):
            gv = version.get("groupVersion")
            if gv and gv != wanted and plural in _served(kube.send(requests.api_resources(gv))):
                return gv
    except (KjobError, AttributeError):
        pass
    return None


def _check_namespace(kube: Kube, namespace: str) -> None:
    try:
        kube.send(requests.get_namespace(namespace))
    except Forbidden:
        pass  # namespaces are cluster-scoped: a user with a Role of its own namespace may not read them


def _namespace_labels(kube: Kube, namespace: str) -> dict:
    """The namespace's labels ({} for a user who may not read namespaces)."""
    try:
        return kube.send(requests.get_namespace(namespace))["metadata"].get("labels") or {}
    except Forbidden:
        return {}


def _check_access(kube: Kube, namespace: str, verb: str, resource: str, sub: str, group: str) -> KjobError | None:
    try:
        review = kube.send(requests.access_review(namespace, verb, resource, sub, group))
    except (Forbidden, NotFound):
        return None  # not allowed to ask (or no such API): the real calls will tell
    if review.get("status", {}).get("allowed"):
        return None
    what = resource + (f"/{sub}" if sub else "") + (f".{group}" if group else "")
    return Forbidden(f'forbidden: RBAC does not allow "{verb} {what}" in namespace "{namespace}" (context "{kube.context}")', hint=f"ask a cluster admin for a Role with {verb} on {what}")


# -- create / get / list / delete ----------------------------------------------------------------
@dataclass
class Submitted:
    kind: str
    name: str
    namespace: str
    created: bool  # False: the same spec was already there
    message: str
    warnings: list[str] = field(default_factory=list)  # what may still stop the pods


def find_job(objects: list[dict]) -> dict:
    jobs = [o for o in objects if o.get("kind") in JOB_KINDS]
    if len(jobs) != 1:
        raise InvalidInput(f"expected exactly one {', '.join(JOB_KINDS)} among the rendered objects, found {len(jobs)}")
    return jobs[0]


def submit(kube: Kube, objects: list[dict], namespace: str, *, replace: bool = False) -> Submitted:
    """Create every object in `namespace`, or none: a failure removes what was already created.
    Same spec already there (spec-hash annotation): nothing to do. Raises Conflict
    (different spec, no `replace`) and what preflight/requests raise."""
    job = find_job(objects)
    kind, name = job["kind"], job["metadata"]["name"]
    preflight(kube, job, namespace)
    level = _namespace_labels(kube, namespace).get(POD_SECURITY_ENFORCE)
    warnings = pod_security_warnings(level, namespace, job)
    warnings += [w for w in [check_local_queue(kube, job, namespace)] if w]  # NotFound: no such LocalQueue
    existing = get_job(kube, name, namespace, kinds=[kind], missing_ok=True)
    if existing is not None:
        ours = job["metadata"].get("annotations", {}).get(SPEC_HASH)
        theirs = existing["metadata"].get("annotations", {}).get(SPEC_HASH)
        state, when = ended(existing)
        if state is not None and not replace:
            # The same spec over an ended job would be a no-op that never runs it again.
            raise finished_conflict(f"job {name}", state, when)
        if ours and ours == theirs and state is None:
            return Submitted(kind, name, namespace, False, f"{kind} {namespace}/{name} is already submitted with this spec ({ours[:19]}…): nothing to do", warnings)
        if not replace:
            raise Conflict(
                f'{kind} "{name}" already exists in namespace "{namespace}" with a different spec (on the server: {(theirs or "no kjob spec hash")[:19]}…, this spec: {(ours or "none")[:19]}…)',
                hint="kjob submit --replace deletes it and submits this spec; or give the job another name",
            )
        delete_job(kube, existing, wait=True)
    created: list[dict] = []
    for obj in objects:
        # Sent as planned (what --dry-run printed): an object without a namespace gets
        # the one of the request's path from the API server.
        try:
            created.append(kube.send(requests.create(obj, namespace)))
        except KjobError as e:
            undone = _rollback(kube, created)
            note = f" (rolled back: deleted {', '.join(undone)})" if undone else ""
            raise type(e)(e.message + note, hint=e.hint) from e
    verb = "replaced" if existing is not None else "created"
    return Submitted(kind, name, namespace, True, f"{kind} {namespace}/{name} {verb}", warnings)


# Volume types Pod Security "restricted" admits (the rest, nfs and hostPath among them, are
# refused); "baseline" refuses hostPath only.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


# Capabilities a container may add under Pod Security "baseline" (kubernetes.io/docs,
# "Pod Security Standards": Capabilities) and "restricted" (NET_BIND_SERVICE only).
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                         "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}


def pod_security_warnings(level: str | None, namespace: str, job: dict) -> list[str]:
    """Why Pod Security admission at `level` would refuse the job's pods, with the way
    around, or []. The operators create the pods, so a refusal shows only as a job that
    never starts: kjob says it at submit."""
    if level not in ("baseline", "restricted"):
        return []
    found = []
    pods = kind_of(job).pod_templates(job)
    volumes = {(kind, vol["name"]) for pod in pods for vol in pod.get("volumes") or [] for kind in vol if kind != "name"}
    for kind, volume in sorted(volumes):
        if kind == "hostPath" or (level == "restricted" and kind not in RESTRICTED_VOLUMES):
            found.append(f'namespace "{namespace}" enforces Pod Security "{level}", which refuses {kind} volumes '
                         f'(volume "{volume}"): the pods will not be created; use a PersistentVolumeClaim for the data')
    if any(pod.get("hostNetwork") for pod in pods):
        found.append(f'namespace "{namespace}" enforces Pod Security "{level}", which refuses hostNetwork: the trainer '
                     "pods will not be created; run the job in a namespace labelled "
                     "pod-security.kubernetes.io/enforce=privileged, or use a secondary network (podAnnotations) instead")
    added = sorted({cap for pod in pods for c in pod.get("containers") or []
                    for cap in c.get("securityContext", {}).get("capabilities", {}).get("add", [])
                    if cap not in (BASELINE_CAPABILITIES if level == "baseline" else RESTRICTED_CAPABILITIES)})
    if added:
        found.append(f'namespace "{namespace}" enforces Pod Security "{level}", which refuses the capabilities '
                     f'{", ".join(added)}: the trainer pods will not be created; run the job in a namespace labelled '
                     "pod-security.kubernetes.io/enforce=privileged, or leave capabilities out")
    if level == "restricted" and job["kind"] == "PyTorchJob" and "Worker" in job["spec"].get("pytorchReplicaSpecs", {}):
        # training-operator v1.9 gives every worker pod of a job with a master an init
        # container that waits for the master's DNS name (pkg/controller.v1/pytorch/
        # initcontainer.go: init-pytorch, alpine:3.10, no securityContext).
        found.append(f'namespace "{namespace}" enforces Pod Security "restricted", and training-operator v1.9 gives '
                     "PyTorchJob workers an init container (init-pytorch) without allowPrivilegeEscalation: false or "
                     "capabilities drop ALL: the worker pods will be refused; run training-operator with "
                     "--pytorch-init-container-template-file naming a template that sets them, or use `launcher: mpi` (an MPIJob)")
    return found


def _rollback(kube: Kube, created: list[dict]) -> list[str]:
    undone = []
    for obj in reversed(created):
        md = obj["metadata"]
        try:
            kube.send(requests.delete(obj))
            undone.append(f"{obj['kind']} {md['name']}")
        except KjobError:
            undone.append(f"{obj['kind']} {md['name']} (delete failed: remove it by hand)")
    return undone


def get_job(kube: Kube, name: str, namespace: str, *, kinds: list[str] | None = None, missing_ok: bool = False) -> dict | None:
    """The job object (of any kind kjob makes) by name. Raises NotFound unless missing_ok."""
    for kind in kinds or list(JOB_KINDS):
        try:
            return kube.send(requests.get_job(kind, name, namespace))
        except NotFound:
            continue  # not this kind, or its operator is not installed
    if missing_ok:
        return None
    raise NotFound(f'job "{name}" not found in namespace "{namespace}" on {kube.where()}', hint="kjob list shows the jobs; -n/--namespace picks another namespace")


def list_jobs(kube: Kube, namespace: str | None) -> list[dict]:
    """Jobs made by kjob (label selector), in one namespace or all (None)."""
    out = []
    for kind in JOB_KINDS:
        try:
            found = kube.send(requests.list_jobs(kind, namespace))
        except NotFound:
            continue  # that operator is not installed: no jobs of its kind
        out += found.get("items", [])
    return sorted(out, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


def job_pods(kube: Kube, job: dict) -> list[dict]:
    """The pods the operator made for `job`."""
    return kube.send(requests.list_job_pods(job)).get("items", [])


def job_events(kube: Kube, job: dict, pods: list[dict]) -> list[dict]:
    """The Warning Events of the job and of its pods, those that exist and those that are
    gone (the operators name pods <job>-...: events outlive pods), those of the job's own
    other objects (a TrainJob's JobSet and child Jobs), and the Normal ones that tell of a
    disruption (DISRUPTION_EVENTS: "Preempted"). One call; filtered here."""
    md = job["metadata"]
    names = {md["name"]} | {p["metadata"]["name"] for p in pods}
    found = kube.send(requests.namespace_events(md["namespace"]))
    return [e for e in found.get("items", []) if _of_job(e, job, names) and (e.get("type") == "Warning" or e.get("reason") in DISRUPTION_EVENTS)]


def _of_job(event: dict, job: dict, names: set[str]) -> bool:
    """About the job or one of its pods, present or gone (the kind knows its pods' names:
    <job>-worker-N, not <job>-2-worker-0: another job's), or one of its own objects."""
    obj, adapter = event.get("involvedObject") or {}, kind_of(job)
    name = obj.get("name", "")
    if name in names:
        return True
    if obj.get("kind") == "Pod":
        return adapter.gone_replica(job["metadata"]["name"], name) is not None
    return adapter.job_level_event(job, event) is not None


def delete_job(kube: Kube, job: dict, *, wait: bool = False, timeout: float = 300) -> int:
    """Delete the job (its pods go with it: they are owned by it). Returns how many pods
    it had. With `wait`, returns when the job and its pods are gone. Raises NotFound..."""
    md = job["metadata"]
    pods = job_pods(kube, job)
    kube.send(requests.delete_job(job))
    deadline = time.monotonic() + timeout
    while wait:
        gone = get_job(kube, md["name"], md["namespace"], kinds=[job["kind"]], missing_ok=True) is None
        if gone and not job_pods(kube, job):
            break
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"{job['kind']} {md['namespace']}/{md['name']} was deleted but is still there after {timeout:.0f} s (a finalizer?)")
        time.sleep(poll_seconds())
    return len(pods)
