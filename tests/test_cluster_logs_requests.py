"""`kjob logs -f --all` at scale (issue 24 point 3): the API requests of a session do not
grow with the number of replicas. The followers share one listing of the job's pods, made
at most about once a poll, and list Events at most once a poll and only while a pod is
pending. The fake API server counts the requests; each session lasts a fixed number of
the main loop's polls (its GET of the job), so the counts compare across replica counts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)  # a bound against hangs, scaled by KJOB_TEST_TIME_SCALE

ROOT = Path(__file__).resolve().parents[1]
POLLS = 8  # main-loop rounds a session lasts


def submit_with_workers(kube, run_kjob, tmp_path, workers: int) -> None:
    spec = tmp_path / "smoke.yaml"
    spec.write_text((ROOT / "examples" / "smoke.yaml").read_text().replace("\nworkers: 2\n", f"\nworkers: {workers}\n"))
    assert run_kjob("submit", str(spec)).code == 0


def counts(kube) -> dict[str, int]:
    return {"polls": kube.requests("get", "mpijobs"), "pod lists": kube.requests("list", "pods"),
            "event lists": kube.requests("list", "events"), "log streams": kube.requests("get", "pods/log")}


def after_polls(kube, polls: int, then) -> threading.Thread:
    """Run `then` once the session's main loop has looked at the job `polls` more times."""
    def wait_then():
        kube.wait_for_requests("get", "mpijobs", kube.requests("get", "mpijobs") + polls, timeout=120)
        then()
    t = threading.Thread(target=wait_then, daemon=True)
    t.start()
    return t


def session(kube, run_kjob, *args: str):
    before = counts(kube)
    r = run_kjob("logs", "smoke", "-f", "--all", *args)
    return r, {k: v - before[k] for k, v in counts(kube).items()}


@pytest.mark.parametrize("workers", [2, 24])
def test_following_silent_running_replicas_lists_pods_once_a_poll(kube, run_kjob, tmp_path, monkeypatch, workers):
    """Every stream is silent and reconnected twice a poll (as sshd workers are every
    KJOB_LOG_IDLE_SECONDS): each reconnect used to list all the job's pods."""
    monkeypatch.setenv("KJOB_POLL_SECONDS", "0.2")
    monkeypatch.setenv("KJOB_LOG_IDLE_SECONDS", "0.1")
    submit_with_workers(kube, run_kjob, tmp_path, workers)
    pods = kube.run_job("smoke")
    for pod in pods:
        kube.append_log(pod, [f"up {pod}"])
    after_polls(kube, POLLS, lambda: kube.finish_job("smoke"))
    r, made = session(kube, run_kjob)
    assert r.code == 0, r
    assert len(r.out.splitlines()) == workers + 1 and len(set(r.out.splitlines())) == workers + 1
    assert made["event lists"] <= 1, made  # nothing was pending: only the closing status looks at them
    assert made["pod lists"] <= made["polls"] + 4, made


@pytest.mark.parametrize("workers", [2, 24])
def test_waiting_replicas_share_one_pod_and_one_event_list_a_poll(kube, run_kjob, tmp_path, monkeypatch, workers):
    """Every pod is pending: each follower used to list the pods and the events every poll.
    The reason still reaches the user, from the shared event listing."""
    monkeypatch.setenv("KJOB_POLL_SECONDS", "0.2")
    submit_with_workers(kube, run_kjob, tmp_path, workers)
    pods = kube.start_job("smoke")
    kube.unschedulable(pods[-1], "0/3 nodes are available: 3 Insufficient cpu.")
    after_polls(kube, POLLS, lambda: kube.set_condition("smoke", "Failed", reason="JobFailed", message="gave up"))
    r, made = session(kube, run_kjob)
    assert r.code == 1, r
    assert f"waiting for worker-{workers - 1} ({pods[-1]}) to start: FailedScheduling: 0/3 nodes are available: 3 Insufficient cpu." in r.err
    assert made["pod lists"] <= made["polls"] + 4, made
    assert 1 <= made["event lists"] <= made["polls"] + 4, made
