"""A real Kubernetes control plane as processes on 127.0.0.1, for the tests and for people.

    python tests/cluster/controlplane.py up   [--dir .cluster]   # start in the background
    python tests/cluster/controlplane.py down [--dir .cluster]   # stop, nothing left running

`make cluster-up` / `make cluster-down` run these; `up` prints how to point kjob at it.

What runs (binaries from build.sh, at the versions pinned in tools/*/go.mod):
etcd; kube-apiserver (TLS, client certificates, service-account keys, Node,RBAC
authorization); kube-controller-manager (controllers with their own service-account
credentials, the root CA published to every namespace); kube-scheduler; kwok, the
controller of NODE_COUNT simulated nodes, in its own PID and mount namespace (pid1.py);
mpi-operator (MPIJob kubeflow.org/v2beta1); training-operator with only its PyTorchJob
controller. Kubeflow Trainer v2 and JobSet, with their webhooks, join on request
(start_trainer, trainer_v2.py; `make cluster-up` starts them when their set is built).
Every wait is on a condition (a readiness endpoint, a CRD Established, a node
Ready, a leader lease), never a fixed sleep; every timeout is multiplied by
KJOB_TEST_TIME_SCALE (a float, default 1) for slow machines.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from builds import build_dir, cached_dir, hold  # noqa: E402
from nodeside import NodeSide  # noqa: E402
from pki import SERVICE_CIDR, make_pki, write_kubeconfig  # noqa: E402
from processes import ProcessDied, Processes  # noqa: E402
from rest import Api, ApiError  # noqa: E402
from stages import NODE_COUNT, kwok_config  # noqa: E402
from waiting import time_scale, wait_for  # noqa: E402

import trainer_v2  # noqa: E402

# Names the tests and bench/ import from here.
__all__ = ["CLAIMS", "ControlPlane", "ProcessDied", "build_dir", "create_bound_claims", "pv_name", "time_scale", "wait_for"]
# The claims kjob's examples mount; each test namespace gets them, bound (conftest.py).
CLAIMS = ("kjob-checkpoints", "kjob-checkpoints-rwx", "imagenet")


def pv_name(namespace: str, claim: str) -> str:
    return f"{namespace}-{claim}"[:63].rstrip("-")


def create_bound_claims(api, namespace: str, claims=CLAIMS) -> None:
    """Each claim with a PersistentVolume bound ahead to it: the scheduler places a pod only
    once its claim is bound. kwok mounts nothing; exec sees <root>/checkpoints at
    /checkpoints (the tests' namespaces and bench/ use these)."""
    for claim in claims:
        pv = pv_name(namespace, claim)
        api.create("/api/v1/persistentvolumes", {
            "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": f"/nonexistent/{claim}"},
                     "claimRef": {"namespace": namespace, "name": claim}}})
        api.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv, "resources": {"requests": {"storage": "100Gi"}}}})
# Where the examples mount their checkpoint claim: exec'd commands (fetch-ckpt's tar, its
# index read) see <root>/checkpoints there, inside kwok's mount namespace only.
CHECKPOINT_MOUNT = "/checkpoints"
# mpi-operator's health port is a constant (cmd/mpi-operator/app/server.go healthCheckPort,
# 8080 on every address): build.sh moves it to any free port, so clusters can run side by
# side (two test sessions, a `make cluster-up` beside one).
OPERATOR_NAMESPACES = ("mpi-operator", "kubeflow")
# training-operator reads its webhook certificates from here, a path fixed in its source
# (pkg/cert/cert.go certDir). It runs in a mount namespace of its own where this path is
# the control plane's <root>/training-operator-certs, so clusters do not share it.
TRAINING_OPERATOR_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")


