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
    """Every container of a Running pod exits with exit_code, and then what a kubelet does:
    under restartPolicy Never, or OnFailure with code 0, the pod terminates (kwok's
    pod-exit stage: Succeeded for 0, else Failed); under OnFailure (what kjob renders) or
    Always with another code, the containers restart in place (restart_containers)."""
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
    policy = api.get(path)["spec"].get("restartPolicy", "Always")
    if policy == "Always" or (policy == "OnFailure" and exit_code != 0):
        restart_containers(api, namespace, pod, exit_code)
        return
    api.merge_patch(path, {"metadata": {"annotations": {EXIT_CODE: str(exit_code)}}})


def restart_containers(api: Api, namespace: str, pod: str, exit_code: int) -> None:
    """A kubelet restarting a pod's exited containers: restartCount + 1, lastState the
    exit, running again; the phase stays Running. (Written as the kubelet writes it, to
    the status; kwok's stages act only on Pending pods and on EXIT_CODE.)"""
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    statuses = []
    for c in api.get(path)["status"]["containerStatuses"]:
        started = c["state"].get("running", {}).get("startedAt", now)
        statuses.append({**c, "restartCount": c.get("restartCount", 0) + 1, "ready": True, "started": True,
                         "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error", "startedAt": started, "finishedAt": now}},
                         "state": {"running": {"startedAt": now}}})
    api.merge_patch(path + "/status", {"status": {"containerStatuses": statuses}})


WATCH_S = 5  # each watch of pods ends after this, so stop() is quick


class NodeSide:
    def __init__(self, api: Api, root: Path) -> None:
        self.api, self.root = api, root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nodeside", daemon=True)

    def start(self) -> "NodeSide":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the watch thread: its watches last WATCH_S, so it notices within that; the
        thread closes its own connection (a socket left to the garbage collector warns)."""
        self._stop.set()
        self._thread.join(WATCH_S + 15)

    def _run(self) -> None:
        version = None  # where the last watch ended; None: list everything again
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = self.api.request("GET", "/api/v1/pods")
                    for pod in listing["items"]:
                        self._prepare(pod)
                    version = listing["metadata"]["resourceVersion"]
                events = self.api.watch("/api/v1/pods", version, timeout_s=WATCH_S)
                try:
                    for event in events:
                        if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old
                            raise RuntimeError(event["object"].get("message", "watch error"))
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._prepare(event["object"])
                        version = event["object"]["metadata"].get("resourceVersion", version)
                        if self._stop.is_set():
                            return
                finally:
                    events.close()  # closes the connection now, not whenever the generator is collected
            except Exception as e:  # the API server restarting, a watch that expired: start over
                version = None
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
