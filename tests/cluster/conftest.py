"""Fixtures of the real-control-plane tier (marker `cluster`).

`control_plane` starts the whole control plane once per test session (controlplane.py);
`real` gives each test its own namespace on it, with the checkpoint claim kjob's
examples mount, and KUBECONFIG pointing at that namespace. `trainer_v2` adds Kubeflow
Trainer v2 and JobSet to that control plane (trainer_v2.py); the tests that use it, or
only the trainer set's build (`trainer_build`), run last in the session, so that make
test's background build of the set has time to finish (their fixture waits for it).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builds import build_dir  # noqa: E402
from controlplane import CLAIMS, ControlPlane, create_bound_claims, pv_name  # noqa: E402
from kueue import Kueue  # noqa: E402
from nodeside import append_log, end_pod, pod_dir  # noqa: E402
from rest import Api  # noqa: E402
from stages import NODE_CAPACITY  # noqa: E402
from waiting import wait_for  # noqa: E402

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
_startup: list[tuple[str, float]] = []


# Fixtures that need the trainer set's build (build.sh --set trainer); `trainer_v2` uses
# `trainer_build`, test_argocd_lua.py's `lua_health` may wait for the build.
NEEDS_TRAINER_SET = {"trainer_build", "lua_health"}
NEEDS_KUEUE_SET = {"kueue", "kueue_build"}
# The first test that needs a set may wait in its setup for make test's background build
# of it (build.sh's build lock): on a fresh machine Kueue's set ended 14 minutes after the
# trainer set's, and a 300 s timeout ended the test that waited. Their timeouts get this much more.
SET_BUILD_WAIT_S = 1200


def pytest_collection_modifyitems(items):
    """Tests that need the trainer set last, in their order, and those that use Kueue after
    them; every other test keeps its place (this hook sees the whole session's items: a
    stable sort moves only these). Kueue starts into the session's control plane when the
    first of its tests asks, and its webhooks then see every MPIJob, PyTorchJob (and
    TrainJob) created: it acts only on those with a queue label, but a test of the plain
    cluster should not depend on that."""
    def rank(item) -> tuple[bool, bool]:
        fixtures = set(getattr(item, "fixturenames", ()))
        return bool(NEEDS_KUEUE_SET & fixtures), bool(NEEDS_TRAINER_SET & fixtures)
    items.sort(key=rank)
    for item in items:
        marker = item.get_closest_marker("timeout")
        if any(rank(item)) and marker is not None and marker.args:
            item.add_marker(pytest.mark.timeout(marker.args[0] + SET_BUILD_WAIT_S), append=False)


def pytest_terminal_summary(terminalreporter):
    for what, seconds in _startup:
        terminalreporter.write_line(f"{what}: started in {seconds:.1f} s")


@pytest.fixture(scope="session")
def cluster_build() -> Path:
    """The folder of the control plane's binaries and CRDs (build.sh, cached); without root
    or Go a skip saying so (a failure under CI)."""
    missing = [why for why, lacking in (("root (kwok runs in its own PID namespace: unshare)", os.geteuid() != 0),
                                         ("Go (the binaries are built from the Go module proxy)", shutil.which("go") is None)) if lacking]
    if missing:
        why = "the real control plane needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must run this tier")
        pytest.skip(why)
    return build_dir()


@pytest.fixture(scope="session")
def trainer_build(cluster_build) -> Path:
    """The folder of Trainer v2, JobSet, the Lua runner and their CRDs (build.sh --set
    trainer): cached, or waited for while make test's background build makes it, or built."""
    return build_dir("trainer")


@pytest.fixture(scope="session")
def kueue_build(cluster_build) -> Path:
    """The folder of Kueue (build.sh --set kueue): cached, or waited for while make test's
    background build makes it, or built."""
    return build_dir("kueue")


@pytest.fixture(scope="session")
def control_plane(cluster_build, tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), cluster_build)
    plane.start()
    _startup.append(("real control plane", plane.startup_s))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def trainer_v2(control_plane, trainer_build):
    """The session's control plane with Trainer v2 and JobSet running, their CRDs
    installed and their webhooks answering; they stop with the plane."""
    t0 = time.monotonic()
    control_plane.start_trainer(trainer_build)
    _startup.append(("Trainer v2 and JobSet", time.monotonic() - t0))
    return control_plane


