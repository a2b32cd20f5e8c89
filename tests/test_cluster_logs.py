"""`kjob logs`: following across stream cuts and restarts, replicas, --save, one-shot."""

from __future__ import annotations

import threading
import time

import pytest

from kjob.cluster.logs import Cursor, format_ts, parse_ts
from kjob.render.manifests import render_objects
from kjob.spec.load import load_spec

pytestmark = pytest.mark.timeout(180)  # a bound against hangs, scaled by KJOB_TEST_TIME_SCALE


def submit(kube, run_kjob, spec="examples/smoke.yaml") -> list[str]:
    assert run_kjob("submit", spec).code == 0
    name = render_objects(load_spec(spec))[0]["metadata"]["name"]
    return kube.run_job(name)


def in_background(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_cursor_drops_repeats_at_one_timestamp():
    c = Cursor()
    assert [c.accept(t) for t in (1, 1, 2, 2, 2)] == [True] * 5
    c.reconnect()  # the server resends from the start of the second
    assert [c.accept(t) for t in (1, 2, 2, 2, 2, 3)] == [False, False, False, False, True, True]
    assert parse_ts(format_ts(1_790_000_000_123_456_789)) == 1_790_000_000_123_456_789
    assert parse_ts("2026-11-23T04:00:00.5Z") - parse_ts("2026-11-23T04:00:00Z") == 500_000_000


def test_follow_survives_five_stream_cuts_in_10000_lines(kube, run_kjob):
    pods = submit(kube, run_kjob)
    lines = [f"step {i:05d} loss {1 / (i + 1):.6f}" for i in range(10_000)]
    # Bursts of 100 lines share one timestamp (one clock tick), 0.2 s apart: a resumed
    # stream restarts at a whole second, in the middle of earlier bursts.
    base = (time.time_ns() // 10**9 - 30) * 10**9
    for b in range(50):
        kube.append_log(pods[0], lines[b * 100 : (b + 1) * 100], timestamp_ns=base + b * 200_000_000)
    cuts = [kube.fault("get", "pods/log", cut_after_bytes=40_000 + 1_357 * i) for i in range(5)]

    def rest():
        time.sleep(0.3)
        for b in range(50, 100):
            kube.append_log(pods[0], lines[b * 100 : (b + 1) * 100], timestamp_ns=base + b * 200_000_000)
        time.sleep(0.3)
        kube.finish_job("smoke")

    in_background(rest)
    r = run_kjob("logs", "smoke", "-f")
    assert r.code == 0, r
    assert r.out.splitlines() == lines
    assert [c.hits for c in cuts] == [1] * 5
    assert r.err.splitlines()[-1] == "job smoke Succeeded"


def test_cuts_while_reading_a_finished_pod_lose_nothing(kube, run_kjob):
    """The job is over before kjob connects: the log of a terminated container is read
    to its end through cuts, not given up after the first one."""
    pods = submit(kube, run_kjob)
    lines = [f"line {i}" for i in range(3000)]
    kube.append_log(pods[0], lines, timestamp_ns=(time.time_ns() // 10**9 - 5) * 10**9)
    kube.finish_job("smoke")
    cuts = [kube.fault("get", "pods/log", cut_after_bytes=3_000 + 4_000 * i) for i in range(5)]
    r = run_kjob("logs", "smoke", "-f")
    assert r.out.splitlines() == lines and [c.hits for c in cuts] == [1] * 5


def test_a_silent_stream_is_resumed_without_counting_as_a_failure(kube, run_kjob, monkeypatch):
    monkeypatch.setenv("KJOB_LOG_IDLE_SECONDS", "0.1")
    monkeypatch.setenv("KJOB_RETRIES", "1")  # 3 failures would give up
    pods = submit(kube, run_kjob)
    kube.append_log(pods[0], ["before"])

    def later():
        time.sleep(1.0)  # ~10 idle timeouts
        kube.append_log(pods[0], ["after"])
        kube.finish_job("smoke")

    in_background(later)
    r = run_kjob("logs", "smoke", "-f")
    assert (r.code, r.out) == (0, "before\nafter\n")


def test_follow_continues_through_a_container_restart(kube, run_kjob):
    pods = submit(kube, run_kjob)
    kube.append_log(pods[0], [f"first {i}" for i in range(50)])

    def crash_and_restart():
        kube.wait_for_requests("get", "pods/log", 1)  # kjob follows the first container
        time.sleep(0.1)
        kube.restart_container(pods[0], exit_code=137)
        kube.append_log(pods[0], [f"second {i}" for i in range(50)])
        time.sleep(0.3)
        kube.finish_job("smoke")

    in_background(crash_and_restart)
    r = run_kjob("logs", "smoke", "-f")
    assert r.out.splitlines() == [f"first {i}" for i in range(50)] + [f"second {i}" for i in range(50)]
    prev = run_kjob("logs", "smoke", "--previous")
    assert prev.out.splitlines() == [f"first {i}" for i in range(50)]


def test_follow_waits_for_the_pod_and_moves_to_a_new_launcher(kube, run_kjob):
    assert run_kjob("submit", "examples/smoke.yaml").code == 0

    def operator():
        time.sleep(0.2)
        pods = kube.run_job("smoke")
        kube.append_log(pods[0], ["from the first launcher"])
        kube.wait_for_requests("get", "pods/log", 1)
        kube.pod_terminated(pods[0], exit_code=1, reason="Error")
        # The follower reads the ended container once more before the pod may go.
        kube.wait_for_requests("get", "pods/log", 2)
        time.sleep(0.1)
        launcher = kube.replace_pod(pods[0])
        kube.pod_running(launcher)
        kube.append_log(launcher, ["from the retried launcher"])
        time.sleep(0.3)
        kube.finish_job("smoke")

    in_background(operator)
    r = run_kjob("logs", "smoke", "-f")
    assert r.out.splitlines() == ["from the first launcher", "from the retried launcher"]
    assert "waiting for the launcher pod of smoke to be created" in r.err


def test_all_replicas_prefixed_and_saved(kube, run_kjob, tmp_path):
    pods = submit(kube, run_kjob)
    for pod in pods:
        kube.append_log(pod, [f"hello from {pod}"])
    in_background(lambda: (time.sleep(0.3), kube.finish_job("smoke")))
    r = run_kjob("logs", "smoke", "-f", "--all", "--save", str(tmp_path / "saved"))
    assert sorted(r.out.splitlines()) == sorted(f"[{rep}] hello from {pod}" for rep, pod in zip(["launcher", "worker-0", "worker-1"], pods))
    for pod in pods:
        assert (tmp_path / "saved" / f"{pod}.log").read_text() == f"hello from {pod}\n"


def test_one_shot_options(kube, run_kjob):
    pods = submit(kube, run_kjob)
    kube.append_log(pods[2], [f"w1 {i}" for i in range(10)])
    r = run_kjob("logs", "smoke", "--replica", "worker-1", "--tail", "3")
    assert r.out.splitlines() == ["w1 7", "w1 8", "w1 9"]
    stamped = run_kjob("logs", "smoke", "--replica", "worker-1", "--timestamps", "--tail", "1").out.split(" ")
    assert len(stamped[0]) == 30 and stamped[0].endswith("Z") and stamped[1:] == ["w1", "9\n"]
    assert run_kjob("logs", "smoke", "--replica", "worker-1", "--since", "1h").out.count("\n") == 10
    missing = run_kjob("logs", "smoke", "--replica", "worker-7")
    assert missing.code == 5
    assert missing.err == 'Error: job "smoke" has no pod for worker-7 (replicas: launcher, worker-0, worker-1)\n'
    bad = run_kjob("logs", "smoke", "--since", "soon")
    assert bad.code == 2 and "'soon' is not a duration like 30s, 5m, 2h" in bad.err


def test_follow_ends_with_a_failed_job_and_exit_1(kube, run_kjob):
    pods = submit(kube, run_kjob)
    kube.append_log(pods[0], ["Traceback (most recent call last):", "RuntimeError: NCCL error"])
    in_background(lambda: (time.sleep(0.2), kube.finish_job("smoke", "Failed", exit_code=1)))
    r = run_kjob("logs", "smoke", "-f")
    assert r.code == 1
    assert r.out.splitlines() == ["Traceback (most recent call last):", "RuntimeError: NCCL error"]
    assert r.err.splitlines()[-1] == "job smoke Failed"


def test_all_replicas_end_when_the_job_succeeds_with_workers_still_running(kube, run_kjob, monkeypatch):
    monkeypatch.setenv("KJOB_LOG_IDLE_SECONDS", "0.2")
    pods = submit(kube, run_kjob)
    for pod in pods:
        kube.append_log(pod, [f"up {pod}"])

    def finish():
        kube.wait_for_requests("get", "pods/log", 3)
        kube.finish_job("smoke", keep_workers_running=True)

    in_background(finish)
    r = run_kjob("logs", "smoke", "-f", "--all")
    assert r.code == 0 and len(r.out.splitlines()) == 3
    assert r.err.splitlines()[-2:] == [
        "warning: job Succeeded while 2 worker pod(s) are still Running (cleanPodPolicy Running): they hold their GPUs until `kjob delete smoke`",
        "job smoke Succeeded",
    ]


def test_colour_prefixes_per_replica(kube, run_kjob):
    from kjob.backend import LogOptions
    from kjob.cluster.backend import ClusterBackend

    pods = submit(kube, run_kjob)
    for pod in pods:
        kube.append_log(pod, ["x"])
    out: list[str] = []
    ClusterBackend().logs("smoke", LogOptions(all_replicas=True, color=True), out.append)
    assert out == ["\033[36m[launcher]\033[0m x", "\033[33m[worker-0]\033[0m x", "\033[32m[worker-1]\033[0m x"]
