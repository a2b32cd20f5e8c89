"""The harness itself: kwok's stages, logs and exec work through the real API server, an
exec'd `kill -USR1 1` reaches the stand-in PID 1 and never this machine's, and stopping
the control plane leaves no process behind, its watchdog included, and lets go of its
build folder (in use while it runs, so build.sh does not remove it)."""

from __future__ import annotations

import subprocess

import psutil
import pytest

from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]


def _plain_pod(real, name: str) -> dict:
    pod = {"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "busybox:1"}], "restartPolicy": "Never"}}
    real.api.create(real.path("pods"), pod)
    return wait_for(f"pod {name} Running", lambda: (real.api.get(real.path("pods", name)) or {}).get("status", {}).get("phase") == "Running", 60)




def test_a_pod_is_scheduled_runs_serves_its_log_file_and_ends_with_the_chosen_code(real):
    _plain_pod(real, "p")
    pod = real.api.get(real.path("pods", "p"))
    assert pod["spec"]["nodeName"].startswith("kwok-node-")  # placed by the real scheduler
    real.append_log("p", ["hello", "world"])
    text = real.api.session.get(real.api.server + real.path("pods", "p") + "/log", timeout=10).text
    assert text == "hello\nworld\n"
    real.end_pod("p", 3)
    ended = wait_for("pod p Failed", lambda: (lambda o: o if o["status"]["phase"] == "Failed" else None)(real.api.get(real.path("pods", "p"))), 30)
    assert ended["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_exec_runs_here_in_the_pods_directory_and_pid_1_is_the_stand_in(real):
    _plain_pod(real, "p")
    before = real.signals().count("SIGUSR1")
    from kjob.cluster.api import connect
    from kjob.cluster.exec_stream import open_exec

    # kjob's own exec client, as fetch-ckpt and delete use it (the kubernetes client's
    # stream() leaves its socket to the garbage collector, even closed).
    out = bytearray()
    with open_exec(connect(str(real.kubeconfig)), real.ns, "p", "main",
                   ["sh", "-c", "pwd; tr '\\0' ' ' </proc/1/cmdline; echo; kill -USR1 1"], 30.0) as stream:
        for chunk in stream:
            out += chunk
    out = out.decode()
    cwd, pid1 = out.splitlines()[:2]
    assert cwd == str(real.pod_dir("p"))
    assert "pid1.py" in pid1 and "--signals" in pid1
    wait_for("SIGUSR1 at the stand-in", lambda: real.signals().count("SIGUSR1") == before + 1, 10)
    assert psutil.Process(1).cmdline()[0] != pid1.split()[0]  # this machine's PID 1 is not the stand-in


def test_stopping_leaves_no_process_and_the_plane_starts_again(control_plane):
    started = control_plane.pids()
    assert {p.name() for p in started} >= {"etcd", "kube-apiserver", "kwok", "mpi-operator", "training-operator"}
    watchdog = control_plane.processes.watchdog
    assert watchdog.poll() is None
    # Its build folder is in use while it runs: build.sh's exclusive lock (before pruning) fails.
    lock = control_plane.bin.parent / "in-use.lock"
    assert subprocess.run(["flock", "-xn", str(lock), "true"]).returncode == 1
    control_plane.stop()
    assert watchdog.poll() is not None  # it went with a normal stop (stop() waits for it)
    assert subprocess.run(["flock", "-xn", str(lock), "true"]).returncode == 0
    alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    # Every component's arguments name a file under the plane's own folder.
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(control_plane.root) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    control_plane.start()  # the rest of the session goes on with a fresh one
    assert control_plane.api.get("/api/v1/namespaces/default")
