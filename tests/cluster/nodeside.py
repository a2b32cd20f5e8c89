"""The part of a kubelet that kwok leaves to us: each pod's log files and exec rule.

A thread watches every pod. When one is bound to a node, it gets a directory
<root>/pods/<namespace>/<pod>/ holding one CRI-format log file per container, a kwok
`Logs` object (named like the pod) pointing at those files and a kwok `Exec` object
running exec'd commands with the pod's directory as working directory. Only then is the
pod annotated PREPARED, which kwok's pod-running stage waits for (stages.py).

Tests write log lines with `append_log` and end pods with `end_pod`: what a container
prints and how it exits are the test's to choose.
"""

from __future__ import annotations

import datetime
import logging
import threading
from pathlib import Path

from rest import Api, ApiError
from stages import EXIT_CODE, PREPARED

KWOK = "/apis/kwok.x-k8s.io/v1alpha1"
log = logging.getLogger("nodeside")


def pod_dir(root: Path, namespace: str, pod: str) -> Path:
    return root / "pods" / namespace / pod


def log_file(root: Path, namespace: str, pod: str, container: str) -> Path:
    return pod_dir(root, namespace, pod) / f"{container}.log"


def append_log(root: Path, namespace: str, pod: str, container: str, lines: list[str]) -> None:
    """Append lines to a container's log in the CRI format kwok reads (timestamp, stream,
    F for a full line, the text)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with open(log_file(root, namespace, pod, container), "a") as f:
        f.writelines(f"{now} stdout F {line}\n" for line in lines)


def end_pod(api: Api, namespace: str, pod: str, exit_code: int) -> None:
    """Every container of a Running pod terminates with exit_code (kwok's pod-exit stage)."""
    api.merge_patch(f"/api/v1/namespaces/{namespace}/pods/{pod}", {"metadata": {"annotations": {EXIT_CODE: str(exit_code)}}})


class NodeSide:
    def __init__(self, api: Api, root: Path) -> None:
        self.api, self.root = api, root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nodeside", daemon=True)

    def start(self) -> "NodeSide":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.api.request("GET", "/api/v1/pods")
                for pod in listing["items"]:
                    self._prepare(pod)
                for event in self.api.watch("/api/v1/pods", listing["metadata"]["resourceVersion"], timeout_s=60):
                    if self._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._prepare(event["object"])
            except Exception as e:  # the API server restarting, a watch that expired: start over
                if not self._stop.is_set():
                    log.warning("pod watch restarts: %s", e)
                    self._stop.wait(0.5)

    def _prepare(self, pod: dict) -> None:
        md = pod["metadata"]
        if not pod["spec"].get("nodeName") or md.get("deletionTimestamp") or PREPARED in (md.get("annotations") or {}):
            return
        ns, name = md["namespace"], md["name"]
        d = pod_dir(self.root, ns, name)
        d.mkdir(parents=True, exist_ok=True)
        containers = [c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]]
        for c in containers:
            log_file(self.root, ns, name, c).touch()
        owner = [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": md["uid"]}]
        logs = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs", "metadata": {"name": name, "namespace": ns, "ownerReferences": owner},
                "spec": {"logs": [{"containers": [c], "logsFile": str(log_file(self.root, ns, name, c)), "follow": True} for c in containers]}}
        execs = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Exec", "metadata": {"name": name, "namespace": ns, "ownerReferences": owner},
                 "spec": {"execs": [{"local": {"workDir": str(d)}}]}}
        try:
            self.api.create(f"{KWOK}/namespaces/{ns}/logs", logs, exist_ok=True)
            self.api.create(f"{KWOK}/namespaces/{ns}/execs", execs, exist_ok=True)
            self.api.merge_patch(f"/api/v1/namespaces/{ns}/pods/{name}", {"metadata": {"annotations": {PREPARED: "true"}}})
        except ApiError as e:
            if e.status not in (404, 409):  # the pod or its namespace went meanwhile
                raise
