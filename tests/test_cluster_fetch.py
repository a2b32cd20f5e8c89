"""fetch-ckpt against the test API server over HTTP with the real `kubernetes` client:
the exec websocket (v5/v4 channels) streams real GNU tar output from a folder standing in
for the checkpoint PVC; faults cut, corrupt or stall the stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kjob.backend import FetchOptions
from kjob.cluster.backend import ClusterBackend
from kjob.errors import ClusterUnavailable, Forbidden, NotFound
from kjob.render.manifests import render_objects
from kjob.spec.load import load_spec

from ckpt_helpers import HelperKubelet, create_job, helper_pods, write_checkpoints
from kubefake.exec import ExecReply
from timing import scaled

pytestmark = pytest.mark.timeout(180)  # a bound against hangs, scaled by KJOB_TEST_TIME_SCALE

JOB = "ckpt"
MB = 1_000_000
KJOB = [sys.executable, "-m", "kjob"]


@pytest.fixture
def cluster(kube, tmp_path):
    """A submitted job (rendered from examples/smoke.yaml) whose PVC holds 4 checkpoints
    (20 MB in all); returns (kube, the PVC's checkpoint folder, the index)."""
    job = next(o for o in render_objects(load_spec("examples/smoke.yaml")) if o["kind"] == "MPIJob")
    job["metadata"]["name"] = JOB
    ann = job["metadata"]["annotations"]
    ann["kjob.dev/output-path"] = f"/checkpoints/{JOB}"
    create_job(kube, job)
    pvc = tmp_path / "pvc"
    index = write_checkpoints(pvc / JOB / "checkpoints", [6 * MB, 5 * MB, 4 * MB, 5 * MB])
    kube.exec.provide_claim("default", ann["kjob.dev/checkpoint-claim"], pvc)
    return kube, pvc / JOB / "checkpoints", index


def fetch(dest: Path, **kw) -> list[dict]:
    return ClusterBackend().fetch_checkpoints(JOB, FetchOptions(dest=dest, **kw))


def tar_calls(kube) -> list:
    return [c for c in kube.exec.calls if c.command[0] == "tar"]


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_all_through_a_helper_pod_verified_and_the_helper_deleted(cluster, tmp_path):
    kube, src, index = cluster
    dest = tmp_path / "out"
    with HelperKubelet(kube, JOB) as kubelet:
        got = fetch(dest, which="all")
    assert [e["file"] for e in got] == [e["file"] for e in index["checkpoints"]]
    for e in index["checkpoints"]:
        assert (dest / e["file"]).read_bytes() == (src / e["file"]).read_bytes()
    assert files(dest) == [e["file"] for e in index["checkpoints"]] + ["index.json"]
    assert len(kubelet.seen) == 1 and helper_pods(kube, JOB) == []
    pod = kubelet.manifests[0]
    spec, c = pod["spec"], pod["spec"]["containers"][0]
    assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kjob"
    assert pod["metadata"]["labels"]["kjob.dev/helper-for"] == JOB
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("MPIJob", JOB) and owner["uid"] == kube.get("MPIJob", JOB)["metadata"]["uid"]
    assert spec["volumes"][0]["persistentVolumeClaim"] == {"claimName": "kjob-checkpoints", "readOnly": True}
    assert c["volumeMounts"][0] == {"name": "checkpoints", "mountPath": "/checkpoints", "readOnly": True}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["resources"]["limits"]["memory"] == "256Mi"
    assert c["image"] == "ghcr.io/kjob/kjob-trainer-pytorch:0.1.0" and spec["activeDeadlineSeconds"] > 0


def test_a_running_worker_that_mounts_the_claim_is_used_instead_of_a_helper(cluster, tmp_path):
    kube, src, index = cluster
    pods = kube.start_job(JOB)
    for p in pods:
        kube.pod_running(p)
    got = fetch(tmp_path / "out")
    assert [e["file"] for e in got] == [index["latest"]]
    # The launcher does not mount the claim: kjob execs in the worker.
    assert {c.pod for c in kube.exec.calls} == {f"{JOB}-worker-0"}
    assert {c.container for c in kube.exec.calls} == {"worker"}
    assert helper_pods(kube, JOB) == []


def test_list_reads_the_index_only(cluster, tmp_path):
    kube, _, index = cluster
    with HelperKubelet(kube, JOB):
        got = fetch(tmp_path / "out", which="all", list_only=True)
    assert [e["epoch"] for e in got] == [1, 2, 3, 4] and got[0]["metrics"]["top1"] == 11.0
    assert [c.command[0] for c in kube.exec.calls] == ["cat"]
    assert not (tmp_path / "out").exists() and helper_pods(kube, JOB) == []


def test_a_cut_stream_then_a_rerun_transfers_only_the_missing_files(cluster, tmp_path):
    kube, src, index = cluster
    dest = tmp_path / "out"
    kube.exec.fault("default", command="tar", cut_after=8 * MB)  # inside the second file
    with HelperKubelet(kube, JOB):
        with pytest.raises(ClusterUnavailable, match=r"was cut after 8.0 MB: 1 of 4 files verified and kept") as err:
            fetch(dest, which="all")
        assert err.value.hint == "run the same command again to fetch only the rest"
        assert files(dest) == ["epoch-0001.pt"]  # no temp file, nothing half-written
        assert helper_pods(kube, JOB) == []
        fetch(dest, which="all")
    first, second = tar_calls(kube)
    assert first.cut and first.stdout_bytes == 8 * MB
    assert second.command[5:] == ["epoch-0002.pt", "epoch-0003.pt", "epoch-0004.pt"]
    assert second.stdout_bytes < 15 * MB  # 14 MB of files plus tar's headers and padding
    for e in index["checkpoints"]:
        assert (dest / e["file"]).read_bytes() == (src / e["file"]).read_bytes()


def test_a_corrupted_byte_is_exit_7_with_nothing_at_the_final_path(cluster, tmp_path):
    kube, _, _ = cluster
    dest = tmp_path / "out"
    kube.exec.fault("default", command="tar", flip_byte_at=3 * MB)
    with HelperKubelet(kube, JOB):
        r = subprocess.run(KJOB + ["fetch-ckpt", JOB, "--epoch", "1", "--dest", str(dest)], capture_output=True, text=True, timeout=scaled(50))
    assert r.returncode == 7, r.stderr
    assert "Error: epoch-0001.pt: sha256 mismatch" in r.stderr and "nothing was written at" in r.stderr
    assert "Traceback" not in r.stderr
    assert files(dest) == []
    assert helper_pods(kube, JOB) == []


def test_a_hostile_tar_from_the_pod_is_refused_and_nothing_leaves_dest(cluster, tmp_path):
    import io
    import tarfile

    kube, src, _ = cluster
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("epoch-0004.pt")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../outside"
        tar.addfile(info)
    index_json = (src / "index.json").read_bytes()
    kube.start_job(JOB)
    kube.pod_running(f"{JOB}-worker-0")
    kube.exec.serve("default", f"{JOB}-worker-0",
                    lambda argv: ExecReply(stdout=index_json if argv[0] == "cat" else evil.getvalue()))
    dest = tmp_path / "dest"
    r = subprocess.run(KJOB + ["fetch-ckpt", JOB, "--dest", str(dest)], capture_output=True, text=True, timeout=scaled(50))
    assert r.returncode == 7
    assert "Error: refusing tar entry 'epoch-0004.pt': symbolic link to '../../../outside'" in r.stderr
    assert files(dest) == [] and not (tmp_path / "outside").exists()


def test_ctrl_c_during_the_transfer_deletes_the_helper_pod(cluster, tmp_path):
    kube, _, _ = cluster
    dest = tmp_path / "out"
    kube.exec.fault("default", command="tar", stall_after=2 * MB)
    with HelperKubelet(kube, JOB) as kubelet:
        proc = subprocess.Popen(KJOB + ["fetch-ckpt", JOB, "--all", "--dest", str(dest)], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + scaled(40)
        while not (tar_calls(kube) and tar_calls(kube)[0].stdout_bytes >= 2 * MB) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kubelet.seen and helper_pods(kube, JOB)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=scaled(30))
    assert proc.returncode == 130 and "Aborted." in err and "Traceback" not in err
    assert helper_pods(kube, JOB) == []
    assert [p for p in files(dest) if p.startswith(".tmp-")] == []


def test_helper_pod_deleted_when_there_is_no_index_yet(cluster, tmp_path):
    kube, src, _ = cluster
    (src / "index.json").unlink()
    with HelperKubelet(kube, JOB) as kubelet:
        with pytest.raises(NotFound, match="no checkpoints yet: /checkpoints/ckpt/checkpoints/index.json does not exist"):
            fetch(tmp_path / "out")
    assert kubelet.seen and helper_pods(kube, JOB) == []


def test_a_helper_that_cannot_start_shows_why_and_is_deleted(cluster, tmp_path, monkeypatch):
    kube, _, _ = cluster
    monkeypatch.setenv("KJOB_FETCH_POD_TIMEOUT", "1.5")
    said: list[str] = []

    def scheduler():  # no node can take the helper
        for _ in range(500):
            pods = helper_pods(kube, JOB)
            if pods:
                kube.unschedulable(pods[0]["metadata"]["name"], "0/3 nodes are available: 3 Insufficient memory.")
                return
            time.sleep(0.01)

    t = threading.Thread(target=scheduler)
    t.start()
    backend = ClusterBackend()
    backend.notify = said.append
    with pytest.raises(ClusterUnavailable, match=r"did not start within 1.5 s: FailedScheduling: 0/3 nodes are available: 3 Insufficient memory."):
        backend.fetch_checkpoints(JOB, FetchOptions(dest=tmp_path / "out"))
    t.join()
    assert any("waiting for helper pod" in line and "Insufficient memory" in line for line in said)
    assert helper_pods(kube, JOB) == []


def test_exec_denied_by_rbac_is_exit_4_and_cleans_up(cluster, tmp_path):
    kube, _, _ = cluster
    kube.deny("get", "pods/exec")
    with HelperKubelet(kube, JOB):
        with pytest.raises(Forbidden, match="pods/exec") as err:
            fetch(tmp_path / "out")
    assert err.value.exit_code == 4 and helper_pods(kube, JOB) == []


def test_a_file_removed_by_the_trainer_meanwhile_is_reported_with_tars_words(cluster, tmp_path):
    kube, src, _ = cluster
    os.unlink(src / "epoch-0002.pt")
    with HelperKubelet(kube, JOB):
        with pytest.raises(ClusterUnavailable, match=r"1 checkpoint file\(s\) did not arrive .*\(epoch-0002.pt\): tar exited with code 2: .*epoch-0002.pt"):
            fetch(tmp_path / "out", which="all")
    assert files(tmp_path / "out") == ["epoch-0001.pt", "epoch-0003.pt", "epoch-0004.pt"]


def test_a_dead_connection_times_out_instead_of_hanging(cluster, tmp_path, monkeypatch):
    kube, _, _ = cluster
    monkeypatch.setenv("KJOB_FETCH_IDLE_TIMEOUT", "0.5")
    kube.exec.fault("default", command="tar", stall_after=1 * MB)
    with HelperKubelet(kube, JOB):
        with pytest.raises(ClusterUnavailable, match=r"no data for 0.5 s; the connection looks dead"):
            fetch(tmp_path / "out")
    assert files(tmp_path / "out") == [] and helper_pods(kube, JOB) == []


# -- the exec channel protocol, both ends ---------------------------------------------------------
def test_the_fake_speaks_v4_and_v5_as_the_official_client_reads_them(kube, tmp_path):
    """The official client's own reader (WSClient.returncode, read_stdout) agrees with the
    fake's frames and Status, for the subprotocol it prefers (v5) and for v4."""
    import websocket
    from kubernetes import client, config
    from kubernetes.stream import stream

    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "hello.txt").write_text("hello\n")
    core = client.CoreV1Api(config.new_client_from_config(kube.kubeconfig))
    core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    kube.pod_running("p")
    kube.exec.serve_folder("default", "p", {"/data": tmp_path / "vol"})
    ok = stream(core.connect_get_namespaced_pod_exec, "p", "default", command=["cat", "/data/hello.txt"],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    ok.run_forever(timeout=10)
    ok.close()
    ok.sock.shutdown()  # the client's close() leaves the socket open once the server has closed
    assert ok.subprotocol == "v5.channel.k8s.io" and ok.read_stdout() == "hello\n" and ok.returncode == 0
    bad = stream(core.connect_get_namespaced_pod_exec, "p", "default", command=["cat", "/data/missing"],
                 stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    bad.run_forever(timeout=10)
    bad.close()
    bad.sock.shutdown()
    core.api_client.close()
    assert bad.returncode == 1 and "No such file" in bad.read_stderr()
    # v4 only (older clients): same channels, same Status.
    url = kube.server.replace("http", "ws") + "/api/v1/namespaces/default/pods/p/exec?command=cat&command=/data/hello.txt&stdout=true&stderr=true"
    ws = websocket.create_connection(url, subprotocols=["v4.channel.k8s.io"], header=[f"Authorization: Bearer {kube.token}"])
    frames = []
    while True:
        op, frame = ws.recv_data_frame(True)
        if op == websocket.ABNF.OPCODE_CLOSE:
            break
        frames.append(frame.data)
    ws.close()
    ws.shutdown()
    assert ws.subprotocol == "v4.channel.k8s.io"
    assert frames[0] == b"\x01hello\n" and frames[-1][:1] == b"\x03" and b'"Success"' in frames[-1]


class _Peer:
    """The client side of ExecStream over a socketpair: the test writes server frames."""

    def __init__(self):
        import socket
        from types import SimpleNamespace

        self.server, mine = socket.socketpair()
        self.pongs: list[bytes] = []
        peer = self
        self.sock = SimpleNamespace(sock=mine, frame_buffer=SimpleNamespace(recv_buffer=[]),
                                    gettimeout=lambda: 5.0, pong=lambda p: peer.pongs.append(p))
        mine.settimeout(5)

    def close(self, **_):
        self.sock.sock.close()
        self.server.close()

    def frame(self, opcode: int, payload: bytes, fin: bool = True, length_bytes: int | None = None):
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if length_bytes == 8 or n > 0xFFFF:
            head += bytes([127]) + n.to_bytes(8, "big")
        elif length_bytes == 2 or n > 125:
            head += bytes([126]) + n.to_bytes(2, "big")
        else:
            head += bytes([n])
        self.server.sendall(head + payload)


def _read_all(stream):
    out = bytearray()
    for chunk in stream:
        out += chunk
    return bytes(out)


def test_exec_stream_reassembles_fragments_answers_pings_and_reads_the_status():
    import json

    from kjob.cluster.exec_stream import ExecStream

    peer = _Peer()
    s = ExecStream(peer, "exec tar in pod p")
    body = bytes(range(256)) * 400
    peer.frame(0x2, b"\x01" + body[:1000], fin=False)  # a fragmented stdout message
    peer.frame(0x9, b"are you there")  # a ping between fragments
    peer.frame(0x0, body[1000:50000], fin=False, length_bytes=8)
    peer.frame(0x0, body[50000:], fin=True)
    peer.frame(0x2, b"\x02tar: a warning\n")
    peer.frame(0x2, b"\x01" + b"tail")
    status = {"status": "Failure", "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}}
    raw = json.dumps(status).encode()
    peer.frame(0x2, b"\x03" + raw[:10], fin=False)
    peer.frame(0x0, raw[10:])
    assert _read_all(s) == body + b"tail"
    s.close()
    assert peer.pongs == [b"are you there"]
    assert not s.cut and s.exit_code() == 2 and s.stderr_text() == "tar: a warning"


def test_exec_stream_without_a_status_is_a_cut_and_protocol_errors_are_named():
    from kjob.errors import ClusterUnavailable
    from kjob.cluster.exec_stream import ExecStream

    peer = _Peer()
    s = ExecStream(peer, "exec tar in pod p")
    peer.frame(0x2, b"\x01abc")
    peer.server.close()
    assert _read_all(s) == b"abc" and s.cut and s.exit_code() is None
    s.close()

    peer = _Peer()
    s = ExecStream(peer, "exec tar in pod p")
    peer.frame(0x2, b"\x03" + b'{"status": "Failure", "reason": "InternalError", "message": "exec: \\"tar\\": executable file not found in $PATH"}')
    _read_all(s)
    s.close()
    with pytest.raises(ClusterUnavailable, match='exec tar in pod p failed: exec: "tar": executable file not found'):
        s.exit_code()

    peer = _Peer()
    s = ExecStream(peer, "exec tar in pod p")
    peer.server.sendall(bytes([0x82, 0x80 | 3]) + b"mask" + b"abc")
    with pytest.raises(ClusterUnavailable, match="masked websocket frame"):
        _read_all(s)
    s.close()


def test_a_helper_left_by_a_killed_kjob_goes_with_the_job(cluster, tmp_path):
    """SIGKILL leaves no chance to clean up: the ownerReference makes `kjob delete` (the
    garbage collector) remove the helper; activeDeadlineSeconds bounds it otherwise."""
    kube, _, _ = cluster
    kube.exec.fault("default", command="tar", stall_after=1 * MB)
    with HelperKubelet(kube, JOB):
        proc = subprocess.Popen(KJOB + ["fetch-ckpt", JOB, "--dest", str(tmp_path / "out")], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + scaled(40)
        while not tar_calls(kube) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()
        proc.wait(10)
    assert len(helper_pods(kube, JOB)) == 1
    r = subprocess.run(KJOB + ["delete", JOB], capture_output=True, text=True, timeout=scaled(50))
    assert r.returncode == 0, r.stderr
    assert helper_pods(kube, JOB) == []


def test_exec_errors_become_kjob_errors(kube):
    """The handshake's HTTP status reaches kubeapi's translation; no client exception leaks."""
    from kjob.errors import KjobError
    from kjob.cluster.exec_stream import open_exec
    from kjob.cluster.api import connect

    k = connect()
    with pytest.raises(NotFound, match='pods/exec "nope" not found in namespace "default"'):
        open_exec(k, "default", "nope", None, ["true"], 5)
    bad = connect(str(kube.kubeconfig_variant(server="http://127.0.0.1:9", name="dead")))
    with pytest.raises(KjobError) as err:
        open_exec(bad, "default", "p", None, ["true"], 5)
    assert err.value.exit_code == 3 and "cannot reach the Kubernetes API server" in err.value.message
