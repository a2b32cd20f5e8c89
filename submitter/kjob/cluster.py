"""Jobs on a cluster: preflight, create (all or nothing), idempotent re-submit, get, list,
delete, wait — and `ClusterBackend`, the Backend the CLI uses for a cluster.

Requests go through kubeapi.Kube, so only KjobError subclasses leave this module.
"""

from __future__ import annotations

import copy
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from kjob.backend import FINAL_STATES, FetchOptions, JobStatus, LogOptions
from kjob.errors import ClusterUnavailable, Conflict, Forbidden, InvalidInput, KjobError, NotFound
from kjob.kubeapi import Kube, _env_float, api_path, connect

GROUP = "kubeflow.org"
# kind -> (apiVersion, plural): the versions the operators kjob targets serve.
JOB_KINDS = {"MPIJob": (f"{GROUP}/v2beta1", "mpijobs"), "PyTorchJob": (f"{GROUP}/v1", "pytorchjobs")}
OPERATORS = {
    "MPIJob": ("mpi-operator v0.8", "kubectl apply --server-side -f https://raw.githubusercontent.com/kubeflow/mpi-operator/v0.8.2/deploy/v2beta1/mpi-operator.yaml"),
    "PyTorchJob": ("training-operator v1.9", 'kubectl apply --server-side -k "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0"'),
}
# A job kind whose CRD another install is known to replace: (what happened, the fix).
# training-operator's standalone manifests carry an MPIJob kubeflow.org/v1 CRD of the same
# name as mpi-operator's v2beta1 one (kubeflow/trainer#1930, #1972).
CLOBBERED = {
    "MPIJob": ("training-operator's full install ships an MPIJob kubeflow.org/v1 CRD that replaces mpi-operator's v2beta1 one",
               f"kubectl delete crd mpijobs.{GROUP}, install mpi-operator again ({OPERATORS['MPIJob'][1]}), and run training-operator "
               "with --enable-scheme=pytorchjob and without its MPIJob CRD (README: Installing the operators)"),
}
# Other kinds a rendered job may carry, with their REST names.
CORE_KINDS = {"ConfigMap": "configmaps", "Secret": "secrets", "Service": "services", "ServiceAccount": "serviceaccounts", "PersistentVolumeClaim": "persistentvolumeclaims"}
MANAGED = "app.kubernetes.io/managed-by=kjob"
SPEC_HASH = "kjob.dev/spec-hash"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
# What kjob does after submitting, checked up front by SelfSubjectAccessReview:
# (verb, resource, subresource) on top of "create <the job kind>".
NEEDED_ACCESS = [("get", "pods", ""), ("list", "pods", ""), ("get", "pods", "log"), ("create", "pods", "exec")]


def poll_seconds() -> float:
    """How often waiting loops look again ($KJOB_POLL_SECONDS; tests make it short)."""
    return _env_float("KJOB_POLL_SECONDS", 2.0)


def plural_of(obj: dict) -> tuple[str, str]:
    kind = obj.get("kind", "")
    if kind in JOB_KINDS:
        return JOB_KINDS[kind]
    if kind in CORE_KINDS and obj.get("apiVersion") == "v1":
        return "v1", CORE_KINDS[kind]
    raise InvalidInput(f"kjob cannot create a {obj.get('apiVersion')} {kind} (not a kind kjob renders)")


# -- preflight ------------------------------------------------------------------------------
def preflight(kube: Kube, kind: str, namespace: str) -> None:
    """In one round of concurrent calls: the operator's API is served at the version kjob
    renders, the namespace exists, and RBAC allows what kjob will do. Reports every
    problem at once. Raises ClusterUnavailable, NotFound (CRD, namespace) or Forbidden."""
    api_version, plural = JOB_KINDS[kind]
    checks = [lambda: _check_api(kube, kind), lambda: _check_namespace(kube, namespace)]
    access = [("create", plural, "", GROUP)] + [(v, r, s, "") for v, r, s in NEEDED_ACCESS]
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


