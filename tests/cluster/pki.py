"""The real tiers' certificates and keys, made with the openssl command line (the test
environment has no Python crypto library, and every Debian machine has openssl).

One CA signs everything: the API server's serving certificate, one client certificate in
system:masters that every component and the test's admin kubeconfig use, and kwok's
serving certificate (kwok plays the kubelet, and the API server connects to it for logs
and exec). The service-account key pair signs and checks ServiceAccount tokens. A real
kubelet joining (tests/node) gets its client and serving certificates from the same CA
(node_credentials).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

# Service IP range of the cluster; the API server's Service "kubernetes" takes its first
# address, which its serving certificate must name.
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DAYS = "30"


@dataclass(frozen=True)
class Pki:
    ca_crt: Path
    ca_key: Path
    apiserver_crt: Path
    apiserver_key: Path
    admin_crt: Path
    admin_key: Path
    kwok_crt: Path
    kwok_key: Path
    sa_key: Path
    sa_pub: Path


def _openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()[-500:]}")


def signed(d: Path, name: str, subject: str, ca: tuple[Path, Path], *, usage: str, sans: str | None = None) -> tuple[Path, Path]:
    """A key and a certificate for `subject` signed by ca = (certificate, key), written as
    <d>/<name>.{key,crt}; usage is serverAuth or clientAuth. Raises RuntimeError naming
    the openssl step that failed."""
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    _openssl("genrsa", "-out", str(key), "2048")
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment", f"extendedKeyUsage={usage}"]
    if sans:
        lines.append(f"subjectAltName={sans}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", DAYS, "-sha256", "-extfile", str(ext), "-out", str(crt))
    return crt, key


def make_pki(d: Path) -> Pki:
    """Write every certificate and key under `d` (created). Raises RuntimeError when
    openssl fails."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = d / "ca.key", d / "ca.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
             "-days", DAYS, "-subj", "/CN=kjob-test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    ca = (ca_crt, ca_key)
    names = "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    apiserver = signed(d, "apiserver", "/CN=kube-apiserver", ca, sans=f"IP:127.0.0.1,IP:{KUBERNETES_SERVICE_IP},{names}", usage="serverAuth")
    # system:masters is bound to cluster-admin by the API server's bootstrap RBAC policy.
    admin = signed(d, "admin", "/O=system:masters/CN=kjob-test-admin", ca, usage="clientAuth")
    kwok = signed(d, "kwok", "/CN=kwok", ca, sans="IP:127.0.0.1,DNS:localhost", usage="serverAuth")
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"
    _openssl("genrsa", "-out", str(sa_key), "2048")
    _openssl("rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    return Pki(ca_crt, ca_key, *apiserver, *admin, *kwok, sa_key, sa_pub)


def write_kubeconfig(path: Path, *, server: str, ca_crt: Path, user: dict, name: str, namespace: str = "default") -> Path:
    """A kubeconfig of one context `name` (cluster kjob-test, user `name`): `user` holds
    client-certificate/client-key or a token."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": "kjob-test", "cluster": {"server": server, "certificate-authority": str(ca_crt)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "kjob-test", "user": name, "namespace": namespace}}],
    }, sort_keys=False))
    return path


def node_credentials(d: Path, *, name: str, node_ip: str, server: str, ca: tuple[Path, Path]) -> tuple[Path, tuple[Path, Path]]:
    """What a kubelet needs to join as Node `name`: a kubeconfig with its client
    certificate (system:node:NAME in system:nodes, as the Node authorizer expects) and its
    serving certificate (the API server verifies it for logs and exec). Written under `d`;
    returns (kubeconfig, (serving certificate, key))."""
    d.mkdir(parents=True, exist_ok=True)
    client_crt, client_key = signed(d, "kubelet-client", f"/O=system:nodes/CN=system:node:{name}", ca, usage="clientAuth")
    serving = signed(d, "kubelet-serving", f"/CN={name}", ca, usage="serverAuth", sans=f"IP:{node_ip},DNS:{name}")
    user = {"client-certificate": str(client_crt), "client-key": str(client_key)}
    return write_kubeconfig(d / "kubelet.kubeconfig", server=server, ca_crt=ca[0], user=user, name="node"), serving
