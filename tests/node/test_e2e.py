"""End to end on the real node (marker `node`): kjob's CLI submits the specs in specs/ to
the control plane of tests/cluster, the real mpi-operator and training-operator make the
pods, and the real kubelet runs them from the images built from images/ as rendered (uid
1000, every capability dropped, seccomp RuntimeDefault), in a namespace where Pod Security
admission enforces `restricted`. Nothing is played: the trainer trains, mpirun crosses
ssh on port 2222 with the operator's hostfile and Secret, the kubelet sends the SIGTERMs,
logs and exec go through the API server to the kubelet."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ckpt_helpers import write_checkpoints
from cluster import NodeCluster
from kjob.render.manifests import render_objects
from kjob.spec.load import load_spec
from waiting import wait_for

pytestmark = [pytest.mark.node, pytest.mark.timeout(3600)]

SPECS = Path(__file__).resolve().parent / "specs"
KJOB = str(Path(sys.executable).parent / "kjob")
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
# Seconds a tiny job may take on this machine (2 cores shared with others), start to end.
RUN_LIMIT = 1200
TIMES: dict[str, float] = {}


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Namespace:
    cluster: NodeCluster
    ns: str
    volume: Path  # the checkpoint claim's directory on this machine
    env: dict

    def kjob(self, *args: str, timeout: float = 300) -> Run:
        p = subprocess.run([KJOB, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        return Run(p.returncode, p.stdout, p.stderr)

    def kjob_background(self, *args: str, log: Path) -> subprocess.Popen:
        out = open(log, "w")
        try:
            return subprocess.Popen([KJOB, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True)
        finally:
            out.close()

    def pods(self, job: str) -> list[dict]:
        return self.cluster.plane.api.items(f"/api/v1/namespaces/{self.ns}/pods", labelSelector=f"{JOB_NAME_LABEL}={job}")

    def diagnosis(self) -> str:
        """Pod phases, container states and the namespace's events: for a failed assertion."""
        api = self.cluster.plane.api
        lines = []
        for p in api.items(f"/api/v1/namespaces/{self.ns}/pods"):
            states = [(c["name"], c.get("state"), c.get("restartCount")) for c in
                      p.get("status", {}).get("initContainerStatuses", []) + p.get("status", {}).get("containerStatuses", [])]
            lines.append(f"pod {p['metadata']['name']} {p.get('status', {}).get('phase')} node={p['spec'].get('nodeName')} {states}")
        for e in api.items(f"/api/v1/namespaces/{self.ns}/events"):
            lines.append(f"event {e['involvedObject']['kind']}/{e['involvedObject']['name']} {e.get('reason')}: {e.get('message')}")
        return "\n".join(lines)


@pytest.fixture
def namespace(node_cluster, request, tmp_path):
    ns = "e2e-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:40].strip("-")
    kubeconfig = tmp_path / "kubeconfig"
    volume = node_cluster.namespace(ns, kubeconfig)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KJOB_POLL_SECONDS": "0.5"}
    space = Namespace(node_cluster, ns, volume, env)
    try:
        yield space
    finally:
        api = node_cluster.plane.api
        api.delete(f"/api/v1/namespaces/{ns}")
        # The next run needs the node's CPU and memory: wait until these pods are gone.
        wait_for(f"namespace {ns} gone", lambda: api.get(f"/api/v1/namespaces/{ns}") is None, 300)


@pytest.fixture(autouse=True)
def _timed(request):
    t0 = time.monotonic()
    yield
    TIMES[request.node.name] = time.monotonic() - t0
    print(f"\n[e2e] {request.node.name}: {TIMES[request.node.name]:.0f} s", file=sys.stderr)


def submit_and_follow(space: Namespace, spec: str, name: str) -> str:
    """Submit, follow the logs to the end (`kjob logs -f`), check `kjob status` says
    Succeeded; returns the followed log."""
    r = space.kjob("submit", str(SPECS / spec))
    assert r.code == 0, r
    logs = space.kjob("logs", name, "-f", timeout=RUN_LIMIT)
    assert logs.code == 0, f"{logs}\n{space.diagnosis()}"
    st = space.kjob("status", name)
    assert st.code == 0 and "State:     Succeeded" in st.out, f"{st}\n{space.diagnosis()}"
    return logs.out


