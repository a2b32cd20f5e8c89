"""Shared pieces of the fetch-ckpt tests and bench: a checkpoint folder as the trainer
writes it (kjob_trainer.common.checkpoints), a job object with the annotations kjob renders, and a kubelet
thread that starts kjob's helper pods."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

CLAIM = "ckpt-pvc"
MOUNT = "/ckpt"


def write_checkpoints(folder: Path, sizes: list[int], *, seed: int = 0) -> dict:
    """Write epoch-000N.pt files of `sizes` bytes (pseudo-random) and index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB, cheap to repeat
    for i, size in enumerate(sizes, start=1):
        name = f"epoch-{i:04d}.pt"
        h = hashlib.sha256()
        with open(folder / name, "wb") as f:
            left, n = size, 0
            while left > 0:
                # Vary each block so a swapped or repeated block changes the hash.
                chunk = (n.to_bytes(8, "little") + block)[: min(len(block), left)]
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
                n += 1
        entries.append({"file": name, "epoch": i, "step": 100 * i, "bytes": size, "sha256": h.hexdigest(),
                        "metrics": {"top1": 10.0 + i, "top5": 30.0 + i, "loss": 3.0 - 0.1 * i},
                        "time": f"2026-11-23T04:0{i % 10}:00Z"})
    index = {"format": "kjob-checkpoints/v1", "framework": "pytorch", "model": "resnext50_32x4d",
             "latest": entries[-1]["file"] if entries else None,
             "best": entries[len(entries) // 2]["file"] if entries else None, "checkpoints": entries}
    (folder / "index.json").write_text(json.dumps(index))
    return index


def mpijob(name: str, namespace: str = "default", *, image: str = "ghcr.io/example/kjob-trainer:1") -> dict:
    """An MPIJob as kjob renders it, reduced to what fetch-ckpt reads: the annotations
    and the pod templates that mount the checkpoint claim."""
    def template(command):
        return {"spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "containers": [{"name": "trainer", "image": image, "command": command,
                            "volumeMounts": [{"name": "checkpoints", "mountPath": MOUNT}]}],
            "volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": CLAIM}}]}}

    return {
        "apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "kjob", "app.kubernetes.io/name": "kjob",
                                "app.kubernetes.io/instance": name},
                     "annotations": {"kjob.dev/checkpoint-claim": CLAIM, "kjob.dev/output-path": f"{MOUNT}/{name}"}},
        "spec": {"slotsPerWorker": 1, "runPolicy": {"cleanPodPolicy": "Running"},
                 "mpiReplicaSpecs": {
                     "Launcher": {"replicas": 1, "template": template(["mpirun", "python", "-m", "kjob_trainer.train"])},
                     "Worker": {"replicas": 1, "template": template(["/usr/sbin/sshd", "-De"])}}},
    }


def create_job(kube, job: dict) -> dict:
    """Create the job through the real client (as `kjob submit` would) and return it."""
    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(kube.kubeconfig))
    group, version = job["apiVersion"].split("/")
    return api.create_namespaced_custom_object(group, version, job["metadata"].get("namespace") or "default", "mpijobs", job)


def helper_pods(kube, job: str) -> list[dict]:
    return [p for p in kube.list("Pod") if (p["metadata"].get("labels") or {}).get("kjob.dev/helper-for") == job]


class HelperKubelet:
    """Plays the kubelet for kjob's helper pods: each one that appears is made Running
    (after `delay` seconds), and every helper pod ever seen is remembered."""

    def __init__(self, kube, job: str, *, delay: float = 0.0, start: bool = True) -> None:
        self.kube, self.job, self.delay, self.start = kube, job, delay, start
        self.seen: set[str] = set()
        self.manifests: list[dict] = []  # each helper pod as first seen on the server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HelperKubelet":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        started: set[str] = set()
        while not self._stop.is_set():
            for pod in helper_pods(self.kube, self.job):
                name = pod["metadata"]["name"]
                if name not in self.seen:
                    self.manifests.append(pod)
                self.seen.add(name)
                if self.start and name not in started and pod.get("status", {}).get("phase") != "Running":
                    if self.delay:
                        time.sleep(self.delay)
                    self.kube.pod_running(name)
                    started.add(name)
            time.sleep(0.02)


def kjob_env(kube) -> dict:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kube.kubeconfig)
    return env
