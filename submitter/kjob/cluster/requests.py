"""Every Kubernetes API request kjob makes, as pure builders: method, path, query and body,
plus the verb and resource its errors are named by.

Nothing here sends anything (kjob.cluster.api.Kube.send does), so each request can be
read, and tested, as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kjob.cluster.kinds import RuntimeRef, kind_of
from kjob.errors import InvalidInput
from kjob.names import JOB_KINDS, MANAGED_SELECTOR

# Kinds a rendered job may carry besides the job itself, with their REST names.
CORE_KINDS = {"ConfigMap": "configmaps", "Secret": "secrets", "Service": "services", "ServiceAccount": "serviceaccounts",
              "PersistentVolumeClaim": "persistentvolumeclaims"}


@dataclass(frozen=True)
class Request:
    """One API call. `verb`, `resource`, `name` and `namespace` name it in error messages
    (`forbidden: cannot get pods "x" in namespace "y"`)."""

    method: str
    path: str
    verb: str
    resource: str
    name: str | None = None
    namespace: str | None = None
    query: dict = field(default_factory=dict)
    body: dict | None = None


def api_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    """The REST path of a resource: /api/v1/... for core, /apis/GROUP/VERSION/... else."""
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{name}"
    if sub is not None:
        path += f"/{sub}"
    return path


def plural_of(obj: dict) -> tuple[str, str]:
    """(apiVersion, plural) of an object kjob may create. Raises InvalidInput for any other kind."""
    kind = obj.get("kind", "")
    if kind in JOB_KINDS:
        return JOB_KINDS[kind]
    if kind in CORE_KINDS and obj.get("apiVersion") == "v1":
        return "v1", CORE_KINDS[kind]
    raise InvalidInput(f"kjob cannot create a {obj.get('apiVersion')} {kind} (not a kind kjob renders)")


# -- discovery and permissions --------------------------------------------------------------
def api_resources(api_version: str) -> Request:
    """The resources an API group version serves (does the operator's CRD exist?)."""
    return Request("GET", f"/apis/{api_version}", verb="get", resource=f"{api_version} discovery")


def server_version() -> Request:
    """The API server's version (/version: major, minor, gitVersion)."""
    return Request("GET", "/version", verb="get", resource="version")


def get_namespace(namespace: str) -> Request:
    return Request("GET", api_path("v1", "namespaces", name=namespace), verb="get", resource="namespaces", name=namespace)


def access_review(namespace: str, verb: str, resource: str, sub: str, group: str) -> Request:
    """SelfSubjectAccessReview: may the current user `verb` `resource` in `namespace`?"""
    attrs = {"namespace": namespace, "verb": verb, "resource": resource, "group": group}
    if sub:
        attrs["subresource"] = sub
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": attrs}}
    return Request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", verb="create",
                   resource="selfsubjectaccessreviews", body=body)


def get_crd(name: str) -> Request:
    """A CustomResourceDefinition (cluster-scoped; many users may not read it)."""
    return Request("GET", api_path("apiextensions.k8s.io/v1", "customresourcedefinitions", name=name), verb="get",
                   resource="customresourcedefinitions.apiextensions.k8s.io", name=name)


def openapi_v3(api_version: str) -> Request:
    """The OpenAPI v3 document of one group version, CRDs' schemas included (readable by
    every authenticated user: the system:discovery ClusterRole)."""
    return Request("GET", f"/openapi/v3/apis/{api_version}", verb="get", resource=f"{api_version} OpenAPI v3 schema")


def get_runtime(ref: RuntimeRef, namespace: str) -> Request:
    """A TrainJob's training runtime: a ClusterTrainingRuntime (cluster-scoped) or a
    TrainingRuntime of the job's namespace."""
    ns = namespace if ref.namespaced else None
    return Request("GET", api_path(ref.api_version, ref.plural, ns, ref.name), verb="get", resource=ref.plural, name=ref.name, namespace=ns)


# -- any object kjob renders -----------------------------------------------------------------
def create(obj: dict, namespace: str) -> Request:
    """Create `obj` (its metadata.namespace already set to `namespace`)."""
    api_version, plural = plural_of(obj)
    return Request("POST", api_path(api_version, plural, namespace), verb="create", resource=plural,
                   name=obj["metadata"]["name"], namespace=namespace, body=obj)


def delete(obj: dict) -> Request:
    """Delete a created object (a rollback); `obj` as the server returned it."""
    api_version, plural = plural_of(obj)
    md = obj["metadata"]
    return Request("DELETE", api_path(api_version, plural, md["namespace"], md["name"]), verb="delete", resource=plural,
                   name=md["name"], namespace=md["namespace"])


# -- jobs ----------------------------------------------------------------------------------
def get_job(kind: str, name: str, namespace: str) -> Request:
    api_version, plural = JOB_KINDS[kind]
    return Request("GET", api_path(api_version, plural, namespace, name), verb="get", resource=plural, name=name, namespace=namespace)


def list_jobs(kind: str, namespace: str | None) -> Request:
    """The jobs of one kind that kjob made, in one namespace or all (None)."""
    api_version, plural = JOB_KINDS[kind]
    return Request("GET", api_path(api_version, plural, namespace), verb="list", resource=plural, namespace=namespace,
                   query={"labelSelector": MANAGED_SELECTOR})