def both_ranks_trained(volume: Path, job: str, world: int = 2) -> None:
    """Each rank left its record (run_protocol.RankRecord, ranks/rank-N.json) on the claim:
    all `world` ranks, on different pods, in the same all-reduce, at the same last step."""
    records = [json.loads((volume / job / "ranks" / f"rank-{rank}.json").read_text()) for rank in range(world)]
    assert [r["ranks_in_allreduce"] for r in records] == [world] * world, records
    assert len({r["host"] for r in records}) == world, records
    assert len({r["step"] for r in records}) == 1 and all(r["samples"] > 0 for r in records), records


def test_mpijob_two_workers_trains_follows_and_fetches(namespace, tmp_path):
    out = submit_and_follow(namespace, "mpi.yaml", "e2e-mpi")
    assert "on 2 x cpu" in out, out
    assert re.search(r"^done: step 30\b", out, re.M), out
    both_ranks_trained(namespace.volume, "e2e-mpi")
    fetches_every_checkpoint(namespace, "e2e-mpi", tmp_path / "fetched")


def fetches_every_checkpoint(space: Namespace, job: str, dest: Path, count: int = 3) -> None:
    """`kjob fetch-ckpt --all`: what the trainer wrote (its index names the checkpoints)
    arrives byte for byte."""
    r = space.kjob("fetch-ckpt", job, "--all", "--dest", str(dest))
    assert r.code == 0, f"{r}\n{space.diagnosis()}"
    index_path = next((space.volume / job).rglob("index.json"))
    names = [e["file"] for e in json.loads(index_path.read_text())["checkpoints"]]
    assert len(names) == count, names
    fetched = {p.name: p for p in dest.rglob("*") if p.is_file()}
    for name in names:
        assert fetched[name].read_bytes() == (index_path.parent / name).read_bytes(), name


def test_mpijob_deleted_mid_run_resumes_from_its_step(namespace, tmp_path):
    deleted_mid_run_resumes(namespace, SPECS / "resume.yaml", "e2e-resume", tmp_path, namespace.pods)


def deleted_mid_run_resumes(space: Namespace, spec: Path, name: str, tmp_path: Path, pods, while_running=None) -> None:
    """Submit the 80-step job `name`, delete it mid-run (`kjob delete --wait`: the
    checkpoint first), check its pods (`pods(name)`) are gone, submit it again: it resumes
    at the step the stop saved and ends at step 80. `while_running(space, name)` is
    called once the job is submitted, while it runs."""
    r = space.kjob("submit", str(spec))
    assert r.code == 0, r
    follow = space.kjob_background("logs", name, "-f", log=tmp_path / "first.log")
    try:
        if while_running is not None:
            while_running(space, name)
        # Mid-run: some steps done, far from the 80 of the whole job.
        wait_for("the launcher logs step 14", lambda: re.search(r"\bstep (1[4-9]|[2-9]\d)\b", (tmp_path / "first.log").read_text()),
                 RUN_LIMIT, interval=1)
        r = space.kjob("delete", name, "--wait", timeout=600)
        assert r.code == 0, f"{r}\n{space.diagnosis()}"
        follow.wait(120)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    first = (tmp_path / "first.log").read_text()
    saved = re.search(r"stopping on \S+ at step (\d+): checkpoint (\S+) saved", first)
    assert saved, first + "\n" + r.out + r.err
    step = int(saved.group(1))
    assert 0 < step < 80
    assert not pods(name)
    out = submit_and_follow(space, str(spec), name)
    resumed = re.search(r"resumed from (\S+): epoch (\d+) step (\d+)", out)
    assert resumed and int(resumed.group(3)) == step, out
    assert re.search(r"^done: step 80\b", out, re.M), out


def test_pytorchjob_master_and_worker_under_torchrun(namespace):
    out = submit_and_follow(namespace, "torchrun.yaml", "e2e-torchrun")
    assert "on 2 x cpu" in out, out
    assert re.search(r"^done: step 30\b", out, re.M), out
    both_ranks_trained(namespace.volume, "e2e-torchrun")


def test_mindspore_mpijob_two_workers(namespace, images):
    out = submit_and_follow(namespace, "mindspore.yaml", "e2e-mindspore")
    assert re.search(r"^done: step 30\b", out, re.M), out
    both_ranks_trained(namespace.volume, "e2e-mindspore")


