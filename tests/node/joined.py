"""What a kubelet needs to join a control plane whose CA this test holds: its client
certificate (system:node:NAME in system:nodes, as the Node authorizer expects) and its
serving certificate (the API server verifies it for logs and exec); and CoreDNS, so that
the headless Services the operators make resolve inside the pods."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import yaml

from kubelet import CLUSTER_DOMAIN, NODE_IP, wait_for


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(d: Path, name: str, subject: str, ca_crt: Path, ca_key: Path, *, usage: str, sans: str | None = None) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment", f"extendedKeyUsage={usage}"]
    if sans:
        lines.append(f"subjectAltName={sans}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "30", "-sha256", "-extfile", str(ext), "-out", str(crt))
    return crt, key


def node_credentials(d: Path, *, name: str, server: str, ca_crt: Path, ca_key: Path) -> tuple[Path, tuple[Path, Path]]:
    """Write the node's kubeconfig and serving certificate under `d`; returns both."""
    d.mkdir(parents=True, exist_ok=True)
    client_crt, client_key = _signed(d, "kubelet-client", f"/O=system:nodes/CN=system:node:{name}", ca_crt, ca_key, usage="clientAuth")
    serving = _signed(d, "kubelet-serving", f"/CN={name}", ca_crt, ca_key, usage="serverAuth", sans=f"IP:{NODE_IP},DNS:{name}")
    kubeconfig = d / "kubelet.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": str(ca_crt)}}],
        "users": [{"name": "node", "user": {"client-certificate": str(client_crt), "client-key": str(client_key)}}],
        "contexts": [{"name": "node", "context": {"cluster": "c", "user": "node"}}],
    }, sort_keys=False))
    return kubeconfig, serving


class CoreDNS:
    """CoreDNS on the node's address, port 53: the pods' nameserver (clusterDNS). It
    answers cluster.local from the API server (headless Services, pod hostnames) and
    forwards the rest to this machine's resolver."""

    def __init__(self, root: Path, binary: Path, kubeconfig: Path) -> None:
        self.root, self.binary, self.kubeconfig = root, binary, kubeconfig
        self.proc: subprocess.Popen | None = None
        self.log = root / "coredns.log"

    def alive(self) -> None:
        if self.proc and self.proc.poll() is not None:
            raise RuntimeError(f"coredns exited with {self.proc.returncode}: {self.log.read_text(errors='replace')[-3000:]}")

    def start(self) -> "CoreDNS":
        self.root.mkdir(parents=True, exist_ok=True)
        corefile = self.root / "Corefile"
        corefile.write_text(f"""\
.:53 {{
    bind {NODE_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 1
    }}
    forward . /etc/resolv.conf
}}
""")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(self.binary), "-conf", str(corefile)], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)

        def answers():
            # Any well-formed answer to a query for the API server's Service name will do.
            q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
                bytes([len(p)]) + p.encode() for p in f"kubernetes.default.svc.{CLUSTER_DOMAIN}".split(".")) + b"\x00\x00\x01\x00\x01"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1)
                s.sendto(q, (NODE_IP, 53))
                return s.recv(512)[:2] == b"\x12\x34"
        wait_for("coredns answers", answers, 60, alive=self.alive)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
