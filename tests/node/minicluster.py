"""The smallest real control plane a joined kubelet needs, until the tier of the control
plane issue (tests/cluster/controlplane.py) can run without kwok managing every node:
etcd, kube-apiserver (TLS, Node+RBAC authorization, default admission with Pod
Security), kube-controller-manager (PV binding, EndpointSlices, ServiceAccounts) and
kube-scheduler, built by tests/cluster/build.sh at the pinned release."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import requests
import yaml

from joined import _openssl, _signed
from kubelet import wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_bins() -> Path:
    out = subprocess.run(["bash", str(REPO / "tests" / "cluster" / "build.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1]) / "bin"


class MiniCluster:
    def __init__(self, root: Path, bins: Path) -> None:
        self.root, self.bins = root, bins
        self.procs: dict[str, subprocess.Popen] = {}
        self.pki = root / "pki"
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = root / "admin.kubeconfig"

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.root / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True, cwd=self.root)

    def alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}: " + (self.root / f"{name}.log").read_text(errors="replace")[-3000:])

    def _make_pki(self) -> None:
        d = self.pki
        d.mkdir(parents=True)
        self.ca_crt, self.ca_key = d / "ca.crt", d / "ca.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.ca_key), "-out", str(self.ca_crt), "-days", "30",
                 "-subj", "/CN=kjob-node-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
        self.apiserver = _signed(d, "apiserver", "/CN=kube-apiserver", self.ca_crt, self.ca_key, usage="serverAuth",
                                 sans="IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes.default.svc")
        self.admin = _signed(d, "admin", "/O=system:masters/CN=kjob-test-admin", self.ca_crt, self.ca_key, usage="clientAuth")
        self.sa_key, self.sa_pub = d / "sa.key", d / "sa.pub"
        _openssl("genrsa", "-out", str(self.sa_key), "2048")
        _openssl("rsa", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub))

    def start(self) -> "MiniCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_pki()
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "admin",
            "clusters": [{"name": "c", "cluster": {"server": self.server, "certificate-authority": str(self.ca_crt)}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(self.admin[0]), "client-key": str(self.admin[1])}}],
            "contexts": [{"name": "admin", "context": {"cluster": "c", "user": "admin", "namespace": "default"}}],
        }))
        b, etcd, peer = self.bins, free_port(), free_port()
        try:
            self._spawn("etcd", [str(b / "etcd"), "--data-dir", str(self.root / "etcd"), "--unsafe-no-fsync", "--log-level", "warn",
                                 "--listen-client-urls", f"http://127.0.0.1:{etcd}", "--advertise-client-urls", f"http://127.0.0.1:{etcd}",
                                 "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                                 "--initial-cluster", f"default=http://127.0.0.1:{peer}"])
            self._spawn("kube-apiserver", [
                str(b / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd}", "--bind-address=127.0.0.1",
                f"--secure-port={self.port}", "--advertise-address=127.0.0.1",
                f"--tls-cert-file={self.apiserver[0]}", f"--tls-private-key-file={self.apiserver[1]}", f"--client-ca-file={self.ca_crt}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.sa_pub}", f"--service-account-signing-key-file={self.sa_key}",
                "--service-cluster-ip-range=10.96.0.0/16", "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={self.admin[0]}", f"--kubelet-client-key={self.admin[1]}",
                f"--kubelet-certificate-authority={self.ca_crt}", "--kubelet-preferred-address-types=InternalIP",
                "--endpoint-reconciler-type=none", "--profiling=false"])
            wait_for("kube-apiserver /readyz", self._ready, 120, alive=self.alive)
            kc = str(self.kubeconfig)
            common = [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                      "--bind-address=127.0.0.1", "--leader-elect=false"]
            self._spawn("kube-controller-manager", [str(b / "kube-controller-manager"), *common, f"--secure-port={free_port()}",
                                                    f"--service-account-private-key-file={self.sa_key}", f"--root-ca-file={self.ca_crt}",
                                                    "--use-service-account-credentials=true"])
            self._spawn("kube-scheduler", [str(b / "kube-scheduler"), *common, f"--secure-port={free_port()}"])
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        # verify= on the call itself: a session's verify loses to REQUESTS_CA_BUNDLE.
        with requests.Session() as session:
            return session.get(self.server + "/readyz", verify=str(self.ca_crt), cert=tuple(map(str, self.admin)), timeout=5).status_code == 200

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