@pytest.fixture
def silent_registry():
    """A registry on this machine that accepts connections and never answers: a pull from
    it stays in progress (the real kubelet says Pulling) for as long as the test needs."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_fetch_helper_waiting_on_an_image_pull_says_so_and_its_timeout_names_it(namespace, silent_registry, tmp_path):
    """The real kubelet pulling the helper's image: kjob says `pulling image ...` while it
    waits and its timeout names the pull, rather than a bare Pending (issue 16 item 2)."""
    spec = yaml.safe_load((SPECS / "mpi.yaml").read_text())
    spec["name"] = "e2e-pull"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    job = next(o for o in render_objects(load_spec(tmp_path / "job.yaml")) if o["kind"] == "MPIJob")
    job["metadata"]["namespace"] = namespace.ns
    job["spec"]["runPolicy"]["suspend"] = True  # mpi-operator makes no pods: kjob needs a helper
    namespace.cluster.plane.api.create(f"/apis/kubeflow.org/v2beta1/namespaces/{namespace.ns}/mpijobs", job)
    write_checkpoints(namespace.volume / "e2e-pull" / "checkpoints", [1000])
    image = f"{silent_registry}/kjob/helper:1"
    env = {**namespace.env, "KJOB_FETCH_IMAGE": image, "KJOB_FETCH_POD_TIMEOUT": "20"}
    p = subprocess.run([KJOB, "fetch-ckpt", "e2e-pull", "--dest", str(tmp_path / "got")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p
    assert re.search(rf'waiting for helper pod e2e-pull-fetch-\w+: pulling image "{re.escape(image)}" on node ', p.stderr), p.stderr
    assert re.search(rf'Error: helper pod e2e-pull-fetch-\w+ did not start within 20 s: pulling image "{re.escape(image)}"',
                     p.stderr), p.stderr
    assert not (tmp_path / "got").exists() or not any((tmp_path / "got").iterdir())


@pytest.fixture
def empty_registry():
    """A registry on this machine that holds no image: it answers the API check (GET /v2/)
    and every manifest with 404 MANIFEST_UNKNOWN, as a registry answers for a tag it lacks.
    containerd talks plain HTTP to a loopback registry."""
    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer()

        def do_HEAD(self) -> None:
            self.answer()

        def answer(self) -> None:
            found = self.path.rstrip("/") == "/v2"
            body = b"{}" if found else json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_image_the_registry_lacks_is_named_with_the_registrys_cause(namespace, empty_registry, tmp_path):
    """The real kubelet pulls a tag the registry lacks: `kjob status` says which image and
    the registry's cause, from the kubelet's Failed Event, not a bare Pending (issue 24
    point 2)."""
    spec = yaml.safe_load((SPECS / "mpi.yaml").read_text())
    image = f"{empty_registry}/kjob/trainer:nope"
    spec.update(name="e2e-nope", image=image, imagePullPolicy="IfNotPresent")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    assert namespace.kjob("submit", str(tmp_path / "job.yaml")).code == 0

    def said() -> str | None:
        st = namespace.kjob("status", "e2e-nope")
        return st.out if re.search(r"Message: +worker-\d: (ImagePullBackOff|ErrImagePull): cannot pull image", st.out) else None
    out = wait_for("status naming the pull", said, 180, interval=1)
    assert f'cannot pull image "{image}": not found' in out, f"{out}\n{namespace.diagnosis()}"


# What each rank of the pod-environment job runs instead of the trainer: it takes the worker
# pod's variables as the trainer does first (kjob_trainer.common.worker_env), then records on the
# checkpoint claim the worker-only variable and, for the Secrets' variables, only a digest
# and whether the value is in any process's argv in its pod (`ps` without ps). It never
# prints a value.
POD_ENV_PROBE = """
import hashlib, json, os
from kjob_trainer.common.worker_env import adopt_worker_env
adopt_worker_env()
secrets = {k: os.environ.get(k) for k in ("KJOB_PROBE_SECRET", "KJOB_PROBE_FROM")}
in_argv = False
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        continue
    in_argv = in_argv or any(v and v in argv for v in secrets.values())
