"""What a trainer pod may ask for a fast network between nodes (InfiniBand, RoCE, SR-IOV),
checked as the API server would: extended resources (`rdma/hca`, `nvidia.com/hostdev`,
...), a few added capabilities, pod annotations (Multus), the host network.

Each single-value check returns the value or raises ValueError with the message the user
sees after `FILE:LINE:COL: field.path:`.
"""

from __future__ import annotations

import re

from kjob.spec.quantity import parse_quantity

# Capabilities a spec may add to the trainer containers (every other one stays dropped).
# IPC_LOCK: pin registered memory (RDMA) beyond RLIMIT_MEMLOCK; SYS_RESOURCE: raise that
# limit. Pod Security "baseline" and "restricted" refuse both.
ALLOWED_CAPABILITIES = ("IPC_LOCK", "SYS_RESOURCE")
# The GPUs come from gpusPerWorker, which also sizes slots, -np and the pod.
GPU_RESOURCE = "nvidia.com/gpu"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_PREFIX_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def check_extended_resource(key: str) -> str:
    """A resource name beside cpu and memory: `<domain>/<name>` outside kubernetes.io, as
    Kubernetes' IsExtendedResourceName wants it."""
    prefix, slash, name = key.partition("/")
    if not slash or not prefix:
        raise ValueError(f"{key!r} is not a resource kjob sets: cpu, memory, or an extended resource "
                         "'<domain>/<name>' (e.g. rdma/hca, nvidia.com/hostdev)")
    if len(prefix) > 253 or not _PREFIX_RE.match(prefix) or len(name) > 63 or not _NAME_RE.match(name):
        raise ValueError(f"{key!r} is not a valid extended resource name ('<domain>/<name>', a DNS domain, a name "
                         "of letters, digits, '-', '_', '.')")
    if prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io") or prefix.startswith("requests."):
        raise ValueError(f"{key!r}: the kubernetes.io domain holds native resources, not extended ones")
    if key == GPU_RESOURCE:
        raise ValueError(f"{key!r} comes from gpusPerWorker")
    return key


def check_extended_quantity(value: str) -> str:
    number = parse_quantity(value)
    if number <= 0 or number != number.to_integral_value():
        raise ValueError(f"{value!r}: an extended resource is a whole number of devices, greater than zero")
    return value


def check_capability(value: str) -> str:
    name = value.upper().removeprefix("CAP_")
    if name not in ALLOWED_CAPABILITIES or value != name:
        hint = f" (write {name})" if name in ALLOWED_CAPABILITIES else ""
        raise ValueError(f"{value!r} is not one kjob adds{hint}: allowed are {', '.join(ALLOWED_CAPABILITIES)}")
    return value


def extended_resources_problems(requests: dict[str, str], limits: dict[str, str]) -> list[tuple[tuple, str]]:
    """Kubernetes does not overcommit extended resources: a request needs an equal limit."""
    out = []
    for key, value in requests.items():
        if key not in limits:
            out.append((("resources", "requests", key), "an extended resource needs the same value in limits "
                        "(Kubernetes does not overcommit devices); or give it in limits only"))
        elif parse_quantity(limits[key]) != parse_quantity(value):
            out.append((("resources", "limits", key), f"{limits[key]} differs from requests ({value}); an extended "
                        "resource's request and limit are equal"))
    return out
