"""The control plane's ports (controlplane.free_port) come from below the kernel's
ephemeral range, so no outgoing connection of the plane can take one before its
component listens on it; and a port something holds is never handed out."""

from __future__ import annotations

import socket
from pathlib import Path

from controlplane import free_port


def test_free_ports_are_below_the_ephemeral_range_and_free():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        ports = [free_port() for _ in range(2000)]
        assert all(1024 <= p < low for p in ports), ports
        assert held.getsockname()[1] not in ports
        for port in ports[:50]:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # free when handed out (nothing listens on them here)
