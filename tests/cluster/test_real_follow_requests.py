"""Issue 24 point 3 on the real API server: a `kjob logs -f --all` session lists the job's
pods at most once a poll, however many replicas it follows (each used to list them all
before every reconnect of its stream). Counted by kube-apiserver's own
apiserver_request_total: during the session only kjob lists pods within a namespace (the
controllers' informers list cluster-wide, then watch), and only kjob GETs the MPIJob, once
per poll of its main loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from waiting import time_scale, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 * time_scale())]

WORKERS = 12  # 13 pods of 2 CPUs: they fit on the harness's two kwok nodes
POLLS = 10
POLL_SECONDS = 0.2  # KJOB_POLL_SECONDS of the `real` fixture


def requests_total(api, verb: str, resource: str, scope: str) -> int:
    """apiserver_request_total summed over response codes, for the resource itself (no subresource)."""
    wanted = (f'verb="{verb}"', f'resource="{resource}"', f'scope="{scope}"', 'subresource=""')
    total = 0
    for line in api.session.get(api.server + "/metrics", timeout=30).text.splitlines():
        if line.startswith("apiserver_request_total{") and all(w in line for w in wanted):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_following_every_replica_lists_the_pods_once_a_poll(real, run_kjob, tmp_path, monkeypatch):
    spec = yaml.safe_load(Path("examples/smoke.yaml").read_text(encoding="utf-8"))
    spec["workers"] = WORKERS
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(spec))
    assert run_kjob("submit", str(tmp_path / "smoke.yaml")).code == 0
    pods = [p["metadata"]["name"] for p in real.wait_pods("smoke", WORKERS + 1)]
    for pod in pods:
        real.append_log(pod, [f"hello from {pod}"])
    launcher = real.pod("smoke", "launcher")
    # Silent streams are reopened this often (sshd workers: every 10 s): once a poll here.
    monkeypatch.setenv("KJOB_LOG_IDLE_SECONDS", "0.2")

    def polls() -> int:
        return requests_total(real.api, "GET", "mpijobs", "resource")

    def pod_lists() -> int:
        return requests_total(real.api, "LIST", "pods", "namespace")

    # The namespace controller lists the pods of a namespace it deletes (earlier tests' own):
    # count once none is left terminating, so that only kjob lists pods within a namespace.
    wait_for("no namespace terminating", lambda: not [n for n in real.api.items("/api/v1/namespaces")
                                                       if n.get("status", {}).get("phase") == "Terminating"], 120, interval=0.5)
    polls_before, lists_before = polls(), pod_lists()

    def end_after_polls():
        wait_for(f"{POLLS} polls of kjob logs -f", lambda: polls() >= polls_before + POLLS, 120, interval=0.1)
        real.end_pod(launcher, 0)

    threading.Thread(target=end_after_polls, daemon=True).start()
    t0 = time.monotonic()
    r = run_kjob("logs", "smoke", "-f", "--all")
    seconds = time.monotonic() - t0
    made_polls, made_lists = polls() - polls_before, pod_lists() - lists_before
    assert r.code == 0 and r.err.splitlines()[-1] == "job smoke Succeeded", r
    assert sorted(r.out.splitlines()) == sorted(f"[{'launcher' if p == launcher else p.removeprefix('smoke-')}] hello from {p}" for p in pods), r
    # One listing a poll, shared by the 13 followers; a few more for the start and the closing
    # status. A poll is a period of time, not a turn of the main loop: on a loaded machine the
    # loop's GET and its work make a turn longer than the period, while a listing is made
    # again each period (it was 24 lists to 17 turns beside the suite). Unshared, every
    # follower listed before each reconnect of its silent stream: 13 times as many.
    assert made_lists <= seconds / POLL_SECONDS + 4, (made_lists, made_polls, seconds)
    assert made_polls >= POLLS, made_polls
