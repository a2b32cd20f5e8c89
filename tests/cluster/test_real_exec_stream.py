"""kjob's exec path (kjob.cluster.exec_stream.open_exec, what fetch-ckpt and delete use)
against the real API server's exec, which kwok serves: stdout arrives byte for byte over
many websocket frames, stderr and the exit status come on their own channels, and a
failed handshake is kjob's own error."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]


def _pod(real, name: str = "p") -> str:
    pod = {"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "busybox:1"}], "restartPolicy": "Never"}}
    real.api.create(real.path("pods"), pod)
    wait_for(f"pod {name} Running", lambda: (real.api.get(real.path("pods", name)) or {}).get("status", {}).get("phase") == "Running", 60)
    return name


def _exec(kube, real, argv: list[str], pod: str = "p"):
    """Run argv through kjob's exec; (stdout, stream) once the stream has ended."""
    from kjob.cluster.exec_stream import open_exec

    stream = open_exec(kube, real.ns, pod, "main", argv, 30.0)
    out = bytearray()
    with stream:
        for chunk in stream:
            out += chunk
    return bytes(out), stream


@pytest.fixture
def kube(real):
    from kjob.cluster.api import connect

    return connect(str(real.kubeconfig))


def test_cat_of_every_byte_value_arrives_whole_with_exit_0(real, kube):
    _pod(real)
    # 5 MB, every byte value, not a multiple of any frame size: many frames, a short last one.
    data = os.urandom(5 * 1024 * 1024 + 12345) + bytes(range(256))
    (real.pod_dir("p") / "blob").write_bytes(data)
    out, stream = _exec(kube, real, ["cat", "blob"])
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest() and len(out) == len(data)
    assert (stream.exit_code(), stream.cut, stream.stderr_text()) == (0, False, "")


def test_tar_of_a_checkpoint_folder_extracts_to_the_same_files(real, kube):
    _pod(real)
    folder = real.pod_dir("p") / "ckpt"
    folder.mkdir()
    files = {f"epoch-{i:04d}.pt": os.urandom(300_000 * i) for i in range(1, 4)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    out, stream = _exec(kube, real, ["tar", "cf", "-", "-C", "ckpt", *files])
    assert stream.exit_code() == 0
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert got == files


def test_stderr_and_a_failed_command_come_apart_from_stdout(real, kube):
    from kjob.errors import ClusterUnavailable

    _pod(real)
    out, stream = _exec(kube, real, ["sh", "-c", "printf 'partial out'; echo 'tar: epoch-0009.pt: Cannot open' >&2; exit 3"])
    assert out == b"partial out" and not stream.cut
    assert stream.stderr_text() == "tar: epoch-0009.pt: Cannot open"
    # A kubelet reports a non-zero exit as Status NonZeroExitCode with an ExitCode cause
    # (tests/test_cluster_fetch.py has that frame); kwok v0.8 wraps the exit error, so the
    # API server sends InternalError "... exit status 3" instead: kjob names the command
    # and passes the message on rather than invent an exit code.
    with pytest.raises(ClusterUnavailable) as e:
        stream.exit_code()
    assert e.value.message.startswith("exec sh in pod p failed: ") and "exit status 3" in e.value.message


def test_a_command_writing_only_stderr_succeeds_with_it_on_the_side(real, kube):
    _pod(real)
    out, stream = _exec(kube, real, ["sh", "-c", "echo 'tar: removing leading /' >&2"])
    assert (out, stream.exit_code(), stream.stderr_text()) == (b"", 0, "tar: removing leading /")


def test_an_exec_into_a_missing_pod_is_not_found(real, kube):
    from kjob.cluster.exec_stream import open_exec
    from kjob.errors import NotFound

    with pytest.raises(NotFound) as e:
        open_exec(kube, real.ns, "no-such-pod", "main", ["cat", "index.json"], 30.0)
    assert 'pods/exec "no-such-pod" not found' in e.value.message
