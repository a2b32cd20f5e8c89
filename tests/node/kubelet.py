"""A real kubelet (tests/cluster/build.sh --set node) on the node's containerd
(containerd.sh), as a process of the test session, under the watchdog of processes.py.

Standalone (no API server): it runs the static pods in `<root>/manifests`. Joined: it
registers Node NAME with the API server of a kubeconfig and runs what the scheduler gives
it; the API server reaches it for logs and exec with a serving certificate from the
cluster's CA.

stop() leaves nothing behind: the kubelet's pods are stopped and removed through the CRI
(crictl), its volume mounts unmounted, its process ended.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from processes import Processes
from runtime import containerd
from waiting import wait_for

# The CNI bridge's gateway (containerd.sh): the node's address. The kubelet refuses a
# loopback node IP, and on this address both the API server (on the host) and the pods
# reach it. CoreDNS listens here too.
NODE_IP = os.environ.get("KJOB_NODE_IP", "10.244.0.1")
CLUSTER_DOMAIN = "cluster.local"


class Kubelet:
    def __init__(self, root: Path, bins: Path, *, name: str = "kjob-node", kubeconfig: Path | None = None,
                 client_ca: Path | None = None, serving_cert: tuple[Path, Path] | None = None, port: int = 10250,
                 cluster_dns: str | None = None, labels: dict[str, str] | None = None) -> None:
        self.root, self.bins, self.name = root.resolve(), bins, name
        self.kubeconfig, self.client_ca, self.serving_cert = kubeconfig, client_ca, serving_cert
        self.port, self.cluster_dns, self.labels = port, cluster_dns, labels or {}
        self.manifests = self.root / "manifests"
        self.log = self.root / "kubelet.log"
        self.processes = Processes(self.root, cwd=None)
        self.sock = ""

    # -- CRI ----------------------------------------------------------------------------------------
    def crictl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return subprocess.run([str(self.bins / "crictl"), "--runtime-endpoint", f"unix://{self.sock}", "--timeout", "60s", *args],
                              capture_output=True, text=True, check=check, timeout=timeout).stdout

    def containers(self, **labels: str) -> list[dict]:
        """The CRI containers (all states) whose labels include `labels`."""
        got = json.loads(self.crictl("ps", "-a", "-o", "json") or "{}").get("containers", [])
        return [c for c in got if all(c.get("labels", {}).get(k) == v for k, v in labels.items())]

    def pod_sandboxes(self) -> list[dict]:
        return json.loads(self.crictl("pods", "-o", "json") or "{}").get("items", [])

    # -- start / stop -------------------------------------------------------------------------------
    def _config(self) -> dict:
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            # containerd runs runc with cgroupfs (no systemd here); v1.34 still runs on the
            # cgroup v1 hierarchy when told to.
            "cgroupDriver": "cgroupfs", "failCgroupV1": False,
            "staticPodPath": str(self.manifests), "fileCheckFrequency": "1s", "syncFrequency": "5s",
            "address": NODE_IP, "port": self.port, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": 0,
            "failSwapOn": False,
            "clusterDomain": CLUSTER_DOMAIN, "resolvConf": "/etc/resolv.conf",
            # A shared machine whose disk and memory others use: never evict the test's pods
            # or garbage-collect the multi-GB images that cannot be pulled again.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "podLogsDir": str(self.root / "pod-logs"),
            "shutdownGracePeriod": "0s",
        }
        if self.cluster_dns:
            cfg["clusterDNS"] = [self.cluster_dns]
        if self.kubeconfig:
            cfg["authentication"] = {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                                     "x509": {"clientCAFile": str(self.client_ca)}}
            # The API server (system:masters client certificate) is the only caller.
            cfg["authorization"] = {"mode": "AlwaysAllow"}
            cfg["tlsCertFile"], cfg["tlsPrivateKeyFile"] = map(str, self.serving_cert)
        else:
            cfg["authentication"] = {"anonymous": {"enabled": False}, "webhook": {"enabled": False}}
            cfg["authorization"] = {"mode": "AlwaysAllow"}
        return cfg

    def alive(self) -> None:
        """Raise ProcessDied if the kubelet exited, with the tail of kubelet.log."""
        self.processes.alive()

    def start(self) -> "Kubelet":
        self.sock = containerd()
        self.manifests.mkdir(parents=True, exist_ok=True)
        (self.root / "pod-logs").mkdir(exist_ok=True)
        config = self.root / "kubelet-config.yaml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        argv = [str(self.bins / "kubelet"), f"--config={config}", f"--root-dir={self.root / 'lib'}",
                f"--cert-dir={self.root / 'pki'}", f"--hostname-override={self.name}", f"--node-ip={NODE_IP}", "--v=2"]
        if self.kubeconfig:
            argv.append(f"--kubeconfig={self.kubeconfig}")
            if self.labels:
                argv.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in self.labels.items()))
        self.processes.spawn("kubelet", argv)
        try:
            wait_for("kubelet's CRI sync", lambda: "Starting kubelet main sync loop" in self.log.read_text(errors="replace"),
                     120, alive=self.alive, interval=0.25)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 60) -> None:
        """End the kubelet, then stop and remove every pod it made (through the CRI, so the
        CNI plugin releases their addresses) and unmount what it mounted."""
        self.processes.stop(timeout)
        if self.sock:
            # Only this kubelet's pods: the sandbox name carries the node's pod names, and a
            # node tier runs one kubelet at a time on this containerd.
            for sandbox in self.pod_sandboxes():
                self.crictl("stopp", sandbox["id"], check=False)
                self.crictl("rmp", "--force", sandbox["id"], check=False)
        lib = self.root / "lib"
        if lib.exists():
            # Its volumes, and the root directory itself (the kubelet bind-mounts it onto
            # itself to make it a shared mount).
            mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                      if line.split()[4] == str(lib) or line.split()[4].startswith(str(lib) + "/")]
            for m in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", m], check=False)