def free_port() -> int:
    """A port of 127.0.0.1 that nothing holds, below the kernel's ephemeral range
    (/proc/sys/net/ipv4/ip_local_port_range). A port from bind(0) is in that range, where
    the plane's own outgoing connections (each component to the API server) take their
    source ports: one took kwok's port before kwok listened ("bind: address already in
    use"), in the watchdog tests starting planes back to back."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # held: another cluster's, or anything's
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubernetes_version() -> str:
    text = (HERE / "tools" / "kubernetes" / "go.mod").read_text()
    return re.search(r"k8s\.io/kubernetes (v\S+)", text).group(1)


class ControlPlane:
    """start() brings everything up (and on failure stops what it started); stop() ends
    every process it started and all of their descendants."""

    def __init__(self, root: Path, built: Path, *, with_operators: bool = True, kwok_nodes: int = NODE_COUNT,
                 kwok_selector: str | None = None, extra_args: dict[str, list[str]] | None = None) -> None:
        """kwok_nodes: how many kwok nodes to make. kwok_selector: a label selector of the
        nodes kwok manages (by default every node), for a real kubelet joined beside them
        (tests/node); kwok's nodes carry the label `type=kwok`. extra_args: more flags for
        a component, by its name (e.g. "training-operator")."""
        self.with_operators = with_operators
        self.kwok_nodes, self.kwok_selector = kwok_nodes, kwok_selector
        self.extra_args = extra_args or {}
        self.root = root.resolve()
        self.bin = built / "bin"
        self.crds = built / "crds"
        self.processes = Processes(self.root / "logs", cwd=self.root)
        self.argv: dict[str, tuple[list[str], dict | None]] = {}
        self.build_lock: int | None = None  # a shared lock on the build folder while running (builds.hold)
        self.trainer_lock: int | None = None  # the same on the trainer set's folder, once start_trainer ran
        self.ports: dict[str, int] = {}
        self.kubeconfig = self.root / "kubeconfig"
        self.signals = self.root / "pid1-signals.log"
        self.api: Api | None = None
        self.nodeside: NodeSide | None = None
        self.startup_s: float | None = None

    # -- processes --------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        self.argv[name] = (argv, env)
        self.processes.spawn(name, argv + self.extra_args.get(name, []), env)

    spawn = _spawn  # for the components started later (trainer_v2.py): same log, watchdog and stop

    def check_alive(self) -> None:
        """Raise ProcessDied naming the first component that exited, with its log's tail."""
        self.processes.alive()

    def pids(self) -> list[psutil.Process]:
        """Every live process this control plane started, and their descendants."""
        return self.processes.pids()

    # -- start ------------------------------------------------------------------------------------
    def start(self) -> "ControlPlane":
        t0 = time.monotonic()
        # A start after stop() begins afresh: new ports, certificates, etcd data.
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        self.processes, self.argv = Processes(self.root / "logs", cwd=self.root), {}
        self.build_lock = hold(self.bin.parent)
        self.ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok",
                                                      "training-metrics", "training-health", "training-webhook")}
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _start(self) -> None:
        pki = self.pki = make_pki(self.root / "pki")
        self.api = Api(f"https://127.0.0.1:{self.ports['apiserver']}", str(pki.ca_crt), str(pki.admin_crt), str(pki.admin_key))
        self._write_kubeconfig(self.kubeconfig)
        b, p, kc = self.bin, self.ports, str(self.kubeconfig)
        self._spawn("etcd", [str(b / "etcd"), "--name", "kjob", "--data-dir", str(self.root / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{p['etcd']}", "--advertise-client-urls", f"http://127.0.0.1:{p['etcd']}",
                             "--listen-peer-urls", f"http://127.0.0.1:{p['etcd-peer']}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{p['etcd-peer']}",
                             "--initial-cluster", f"kjob=http://127.0.0.1:{p['etcd-peer']}", "--unsafe-no-fsync", "--log-level", "warn"])
        wait_for("etcd /health", lambda: requests.get(f"http://127.0.0.1:{p['etcd']}/health", timeout=2).json().get("health") == "true",
                 30, alive=self.check_alive)
        self._spawn("kube-apiserver", [
            str(b / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            "--bind-address=127.0.0.1", f"--secure-port={p['apiserver']}", "--advertise-address=127.0.0.1",
            f"--tls-cert-file={pki.apiserver_crt}", f"--tls-private-key-file={pki.apiserver_key}", f"--client-ca-file={pki.ca_crt}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            # The API server reaches "the kubelet" (kwok) for logs and exec, verifying it.
            f"--kubelet-client-certificate={pki.admin_crt}", f"--kubelet-client-key={pki.admin_key}",
            f"--kubelet-certificate-authority={pki.ca_crt}", "--kubelet-preferred-address-types=InternalIP",
            # The Service "kubernetes" would get 127.0.0.1 as endpoint, which Endpoints refuse.
            "--endpoint-reconciler-type=none", "--profiling=false"])
        wait_for("kube-apiserver /readyz", lambda: self.api.session.get(self.api.server + "/readyz", timeout=5).status_code == 200,
                 90, alive=self.check_alive, interval=0.25)
        self.install_crds(self.crds)
        for ns in OPERATOR_NAMESPACES:
            self.api.create("/api/v1/namespaces", {"metadata": {"name": ns}}, exist_ok=True)
        # training-operator's cert rotator fills this Secret but does not create it (its
        # install ships it empty: manifests/base/webhook); without it the operator exits.
        self.api.create("/api/v1/namespaces/kubeflow/secrets", {"metadata": {"name": "training-operator-webhook-cert"}}, exist_ok=True)
        # Nor is it ready before it has put its CA into this configuration. It is left with
        # no webhooks: the API server could not reach them (a Service, and no kube-proxy).
        self.api.create("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
                        {"metadata": {"name": "validator.training-operator.kubeflow.org"}, "webhooks": []}, exist_ok=True)
        # Both serve /healthz with the API server's certificate (it names 127.0.0.1), so the
        # readiness checks verify TLS against the test CA.
        common = [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                  "--bind-address=127.0.0.1", "--leader-elect=false",
                  f"--tls-cert-file={pki.apiserver_crt}", f"--tls-private-key-file={pki.apiserver_key}"]
        # The PV controller binds a claim whose volume it has not yet seen (its informer lags
        # the create by milliseconds) only at its next periodic sync ("volume requested and
        # not found, will try again next time", pkg/controller/volume/persistentvolume/
        # pv_controller.go): every test namespace's bound claims waited ~29 s at the default
        # 15 s. A 1 s period costs nothing with the few volumes here.
        self._spawn("kube-controller-manager", [
            str(b / "kube-controller-manager"), *common, f"--secure-port={p['controller-manager']}",
            f"--service-account-private-key-file={pki.sa_key}", f"--root-ca-file={pki.ca_crt}",
            "--use-service-account-credentials=true", "--controllers=*", "--pvclaimbinder-sync-period=1s"])
        self._spawn("kube-scheduler", [str(b / "kube-scheduler"), *common, f"--secure-port={p['scheduler']}"])
        (self.root / "kwok.yaml").write_text(kwok_config(kubernetes_version()))
        binds = [f"--bind={self.root / 'checkpoints'}:{CHECKPOINT_MOUNT}"]
        self._spawn("kwok", [
            "unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--",
            sys.executable, str(HERE / "pid1.py"), f"--signals={self.signals}", *binds, "--",
            str(b / "kwok"), f"--kubeconfig={kc}", f"--config={self.root / 'kwok.yaml'}",
            f"--manage-nodes-with-label-selector={self.kwok_selector}" if self.kwok_selector else "--manage-all-nodes=true",
            f"--server-address=127.0.0.1:{p['kwok']}", "--node-ip=127.0.0.1", f"--node-port={p['kwok']}",
            f"--tls-cert-file={pki.kwok_crt}", f"--tls-private-key-file={pki.kwok_key}",
            "--enable-crds=Logs,Exec", "--node-lease-duration-seconds=40", "--cidr=10.244.0.0/16"])
        self.nodeside = NodeSide(self.api, self.root).start()
        for i in range(self.kwok_nodes):
            self.api.create("/api/v1/nodes", {"metadata": {"name": f"kwok-node-{i}", "labels": {"kubernetes.io/hostname": f"kwok-node-{i}", "type": "kwok"}}}, exist_ok=True)
        if not self.with_operators:
            wait_for(f"{self.kwok_nodes} kwok nodes Ready", self._nodes_ready, 60, alive=self.check_alive, interval=0.25)
            wait_for("the default ServiceAccount", lambda: self.api.get("/api/v1/namespaces/default/serviceaccounts/default"), 60,
                     alive=self.check_alive)
            return
        self._spawn("mpi-operator", [str(b / "mpi-operator"), f"--kubeConfig={kc}", "--lock-namespace=mpi-operator"])
        certs = self.root / "training-operator-certs"
        certs.mkdir()
        TRAINING_OPERATOR_CERT_DIR.mkdir(parents=True, exist_ok=True)
        self._spawn("training-operator", [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "training-operator", str(certs), str(TRAINING_OPERATOR_CERT_DIR),
            str(b / "training-operator"), "--enable-scheme=pytorchjob",
            f"--metrics-bind-address=127.0.0.1:{p['training-metrics']}", f"--health-probe-bind-address=127.0.0.1:{p['training-health']}",
            f"--webhook-server-port={p['training-webhook']}"], env={"KUBECONFIG": kc, "MY_POD_NAMESPACE": "kubeflow"})
        for name in ("controller-manager", "scheduler"):
            url = f"https://127.0.0.1:{p[name]}/healthz"
            wait_for(f"kube-{name} /healthz", lambda url=url: requests.get(url, verify=str(pki.ca_crt), timeout=2).status_code == 200,
                     60, alive=self.check_alive)
        wait_for(f"{self.kwok_nodes} kwok nodes Ready", self._nodes_ready, 60, alive=self.check_alive, interval=0.25)
        wait_for("mpi-operator leads", lambda: (self.api.get("/apis/coordination.k8s.io/v1/namespaces/mpi-operator/leases/mpi-operator") or {})
                 .get("spec", {}).get("holderIdentity"), 60, alive=self.check_alive, interval=0.25)
        self._mount_webhook_cert()
        url = f"http://127.0.0.1:{p['training-health']}/readyz"
        wait_for("training-operator /readyz", lambda: requests.get(url, timeout=2).status_code == 200, 60, alive=self.check_alive, interval=0.25)
        wait_for("the default ServiceAccount", lambda: self.api.get("/api/v1/namespaces/default/serviceaccounts/default"), 60,
                 alive=self.check_alive)

    def _mount_webhook_cert(self) -> None:
        """Play the kubelet's secret volume for training-operator: it waits until the
        certificates it put in its Secret appear in its fixed serving-cert folder
        (pkg/cert/cert.go certDir), which its Deployment mounts from that Secret."""
        secret = "/api/v1/namespaces/kubeflow/secrets/training-operator-webhook-cert"
        data = wait_for("training-operator's webhook certificates", lambda: (lambda d: d if "tls.crt" in d else None)(
            (self.api.get(secret) or {}).get("data") or {}), 60, alive=self.check_alive, interval=0.25)
        for name, value in data.items():
            (self.root / "training-operator-certs" / name).write_bytes(base64.b64decode(value))

    def install_crds(self, folder: Path) -> None:
        """Create every CRD in folder/*.yaml and wait until each is Established."""
        names = []
        for path in sorted(folder.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc, exist_ok=True)
                    names.append(doc["metadata"]["name"])
        for name in names:
            wait_for(f"CRD {name} Established", lambda name=name: self._crd_established(name), 30, alive=self.check_alive)

    def _crd_established(self, name: str) -> bool:
        crd = self.api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}
        return any(c["type"] == "Established" and c["status"] == "True" for c in crd.get("status", {}).get("conditions", []))

    def _nodes_ready(self) -> bool:
        ready = 0
        for node in self.api.items("/api/v1/nodes"):
            if any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", [])):
                ready += 1
        return ready >= self.kwok_nodes

    def _write_kubeconfig(self, path: Path, *, namespace: str = "default", token: str | None = None, name: str = "kjob-test") -> Path:
        user = {"token": token} if token else {"client-certificate": str(self.pki.admin_crt), "client-key": str(self.pki.admin_key)}
        return write_kubeconfig(path, server=self.api.server, ca_crt=self.pki.ca_crt, user=user, name=name, namespace=namespace)

    def kubeconfig_for(self, path: Path, *, namespace: str, token: str | None = None) -> Path:
        """A kubeconfig for this cluster whose context's namespace is `namespace`; with
        `token`, it authenticates with that bearer token instead of the admin certificate."""
        return self._write_kubeconfig(path, namespace=namespace, token=token)

    def restart(self, name: str) -> None:
        """Stop one component and start it again with the same arguments; for
        mpi-operator, wait until the new process holds the leader lease."""
        lease = "/apis/coordination.k8s.io/v1/namespaces/mpi-operator/leases/mpi-operator"
        holder = lambda: (self.api.get(lease) or {}).get("spec", {}).get("holderIdentity")  # noqa: E731
        before = holder()
        self.processes.stop_one(name, 30)
        self._spawn(name, *self.argv[name])
        if name == "mpi-operator":
            wait_for("the new mpi-operator leads", lambda: holder() not in (None, before), 60, alive=self.check_alive, interval=0.25)

    # -- Kubeflow Trainer v2 and JobSet ---------------------------------------------------------------
    def start_trainer(self, built: Path) -> "ControlPlane":
        """Install Trainer v2's and JobSet's CRDs and start both controllers with their
        webhooks (trainer_v2.py), under this plane's supervision and watchdog; `built` is
        the trainer set's build folder (build_dir("trainer")), held in use until stop().
        A second call does nothing."""
        if "trainer-controller-manager" in self.processes.procs:
            return self
        if self.trainer_lock is None:
            self.trainer_lock = hold(built)
        trainer_v2.start(self, built, free_port)
        return self

    # -- stop -------------------------------------------------------------------------------------
    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every component (operators first, etcd last), SIGKILL what is left after
        `timeout` seconds, then kill any descendant still alive (processes.py)."""
        if self.nodeside:
            self.nodeside.stop()
        if self.api:
            self.api.session.close()
        self.processes.stop(timeout)
        for attr in ("build_lock", "trainer_lock"):
            if getattr(self, attr) is not None:
                os.close(getattr(self, attr))
                setattr(self, attr, None)


# -- make cluster-up / cluster-down ---------------------------------------------------------------
def _serve(root: Path) -> int:
    plane = ControlPlane(root / "plane", build_dir())
    trainer = cached_dir("trainer")  # started when built (make trainer-bin), else not
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    try:
        plane.start()
        if trainer:
            plane.start_trainer(trainer)
        (root / "trainer").write_text("started\n" if trainer else "not built\n")
        shutil.copy(plane.kubeconfig, root / "kubeconfig")
        (root / "ready").write_text(f"{plane.startup_s:.1f}\n")
        while not stop:
            plane.check_alive()
            time.sleep(0.5)
    finally:
        plane.stop()
        (root / "ready").unlink(missing_ok=True)
    return 0


def _up(root: Path) -> int:
    root.mkdir(parents=True, exist_ok=True)
    pidfile = root / "pid"
    if pidfile.exists() and psutil.pid_exists(int(pidfile.read_text())):
        print(f"already running (pid {pidfile.read_text().strip()}); `make cluster-down` stops it")
        return 0
    (root / "ready").unlink(missing_ok=True)
    log = open(root / "controlplane.log", "ab")
    p = subprocess.Popen([sys.executable, __file__, "serve", "--dir", str(root)], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile.write_text(str(p.pid))
    print("building and starting the control plane (the first build takes a while) ...", flush=True)
    while not (root / "ready").exists():
        if p.poll() is not None:
            print(f"the control plane did not start; see {root / 'controlplane.log'} and {root / 'logs'}/", file=sys.stderr)
            pidfile.unlink(missing_ok=True)
            return 1
        time.sleep(0.5)
    print(f"up in {float((root / 'ready').read_text()):.1f} s. Try kjob against it:\n"
          f"  export KUBECONFIG={root.resolve() / 'kubeconfig'}\n"
          f"  kjob submit examples/smoke.yaml && kjob status smoke\n"
          f"Pods run on kwok nodes: nothing executes; {root}/plane/pods/<ns>/<pod>/<container>.log is what `kjob logs` shows.")
    if (root / "trainer").read_text().strip() == "started":
        print("Kubeflow Trainer v2 and JobSet run too (TrainJob trainer.kubeflow.org/v1alpha1).")
    else:
        print("Kubeflow Trainer v2 and JobSet are not built, so not started: `make trainer-bin`, then cluster-down and cluster-up.")
    return 0


def _down(root: Path) -> int:
    pidfile = root / "pid"
    if not pidfile.exists():
        print("not running")
        return 0
    pid = int(pidfile.read_text())
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(60)
    except psutil.NoSuchProcess:
        pass
    pidfile.unlink(missing_ok=True)
    print("stopped")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=["up", "down", "serve"])
    ap.add_argument("--dir", default=".cluster", type=Path)
    args = ap.parse_args()
    return {"up": _up, "down": _down, "serve": _serve}[args.action](args.dir.resolve())


if __name__ == "__main__":
    sys.exit(main())