rank = os.environ["OMPI_COMM_WORLD_RANK"]
out = {"NCCL_KJOB_PROBE": os.environ.get("NCCL_KJOB_PROBE"), "in_argv": in_argv,
       **{k: v and hashlib.sha256(v.encode()).hexdigest() for k, v in secrets.items()}}
os.makedirs("/checkpoints/e2e-podenv/probe", exist_ok=True)
with open(f"/checkpoints/e2e-podenv/probe/rank-{rank}.json", "w") as f:
    json.dump(out, f)
print(f"rank {rank} probed", flush=True)
"""


PROBED = ("NCCL_KJOB_PROBE", "KJOB_PROBE_SECRET", "KJOB_PROBE_FROM")


def test_worker_pod_variables_and_secrets_reach_every_rank_and_no_object_argv_or_log(namespace, tmp_path):
    """Issue 22 points 2 and 3 on real pods: a variable set only on the worker pods (as a
    device plugin or webhook would) reaches rank 1 (and 0); a Secret's value, by
    secretKeyRef and by envFrom, reaches every rank, and appears in no object the API
    server holds, no argv in the worker pods, no log line."""
    import hashlib
    import secrets

    api, ns = namespace.cluster.plane.api, namespace.ns
    token, other = secrets.token_hex(16), secrets.token_hex(16)
    api.create(f"/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe"},
                                                    "stringData": {"token": token}})
    api.create(f"/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "probe-from"},
                                                    "stringData": {"KJOB_PROBE_FROM": other}})
    spec = yaml.safe_load((SPECS / "mpi.yaml").read_text())
    spec["name"] = "e2e-podenv"
    spec["env"] = {"KJOB_PROBE_SECRET": {"secretKeyRef": {"name": "probe", "key": "token"}}}
    spec["envFrom"] = ["probe-from"]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    job = next(o for o in render_objects(load_spec(tmp_path / "job.yaml")) if o["kind"] == "MPIJob")
    job["metadata"]["namespace"] = ns
    replicas = job["spec"]["mpiReplicaSpecs"]
    (worker,) = replicas["Worker"]["template"]["spec"]["containers"]
    worker["env"].append({"name": "NCCL_KJOB_PROBE", "value": "worker-only"})  # on the workers alone
    (launcher,) = replicas["Launcher"]["template"]["spec"]["containers"]
    mpirun = launcher["args"][:launcher["args"].index("python")]  # mpirun and its flags (-x NAME ...)
    launcher["args"] = mpirun + ["python", "-c", POD_ENV_PROBE]
    # Nothing of the probe's variables on the launcher: its env, envFrom and mpirun's -x list.
    assert not launcher.get("envFrom") and not {e["name"] for e in launcher.get("env", [])} & set(PROBED)
    assert not [a for a in mpirun if any(name in a for name in PROBED)], mpirun
    api.create(f"/apis/kubeflow.org/v2beta1/namespaces/{ns}/mpijobs", job)

    logs = namespace.kjob("logs", "e2e-podenv", "-f", timeout=RUN_LIMIT)
    assert logs.code == 0 and "rank 1 probed" in logs.out, f"{logs}\n{namespace.diagnosis()}"
    every_log = namespace.kjob("logs", "e2e-podenv", "--all")
    assert every_log.code == 0, every_log
    for rank in (0, 1):
        got = json.loads((namespace.volume / "e2e-podenv" / "probe" / f"rank-{rank}.json").read_text())
        assert got == {"NCCL_KJOB_PROBE": "worker-only", "in_argv": False,
                       "KJOB_PROBE_SECRET": hashlib.sha256(token.encode()).hexdigest(),
                       "KJOB_PROBE_FROM": hashlib.sha256(other.encode()).hexdigest()}, (rank, got)
    held = json.dumps([api.get(f"/apis/kubeflow.org/v2beta1/namespaces/{ns}/mpijobs/e2e-podenv"),
                       api.items(f"/api/v1/namespaces/{ns}/pods"), api.items(f"/api/v1/namespaces/{ns}/events")])
    assert "probe-from" in held and "KJOB_PROBE_SECRET" in held  # the references are there ...
    for value in (token, other):  # ... the values nowhere
        assert value not in held and value not in logs.out + logs.err + every_log.out + every_log.err
