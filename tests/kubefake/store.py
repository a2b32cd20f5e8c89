"""The fake API server's state: objects, resource versions, watch history, pod logs,
RBAC denials and injected faults.

Everything here is touched only from the server's event loop thread (the simulator
handle hops onto that thread for every change), so there are no locks.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

# (group, version, plural) -> (kind, namespaced). What discovery lists and the routes serve.
CORE = {
    "pods": "Pod",
    "events": "Event",
    "configmaps": "ConfigMap",
    "secrets": "Secret",
    "services": "Service",
    "serviceaccounts": "ServiceAccount",
    "persistentvolumeclaims": "PersistentVolumeClaim",
}
CRDS = {("kubeflow.org", "v2beta1", "mpijobs"): "MPIJob", ("kubeflow.org", "v1", "pytorchjobs"): "PyTorchJob",
        # Kubeflow Trainer v2.3.0 (manifests/base/crds): TrainJob and its cluster-scoped runtime.
        ("trainer.kubeflow.org", "v1alpha1", "trainjobs"): "TrainJob",
        ("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes"): "ClusterTrainingRuntime"}
# Custom resources whose CRD says `scope: Cluster`.
CLUSTER_SCOPED = {"clustertrainingruntimes"}
# The fields under .spec of a CRD's schema, as its openAPIV3Schema lists them (the fake's
# CRDs carry these names only, not their own schemas): the TrainJob of Trainer v2.3.0
# (pkg/apis/trainer/v1alpha1/trainjob_types.go TrainJobSpec); `serve_crd_spec_fields`
# puts an older release's in place.
SPEC_FIELDS = {"trainjobs": ("runtimeRef", "initializer", "trainer", "runtimePatches", "suspend", "activeDeadlineSeconds", "managedBy")}
# Watch history kept for resuming a watch; older resourceVersions get 410 Gone, as etcd
# compaction makes kube-apiserver answer.
HISTORY = 5000


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@functools.lru_cache(maxsize=1024)
def _second(sec: int) -> str:
    return datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def format_ts(ns: int) -> str:
    """The kubelet's log timestamp: RFC 3339 with a fixed 9-digit fraction."""
    sec, frac = divmod(ns, 1_000_000_000)
    return f"{_second(sec)}.{frac:09d}Z"


def parse_time(text: str) -> int:
    """RFC 3339 (any fraction) -> nanoseconds since the epoch."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        raise ValueError(f"bad time {text!r}")
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    frac = int((m.group(2) or "0").ljust(9, "0"))
    return int(base.timestamp()) * 1_000_000_000 + frac


@dataclass
class Fault:
    """One injected failure. `verb`/`resource` match kube-apiserver's RBAC words
    ("get"/"list"/"watch"/"create"/"delete"/..., "pods", "pods/log", "mpijobs", ...)."""

    verb: str
    resource: str
    status: int | None = None  # answer with this HTTP status (a Status body)
    delay: float = 0.0  # sleep before answering
    cut_after_bytes: int | None = None  # streams: close the connection after this many bytes
    times: int = 1  # how many requests it hits; -1 = every one
    hits: int = 0

    def matches(self, verb: str, resource: str) -> bool:
        return self.times != 0 and self.verb in (verb, "*") and self.resource in (resource, "*")


@dataclass
class ContainerLog:
    current: list = field(default_factory=list)  # [(ts_ns, text)]
    previous: list | None = None


class State:
    def __init__(self, token: str) -> None:
        self.token = token
        self.rv = 100
        self.objects: dict[str, dict[tuple[str, str], dict]] = {}  # plural -> {(ns, name): obj}
        self.history: deque = deque(maxlen=HISTORY)  # (rv, plural, type, obj)
        self.compacted_rv = 0
        self.crds = dict(CRDS)
        self.spec_fields = dict(SPEC_FIELDS)
        self.denied: set[tuple[str, str, str | None]] = set()
        self.faults: list[Fault] = []
        self.logs: dict[tuple[str, str, str], ContainerLog] = {}  # (ns, pod, container)
        self.changed = asyncio.Event()  # pulsed on every change: watchers and log followers wake up
        self.bookmark_interval = 1.0
        self.username = "kjob-test"
        self.last_log_ns = 0
        self.requests: dict[tuple[str, str], int] = {}  # (verb, resource) -> how many arrived
        self.extensions: dict[str, object] = {}  # route modules' own state (e.g. "exec")
        for ns in ("default", "kube-system"):
            self.put("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}})

    # -- objects ---------------------------------------------------------------
    def pulse(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def put(self, plural: str, obj: dict, *, event: str | None = None) -> dict:
        """Store a new or changed object, fill server metadata, record the watch event."""
        md = obj.setdefault("metadata", {})
        key = (md.get("namespace", ""), md["name"])
        store = self.objects.setdefault(plural, {})
        old = store.get(key)
        if old is None:
            md.setdefault("uid", str(uuid.uuid4()))
            md.setdefault("creationTimestamp", now_rfc3339())
            md.setdefault("generation", 1)
        else:
            md["uid"] = old["metadata"]["uid"]
            md["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            gen = old["metadata"].get("generation", 1)
            md["generation"] = gen + 1 if obj.get("spec") != old.get("spec") else gen
        md["resourceVersion"] = self.next_rv()
        store[key] = obj
        self.history.append((self.rv, plural, event or ("ADDED" if old is None else "MODIFIED"), copy.deepcopy(obj)))
        self.pulse()
        return obj

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        return self.objects.get(plural, {}).get((namespace, name))

    def remove(self, plural: str, namespace: str, name: str) -> dict | None:
        obj = self.objects.get(plural, {}).pop((namespace, name), None)
        if obj is None:
            return None
        obj["metadata"]["resourceVersion"] = self.next_rv()
        self.history.append((self.rv, plural, "DELETED", copy.deepcopy(obj)))
        self.collect_garbage(obj["metadata"]["uid"])
        self.pulse()
        return obj

    def collect_garbage(self, owner_uid: str) -> None:
        """Delete what the removed object owned (the garbage collector's background policy)."""
        for plural, store in list(self.objects.items()):
            for (ns, name), obj in list(store.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == owner_uid for r in refs):
                    self.remove(plural, ns, name)
                    if plural == "pods":
                        for key in [k for k in self.logs if k[:2] == (ns, name)]:
                            del self.logs[key]

    def items(self, plural: str, namespace: str | None) -> list[dict]:
        store = self.objects.get(plural, {})
        return [o for (ns, _), o in sorted(store.items()) if namespace is None or ns == namespace]

    # -- pod logs ---------------------------------------------------------------
    def log_time(self, ts_ns: int | None) -> int:
        """A strictly increasing clock for log lines unless a test pins the timestamp."""
        if ts_ns is not None:
            self.last_log_ns = max(self.last_log_ns, ts_ns)
            return ts_ns
        self.last_log_ns = max(time.time_ns(), self.last_log_ns + 1)
        return self.last_log_ns

    def container_log(self, namespace: str, pod: str, container: str) -> ContainerLog:
        return self.logs.setdefault((namespace, pod, container), ContainerLog())

    # -- faults -------------------------------------------------------------------
    def take_fault(self, verb: str, resource: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(verb, resource):
                fault.hits += 1
                if fault.times > 0:
                    fault.times -= 1
                return fault
        return None
