"""The real control plane of tests/cluster for the benchmarks: started here (and stopped
after), or one already running from `python tests/cluster/controlplane.py up --dir DIR`
(`--cluster DIR`), so that several benchmarks share one start and one turn of the
machine's control-plane lock."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]


class Running:
    """What the benchmarks use of a control plane: its admin REST client, its root folder
    (pods/<ns>/<pod>/, checkpoints/) and kubeconfigs for a namespace."""

    def __init__(self, api, root: Path, admin_kubeconfig: Path) -> None:
        self.api, self.root, self.admin_kubeconfig = api, root, admin_kubeconfig

    def kubeconfig_for(self, path: Path, namespace: str) -> Path:
        cfg = yaml.safe_load(self.admin_kubeconfig.read_text())
        for ctx in cfg["contexts"]:
            ctx["context"]["namespace"] = namespace
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path


@contextmanager
def control_plane(cluster_dir: str | None, *, with_operators: bool, **plane_args) -> Iterator[Running]:
    """plane_args (kwok_nodes, extra_args, ...) go to the ControlPlane started here; a running
    one (cluster_dir) is taken as it is."""
    from controlplane import ControlPlane, build_dir
    from rest import Api

    if cluster_dir:
        d = Path(cluster_dir).resolve()
        cfg = yaml.safe_load((d / "kubeconfig").read_text())
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        yield Running(Api(cluster["server"], cluster["certificate-authority"], user["client-certificate"], user["client-key"]),
                      d / "plane", d / "kubeconfig")
        return
    with tempfile.TemporaryDirectory(prefix="kjob-bench-plane-") as tmp:
        plane = ControlPlane(Path(tmp) / "plane", build_dir(), with_operators=with_operators, **plane_args)
        plane.start()
        try:
            yield Running(plane.api, plane.root, plane.kubeconfig)
        finally:
            plane.stop()


def fresh_namespace(api, name: str) -> None:
    """Delete `name` if a previous run left it, then create it."""
    from waiting import wait_for

    if api.get(f"/api/v1/namespaces/{name}"):
        api.delete(f"/api/v1/namespaces/{name}")
        wait_for(f"namespace {name} gone", lambda: api.get(f"/api/v1/namespaces/{name}") is None, 120, interval=0.5)
    api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    wait_for(f"default ServiceAccount in {name}", lambda: api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 60)