def _check_api(kube: Kube, kind: str) -> KjobError | None:
    api_version, plural = JOB_KINDS[kind]
    operator, install = OPERATORS[kind]
    missing = NotFound(f"the {kind} API ({api_version} {plural}) is not served by {kube.where()}: {operator} is not installed", hint=f"install it: {install}")
    try:
        found = kube.request("GET", f"/apis/{api_version}", verb="get", resource=f"{api_version} discovery")
    except NotFound:
        found = None
    names = [r.get("name") for r in found.get("resources", [])] if isinstance(found, dict) else []
    if plural in names:
        return None
    elsewhere = _served_at(kube, plural, api_version)
    if elsewhere:
        # Seen on a real API server: a CRD serves one set of versions, so installing
        # another operator's CRD of the same name takes the version kjob needs away.
        return NotFound(f"the {kind} API is served by {kube.where()} only as {elsewhere} {plural}, not {api_version}: "
                        f"its CRD {plural}.{GROUP} was replaced by another one" + (f" ({CLOBBERED[kind][0]})" if kind in CLOBBERED else ""),
                        hint=CLOBBERED[kind][1] if kind in CLOBBERED else f"install it: {install}")
    return missing


def _served_at(kube: Kube, plural: str, wanted: str) -> str | None:
    """Another version of GROUP that serves `plural` (e.g. kubeflow.org/v1), or None."""
    try:
        group = kube.request("GET", f"/apis/{GROUP}", verb="get", resource=f"{GROUP} discovery")
        for version in group.get("versions", []):
            gv = version.get("groupVersion")
            if gv and gv != wanted:
                found = kube.request("GET", f"/apis/{gv}", verb="get", resource=f"{gv} discovery")
                if plural in [r.get("name") for r in found.get("resources", [])]:
                    return gv
    except (KjobError, AttributeError):
        pass
    return None


def _check_namespace(kube: Kube, namespace: str) -> None:
    kube.request("GET", api_path("v1", "namespaces", name=namespace), verb="get", resource="namespaces", name=namespace)


def _check_access(kube: Kube, namespace: str, verb: str, resource: str, sub: str, group: str) -> KjobError | None:
    attrs = {"namespace": namespace, "verb": verb, "resource": resource, "group": group}
    if sub:
        attrs["subresource"] = sub
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": attrs}}
    try:
        review = kube.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", verb="create", resource="selfsubjectaccessreviews", body=body)
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


def find_job(objects: list[dict]) -> dict:
    jobs = [o for o in objects if o.get("kind") in JOB_KINDS]
    if len(jobs) != 1:
        raise InvalidInput(f"expected exactly one MPIJob or PyTorchJob among the rendered objects, found {len(jobs)}")
    return jobs[0]


def submit(kube: Kube, objects: list[dict], namespace: str, *, replace: bool = False) -> Submitted:
    """Create every object, or none: a failure removes what was already created.
    Same spec already there (spec-hash annotation): nothing to do. Raises Conflict
    (different spec, no `replace`) and what preflight/requests raise."""
    job = find_job(objects)
    kind, name = job["kind"], job["metadata"]["name"]
    preflight(kube, kind, namespace)
    existing = get_job(kube, name, namespace, kinds=[kind], missing_ok=True)
    if existing is not None:
        ours = job["metadata"].get("annotations", {}).get(SPEC_HASH)
        theirs = existing["metadata"].get("annotations", {}).get(SPEC_HASH)
        if ours and ours == theirs:
            return Submitted(kind, name, namespace, False, f"{kind} {namespace}/{name} is already submitted with this spec ({ours[:19]}…): nothing to do")
        if not replace:
            raise Conflict(
                f'{kind} "{name}" already exists in namespace "{namespace}" with a different spec (on the server: {(theirs or "no kjob spec hash")[:19]}…, this spec: {(ours or "none")[:19]}…)',
                hint="kjob submit --replace deletes it and submits this spec; or give the job another name",
            )
        delete_job(kube, existing, wait=True)
    created: list[dict] = []
    for obj in objects:
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = namespace
        api_version, plural = plural_of(obj)
        try:
            created.append(kube.request("POST", api_path(api_version, plural, namespace), verb="create", resource=plural, name=obj["metadata"]["name"], namespace=namespace, body=obj))
        except KjobError as e:
            undone = _rollback(kube, created)
            note = f" (rolled back: deleted {', '.join(undone)})" if undone else ""
            raise type(e)(e.message + note, hint=e.hint) from e
    verb = "replaced" if existing is not None else "created"
    return Submitted(kind, name, namespace, True, f"{kind} {namespace}/{name} {verb}")