def delete_job(job: dict) -> Request:
    """Delete a job; its pods go with it in the background (they are owned by it)."""
    api_version, plural = JOB_KINDS[job["kind"]]
    md = job["metadata"]
    return Request("DELETE", api_path(api_version, plural, md["namespace"], md["name"]), verb="delete", resource=plural,
                   name=md["name"], namespace=md["namespace"], body={"propagationPolicy": "Background"})


# -- pods and events -------------------------------------------------------------------------
def list_job_pods(job: dict) -> Request:
    """The pods the operator made for a job (by the label its kind's operator gives them:
    training.kubeflow.org/job-name, or JobSet's jobset-name for a TrainJob)."""
    md = job["metadata"]
    return Request("GET", api_path("v1", "pods", md["namespace"]), verb="list", resource="pods", namespace=md["namespace"],
                   query={"labelSelector": kind_of(job).pod_selector(md["name"])})


def list_pods(namespace: str) -> Request:
    """Every pod of a namespace (which of them hold a claim: fetch-ckpt)."""
    return Request("GET", api_path("v1", "pods", namespace), verb="list", resource="pods", namespace=namespace)


def list_volume_attachments() -> Request:
    """Every VolumeAttachment (cluster-scoped): which node a volume is still attached to
    after its pods ended (fetch-ckpt). Many users may not read them: callers expect 403."""
    return Request("GET", api_path("storage.k8s.io/v1", "volumeattachments"), verb="list",
                   resource="volumeattachments.storage.k8s.io")


def get_claim(namespace: str, name: str) -> Request:
    return Request("GET", api_path("v1", "persistentvolumeclaims", namespace, name), verb="get",
                   resource="persistentvolumeclaims", name=name, namespace=namespace)


def get_pod(namespace: str, name: str) -> Request:
    return Request("GET", api_path("v1", "pods", namespace, name), verb="get", resource="pods", name=name, namespace=namespace)


def create_pod(namespace: str, manifest: dict) -> Request:
    return Request("POST", api_path("v1", "pods", namespace), verb="create", resource="pods",
                   name=manifest["metadata"]["name"], namespace=namespace, body=manifest)


def delete_pod_now(namespace: str, name: str) -> Request:
    """Delete a pod without a grace period (the fetch-ckpt helper: nothing to save)."""
    return Request("DELETE", api_path("v1", "pods", namespace, name), verb="delete", resource="pods", name=name,
                   namespace=namespace, query={"gracePeriodSeconds": 0})


def namespace_events(namespace: str) -> Request:
    """Every Event of a namespace: the Warnings, and the Normal ones that tell of a
    disruption (the scheduler's "Preempted"); filtered by object afterwards: one call."""
    return Request("GET", api_path("v1", "events", namespace), verb="list", resource="events", namespace=namespace)


def events_of(namespace: str, name: str) -> Request:
    """The Events about one object."""
    return Request("GET", api_path("v1", "events", namespace), verb="list", resource="events", namespace=namespace,
                   query={"fieldSelector": f"involvedObject.name={name}"})


def pod_log(namespace: str, pod: str, query: dict) -> Request:
    """A container's log; `query` holds container, follow, timestamps, sinceTime, ..."""
    return Request("GET", api_path("v1", "pods", namespace, pod, "log"), verb="get", resource="pods/log", name=pod,
                   namespace=namespace, query=query)


def exec_query(argv: list[str], container: str | None) -> list[tuple[str, str]]:
    """The query of a pod exec (a websocket GET of pods/NAME/exec): the command, one
    `command` parameter per argument, stdout and stderr only."""
    query = [("command", arg) for arg in argv] + ([("container", container)] if container else [])
    return query + [("stderr", "true"), ("stdin", "false"), ("stdout", "true"), ("tty", "false")]


# -- Kueue (kjob.cluster.queueing) -------------------------------------------------------------
def list_workloads(namespace: str | None, label_selector: str | None = None) -> Request:
    """Kueue's Workloads (kueue.x-k8s.io/v1beta2) of a namespace or all (None); a job's by
    its UID label."""
    return Request("GET", api_path("kueue.x-k8s.io/v1beta2", "workloads", namespace), verb="list", resource="workloads.kueue.x-k8s.io",
                   namespace=namespace, query={"labelSelector": label_selector} if label_selector else {})


def get_local_queue(namespace: str, name: str) -> Request:
    return Request("GET", api_path("kueue.x-k8s.io/v1beta2", "localqueues", namespace, name), verb="get",
                   resource="localqueues.kueue.x-k8s.io", name=name, namespace=namespace)


def pending_workloads(namespace: str, local_queue: str) -> Request:
    """Kueue's visibility API: the pending Workloads of a LocalQueue, with their positions."""
    return Request("GET", api_path("visibility.kueue.x-k8s.io/v1beta2", "localqueues", namespace, local_queue, "pendingworkloads"),
                   verb="get", resource="localqueues/pendingworkloads.visibility.kueue.x-k8s.io", name=local_queue, namespace=namespace)