class RealCluster:
    """One test's view of the control plane: its namespace, kubeconfig and the node side."""

    def __init__(self, plane: ControlPlane, namespace: str, kubeconfig: Path) -> None:
        self.plane, self.ns, self.kubeconfig = plane, namespace, kubeconfig
        self.api: Api = plane.api
        self.root = plane.root

    def path(self, plural: str, name: str = "", *, group: str = "") -> str:
        base = f"/apis/{group}" if group else "/api/v1"
        return f"{base}/namespaces/{self.ns}/{plural}" + (f"/{name}" if name else "")

    def pods(self, job: str) -> list[dict]:
        return self.api.items(self.path("pods"), labelSelector=f"{JOB_NAME_LABEL}={job}")

    def wait_pods(self, job: str, count: int, phase: str = "Running", timeout: float = 60) -> list[dict]:
        """The job's pods, once `count` of them are in `phase` (sorted by name)."""
        def ready():
            pods = [p for p in self.pods(job) if p.get("status", {}).get("phase") == phase and not p["metadata"].get("deletionTimestamp")]
            return sorted(pods, key=lambda p: p["metadata"]["name"]) if len(pods) >= count else None
        try:
            return wait_for(f"{count} {phase} pods of {job}", ready, timeout, interval=0.2)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; {self.describe(job)}") from None

    def describe(self, job: str) -> str:
        """What the job's pods and the namespace's events say (for a timeout's message)."""
        pods = [f"{p['metadata']['name']} {p.get('status', {}).get('phase')} on {p['spec'].get('nodeName')}"
                + "".join(f" [{c['type']}={c['status']} {c.get('message', '')}]" for c in p.get("status", {}).get("conditions", [])
                          if c["status"] != "True") for p in self.pods(job)]
        events = [f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['reason']} {e.get('message', '')}"
                  for e in self.api.items(self.path("events"))][-12:]
        return "pods: " + ("; ".join(pods) or "none") + " | events: " + " | ".join(events)

    def pod(self, job: str, role_prefix: str, timeout: float = 60) -> str:
        """The name of the job's Running pod whose name starts with <job>-<role_prefix>."""
        def find():
            names = [p["metadata"]["name"] for p in self.pods(job) if p["metadata"]["name"].startswith(f"{job}-{role_prefix}")
                     and p.get("status", {}).get("phase") == "Running"]
            return names[0] if names else None
        return wait_for(f"pod {job}-{role_prefix}*", find, timeout, interval=0.2)

    def append_log(self, pod: str, lines: list[str], container: str | None = None) -> None:
        obj = self.api.get(self.path("pods", pod))
        append_log(self.root, self.ns, pod, container or obj["spec"]["containers"][0]["name"], lines)

    def end_pod(self, pod: str, exit_code: int) -> None:
        end_pod(self.api, self.ns, pod, exit_code)

    def pod_dir(self, pod: str) -> Path:
        return pod_dir(self.root, self.ns, pod)

    def checkpoints(self) -> Path:
        """What an exec'd command sees at /checkpoints (any checkpoint claim's mount path)."""
        return self.root / "checkpoints"

    def signals(self) -> list[str]:
        """What the stand-in PID 1 of exec'd commands has received (pid1.py)."""
        return self.plane.signals.read_text().splitlines() if self.plane.signals.exists() else []

    def job(self, kind_plural: str, name: str, version: str) -> dict | None:
        return self.api.get(self.path(kind_plural, name, group=f"kubeflow.org/{version}"))

    def wait_job_condition(self, kind_plural: str, name: str, version: str, condition: str, timeout: float = 60) -> dict:
        """The job once its operator has set `condition` True; the operator writes it a
        reconcile after the pods change, which under load is seconds after they do."""
        def met():
            job = self.job(kind_plural, name, version) or {}
            conds = job.get("status", {}).get("conditions", [])
            return job if any(c["type"] == condition and c["status"] == "True" for c in conds) else None
        return wait_for(f"{kind_plural}/{name} {condition}", met, timeout, interval=0.2)


_counter = itertools.count(1)


@pytest.fixture
def real(control_plane, request, tmp_path, monkeypatch):
    """A fresh namespace with a bound `kjob-checkpoints` claim; KUBECONFIG points at it
    (admin credentials) and kjob's polls are made fast. The namespace is deleted after."""
    api = control_plane.api
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    ns = f"t{next(_counter)}-{slug}"
    api.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    create_bound_claims(api, ns)
    wait_for(f"default ServiceAccount in {ns}", lambda: api.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default"), 30)
    wait_for(f"claims bound in {ns}", lambda: all(
        (api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{c}") or {}).get("status", {}).get("phase") == "Bound"
        for c in CLAIMS), 30, interval=0.2)
    kubeconfig = control_plane.kubeconfig_for(tmp_path / "real-kubeconfig", namespace=ns)  # not "kubeconfig": the fake's `kube` fixture writes that one
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("KJOB_POLL_SECONDS", "0.2")
    monkeypatch.setenv("KJOB_RETRY_BACKOFF", "0.05")
    try:
        yield RealCluster(control_plane, ns, kubeconfig)
    finally:
        api.delete(f"/api/v1/namespaces/{ns}")
        for claim in CLAIMS:
            api.delete(f"/api/v1/persistentvolumes/{pv_name(ns, claim)}")



@pytest.fixture(scope="session")
def kueue(trainer_v2, kueue_build) -> Kueue:
    """Kueue v0.19.2 (build.sh --set kueue) running in the session's control plane, with a
    ResourceFlavor of the kwok nodes and the ClusterQueue kueue.CLUSTER_QUEUE whose quota
    is what those nodes hold (nvidia.com/gpu, cpu, memory). Stopped with the control plane.
    Trainer v2 runs first: Kueue turns on its TrainJob integration only when the TrainJob
    CRD is there when it starts."""
    control_plane = trainer_v2
    running = Kueue(control_plane, kueue_build).start()
    quota = {r: _times(NODE_CAPACITY[r], control_plane.kwok_nodes) for r in ("cpu", "memory", "nvidia.com/gpu")}
    running.create_queues(quota)
    try:
        yield running
    finally:
        running.stop()


def _times(quantity: str, n: int) -> str:
    """"512Gi" x 2 = "1024Gi" (the node capacities here are whole numbers with a suffix)."""
    number, unit = re.fullmatch(r"(\d+)(\D*)", quantity).groups()
    return f"{int(number) * n}{unit}"


@pytest.fixture
def local_queue(real, kueue) -> str:
    """A LocalQueue of the test's namespace on kueue.CLUSTER_QUEUE; returns its name. The
    test's jobs are deleted after it, and their Workloads waited out: the namespace goes
    later (the namespace controller is slow with many namespaces to empty), and a Workload
    left in the ClusterQueue would hold the next test's quota."""
    kueue.wait_idle()
    kueue.create_local_queue(real.ns, "team")
    yield "team"
    kueue.clear(real.ns)
