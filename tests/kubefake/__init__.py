"""A small Kubernetes API server for tests (real HTTP, real `kubernetes` client).

`server.FakeServer` serves discovery, CRUD/list/watch, pod logs and access reviews;
`simulator.KubeHandle` is what the `kube` fixture (tests/conftest.py) yields. Pod exec
for fetch-ckpt lives in `exec.py` (see server.INSTALLERS).
"""

from .server import FakeServer
from .simulator import KubeHandle

__all__ = ["FakeServer", "KubeHandle"]