def _rollback(kube: Kube, created: list[dict]) -> list[str]:
    undone = []
    for obj in reversed(created):
        api_version, plural = plural_of(obj)
        md = obj["metadata"]
        try:
            kube.request("DELETE", api_path(api_version, plural, md["namespace"], md["name"]), verb="delete", resource=plural, name=md["name"], namespace=md["namespace"])
            undone.append(f"{obj['kind']} {md['name']}")
        except KjobError:
            undone.append(f"{obj['kind']} {md['name']} (delete failed: remove it by hand)")
    return undone


def get_job(kube: Kube, name: str, namespace: str, *, kinds: list[str] | None = None, missing_ok: bool = False) -> dict | None:
    """The job object (MPIJob or PyTorchJob) by name. Raises NotFound unless missing_ok."""
    for kind in kinds or list(JOB_KINDS):
        api_version, plural = JOB_KINDS[kind]
        try:
            return kube.request("GET", api_path(api_version, plural, namespace, name), verb="get", resource=plural, name=name, namespace=namespace)
        except NotFound:
            continue  # not this kind, or its operator is not installed
    if missing_ok:
        return None
    raise NotFound(f'job "{name}" not found in namespace "{namespace}" on {kube.where()}', hint="kjob list shows the jobs; -n/--namespace picks another namespace")


def list_jobs(kube: Kube, namespace: str | None) -> list[dict]:
    """Jobs made by kjob (label selector), in one namespace or all (None)."""
    out = []
    for api_version, plural in JOB_KINDS.values():
        try:
            found = kube.request("GET", api_path(api_version, plural, namespace), verb="list", resource=plural, namespace=namespace, query={"labelSelector": MANAGED})
        except NotFound:
            continue  # that operator is not installed: no jobs of its kind
        out += found.get("items", [])
    return sorted(out, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))


def job_pods(kube: Kube, job: dict) -> list[dict]:
    md = job["metadata"]
    found = kube.request("GET", api_path("v1", "pods", md["namespace"]), verb="list", resource="pods", namespace=md["namespace"], query={"labelSelector": f"{JOB_NAME_LABEL}={md['name']}"})
    return found.get("items", [])


def job_events(kube: Kube, job: dict, pods: list[dict]) -> list[dict]:
    """Warning Events of the job and its pods (one call; filtered here)."""
    md = job["metadata"]
    names = {md["name"]} | {p["metadata"]["name"] for p in pods}
    found = kube.request("GET", api_path("v1", "events", md["namespace"]), verb="list", resource="events", namespace=md["namespace"], query={"fieldSelector": "type=Warning"})
    return [e for e in found.get("items", []) if e.get("involvedObject", {}).get("name") in names]


def delete_job(kube: Kube, job: dict, *, wait: bool = False, timeout: float = 300) -> int:
    """Delete the job (its pods go with it: they are owned by it). Returns how many pods
    it had. With `wait`, returns when the job and its pods are gone. Raises NotFound..."""
    md = job["metadata"]
    api_version, plural = JOB_KINDS[job["kind"]]
    pods = job_pods(kube, job)
    kube.request("DELETE", api_path(api_version, plural, md["namespace"], md["name"]), verb="delete", resource=plural, name=md["name"], namespace=md["namespace"], body={"propagationPolicy": "Background"})
    deadline = time.monotonic() + timeout
    while wait:
        gone = get_job(kube, md["name"], md["namespace"], kinds=[job["kind"]], missing_ok=True) is None
        if gone and not job_pods(kube, job):
            break
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"{job['kind']} {md['namespace']}/{md['name']} was deleted but is still there after {timeout:.0f} s (a finalizer?)")
        time.sleep(poll_seconds())
    return len(pods)


