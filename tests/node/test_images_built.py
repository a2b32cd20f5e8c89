"""The trainer images as images/build-local.sh builds them from images/*/Dockerfile (marker
`node`): run in containerd with runc as the pods run them (the image's own USER, every
capability dropped, seccomp), they have what the rendered manifests rely on
(images/README.md's table): mpiuser uid/gid 1000, sshd serving mpi-operator's kind of key
as that user on port 2222 with the virtual environment on ssh sessions' PATH, mpirun,
and the trainer's --help."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
import pytest

from runtime import containerd, run_in_image

pytestmark = [pytest.mark.node, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def sock(images) -> str:
    return containerd()


@pytest.fixture(params=["pytorch", "mindspore"])
def image(request, images) -> str:
    return images[request.param]


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
    return proc.stdout


def test_the_build_lock_is_free_once_the_images_are_built(sock):
    """build-local.sh starts the node's containerd (a daemon that outlives it) while it
    holds its lock: containerd must not inherit that lock, or the next build waits for ever."""
    lock = Path(os.environ.get("KJOB_CACHE", Path.home() / ".cache" / "kjob")) / "images" / ".lock"
    assert lock.exists()
    free = subprocess.run(["flock", "--nonblock", str(lock), "true"], capture_output=True, text=True, timeout=60)
    if free.returncode != 0:
        holders = [f"{p.pid} {p.name()}" for p in psutil.process_iter() if _has_open(p, lock)]
        pytest.fail(f"{lock} is held by {holders}")


def _has_open(proc, path: Path) -> bool:
    try:
        return any(f.path == str(path) for f in proc.open_files())
    except psutil.Error:
        return False


def test_runs_as_mpiuser_uid_1000(sock, image):
    out = ok(run_in_image(sock, image, ["sh", "-c", 'id; echo "home=$HOME"; getent passwd mpiuser; stat -c "%U %u %a" /home/mpiuser/.ssh']))
    lines = out.splitlines()
    assert lines[0] == "uid=1000(mpiuser) gid=1000(mpiuser) groups=1000(mpiuser)"
    assert lines[2].startswith("mpiuser:x:1000:1000:") and lines[2].split(":")[5] == "/home/mpiuser"
    assert lines[3] == "mpiuser 1000 755"


def test_trainer_help_and_mpirun(sock, image):
    out = ok(run_in_image(sock, image, ["python", "-m", "kjob_trainer.train", "--help"]))
    assert "--output-path" in out and "--synthetic" in out
    out = ok(run_in_image(sock, image, ["bash", "-c", "for c in mpirun prted python; do command -v $c; done; mpirun --version"]))
    assert out.splitlines()[:3] == ["/opt/venv/bin/mpirun", "/opt/venv/bin/prted", "/opt/venv/bin/python"]
    assert "Open MPI) 5." in out


def test_sshd_serves_mpi_operator_key_as_uid_1000(sock, image, tmp_path):
    """The worker's command (sshd -De with the image's config) as uid 1000, with .ssh laid
    out as mpi-operator mounts its Secret: an ECDSA key as id_rsa, its public half as
    authorized_keys, root-owned, mode 0644, read-only. The client side is the image's own
    ssh with kjob.conf (port 2222); the session sees the virtual environment first on PATH
    (sshd's SetEnv), as mpirun's remote prted needs."""
    keys = tmp_path / "ssh"
    keys.mkdir()
    # mpi-operator v0.8 (pkg/controller/mpi_job_controller.go newSSHAuthSecret): a P-521
    # ECDSA key, PEM "EC PRIVATE KEY", stored under the names id_rsa / id_rsa.pub.
    subprocess.run(["openssl", "ecparam", "-name", "secp521r1", "-genkey", "-noout", "-out", str(keys / "id_rsa")], check=True)
    pub = subprocess.run(["ssh-keygen", "-y", "-f", str(keys / "id_rsa")], check=True, capture_output=True, text=True).stdout
    (keys / "id_rsa.pub").write_text(pub)
    (keys / "authorized_keys").write_text(pub)
    for f in keys.iterdir():
        f.chmod(0o644)
    script = (
        "/usr/sbin/sshd -De -f /home/mpiuser/.sshd_config 2>/tmp/sshd.log & "
        "for i in $(seq 50); do ssh -i /home/mpiuser/.ssh/id_rsa -o BatchMode=yes mpiuser@127.0.0.1 "
        "'id -u; command -v prted; echo \"$OPAL_PREFIX\"' 2>/tmp/ssh.err && break; sleep 0.2; done; "
        "cat /home/mpiuser/.sshd/sshd.pid >/dev/null && ps -o user=,args= -C sshd | head -1; kill %1"
    )
    out = ok(run_in_image(sock, image, ["bash", "-c", script], mounts=(f"type=bind,src={keys},dst=/home/mpiuser/.ssh,options=rbind:ro",)))
    lines = out.splitlines()
    assert lines[:3] == ["1000", "/opt/venv/bin/prted", "/opt/venv"], out
    assert lines[3].startswith("mpiuser ") and "/usr/sbin/sshd -De -f /home/mpiuser/.sshd_config" in lines[3], out


def test_nccl_can_load_the_verbs_library(sock, image):
    """What NCCL's IB transport dlopens at its start (rdma-core's libibverbs.so.1, with the
    providers of ibverbs-providers): loaded as the pods' user; without it NCCL would use
    TCP sockets without a word. No NIC here: only the loading is proven."""
    script = ("import ctypes, glob; lib = ctypes.CDLL('libibverbs.so.1'); print('loaded', lib._name); "
              "print('providers', len(glob.glob('/usr/lib/*/libibverbs/lib*-rdmav*.so')))")
    out = ok(run_in_image(sock, image, ["python", "-c", script]))
    lines = out.splitlines()
    assert lines[0] == "loaded libibverbs.so.1", out
    assert int(lines[1].split()[1]) >= 5, out  # mlx4, mlx5, efa, bnxt_re, ... (Ubuntu's package ships ~20)
