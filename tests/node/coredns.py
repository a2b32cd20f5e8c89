"""CoreDNS for the joined kubelet, so that the headless Services the operators make
resolve inside the pods. (The kubelet's certificates: tests/cluster/pki.py
node_credentials.)"""

from __future__ import annotations

import socket
from pathlib import Path

from kubelet import CLUSTER_DOMAIN, NODE_IP
from processes import Processes
from waiting import wait_for


class CoreDNS:
    """CoreDNS on the node's address, port 53: the pods' nameserver (clusterDNS). It
    answers cluster.local from the API server (headless Services, pod hostnames) and
    forwards the rest to this machine's resolver."""

    def __init__(self, root: Path, binary: Path, kubeconfig: Path) -> None:
        self.root, self.binary, self.kubeconfig = root, binary, kubeconfig
        self.processes = Processes(root, cwd=root)  # its log: <root>/coredns.log

    def alive(self) -> None:
        """Raise ProcessDied if CoreDNS exited, with its log's tail."""
        self.processes.alive()

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
        self.processes.spawn("coredns", [str(self.binary), "-conf", str(corefile)])

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
        self.processes.stop()