# -- the Backend -----------------------------------------------------------------------------------------
class ClusterBackend:
    """backend.Backend for a Kubernetes cluster. Raises only KjobError subclasses.
    `notify` receives progress lines (waiting reasons, states); default stderr."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None, notify: Callable[[str], None] | None = None) -> None:
        self.kube = connect(kubeconfig, context, namespace)
        self.namespace_flag = namespace
        self.notify = notify or (lambda line: print(line, file=sys.stderr, flush=True))

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    def submit(self, objects: list[dict], *, replace: bool = False) -> Submitted:
        job = find_job(objects)
        spec_ns = job["metadata"].get("namespace")
        if self.namespace_flag and spec_ns and spec_ns != self.namespace_flag:
            raise InvalidInput(f'the spec says namespace "{spec_ns}" but --namespace is "{self.namespace_flag}"')
        return submit(self.kube, objects, self.namespace_flag or spec_ns or self.kube.namespace, replace=replace)

    def job(self, name: str, namespace: str | None = None) -> dict:
        return get_job(self.kube, name, namespace or self.namespace)

    def status(self, name: str, namespace: str | None = None) -> JobStatus:
        from kjob.status import job_status

        job = self.job(name, namespace)
        pods = job_pods(self.kube, job)
        try:
            events = job_events(self.kube, job, pods)
        except Forbidden:
            events = []  # many roles may not read Events: the pods' own status still explains most
        return job_status(job, pods, events)

    def list_jobs(self, all_namespaces: bool = False) -> list[JobStatus]:
        from kjob.status import job_status

        return [job_status(j, None, []) for j in list_jobs(self.kube, None if all_namespaces else self.namespace)]

    def delete(self, name: str, wait: bool = False, grace: float | None = None, now: bool = False) -> str:
        """Delete the job; a running MPIJob's trainer is first asked for a checkpoint
        (kjob.stopping; up to `grace` seconds, not with `now`). Returns delete's line."""
        from kjob.status import job_state
        from kjob.stopping import GRACE_S, checkpoint_before_delete

        job = self.job(name)
        state, _ = job_state(job)
        stopping = None
        if job["kind"] == "MPIJob" and not now:
            stopping = checkpoint_before_delete(self.kube, job, GRACE_S if grace is None else grace, self.notify)
        n = delete_job(self.kube, job, wait=wait)
        md = job["metadata"]
        policy = job["spec"].get("runPolicy", {}).get("cleanPodPolicy", "None")
        if n:
            pods = f"its {n} pod(s) are deleted with it (they are owned by the job)" + ("; all gone" if wait else "")
        elif state in FINAL_STATES:
            pods = f"it had no pods left (cleanPodPolicy {policy} removed them when the job {state.lower()})"
        else:
            pods = "it had no pods yet"
        return f"deleted {job['kind']} {md['namespace']}/{md['name']}: " + (f"{stopping}; " if stopping else "") + pods

    def wait(self, name: str, namespace: str | None = None) -> JobStatus:
        """Poll until the job Succeeded or Failed; reports state changes through notify."""
        last = None
        while True:
            st = self.status(name, namespace)
            line = f"{st.kind} {st.name}: {st.state}" + (f" — {st.message}" if st.message else "")
            if line != last:
                self.notify(line)
                last = line
            if st.state in FINAL_STATES:
                for warning in st.warnings:
                    self.notify(f"warning: {warning}")
                return st
            time.sleep(poll_seconds())

    def logs(self, name: str, options: LogOptions, write: Callable[[str], None]) -> str | None:
        from kjob.logs import show_logs

        final = show_logs(self, self.job(name), options, write)
        if final is not None:
            self._warn(name)
        return final

    def _warn(self, name: str) -> None:
        """Say the status warnings of a job that just ended (workers left running)."""
        try:
            warnings = self.status(name).warnings
        except NotFound:
            return  # already deleted (TTL): nothing left to warn about
        for warning in warnings:
            self.notify(f"warning: {warning}")

    def fetch_checkpoints(self, name: str, options: FetchOptions) -> list[dict]:
        from kjob.checkpoints import fetch

        return fetch(self.kube, self.job(name), options, say=self.notify)
