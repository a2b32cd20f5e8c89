"""kjob side by side with what a user would type instead, on the real servers (issue 16 item 10).

Starts the real control plane of tests/cluster (API server, etcd, scheduler,
controller-manager, kwok nodes, the real mpi-operator), submits examples/smoke.yaml with
kjob, and on the same launcher pod, in one run, times whole processes:

  fetch   `kjob fetch-ckpt smoke --all`   vs  `kubectl cp NS/LAUNCHER:/checkpoints/smoke/checkpoints DEST`
          of the same --ckpt-mb checkpoint folder (4 files); kjob verifies every sha256,
          kubectl does not
  logs    `kjob logs smoke -f`            vs  `kubectl logs -f LAUNCHER` of the same --lines
          lines: the time from the start of the process to the last line on its stdout
          (kwok never ends a follow stream, so neither command exits by itself)
  status  `kjob status smoke`             vs  `kubectl get mpijob smoke` followed by
          `kubectl get pods -l training.kubeflow.org/job-name=smoke` (what a user types to see
          the job and its pods; kjob status shows both, and the pods' reasons and events)

Runs alternate between the two tools. Per command: median wall s, median CPU s of the
process (os.wait4), peak RSS (GNU time's %M). kubectl is the one tests/cluster/build.sh builds, of the same
Kubernetes release as the API server.

    .venv/bin/python bench/kjob_vs_kubectl.py [--ckpt-mb 1024] [--lines 100000] [--runs 3] [--status-runs 10] [--cluster DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
JOB = "smoke"
JOB_LABEL = "training.kubeflow.org/job-name"
# Peak RSS comes from GNU time around each command: a child's ru_maxrss (os.wait4) starts
# at this parent's own RSS when it forks (Linux carries the high-water mark over exec).
TIME = ["/usr/bin/time", "-f", "maxrss_kb=%M"]


def peak_rss_mb(stderr: bytes) -> float:
    m = re.findall(rb"maxrss_kb=(\d+)", stderr)
    return int(m[-1]) / 1024 if m else float("nan")


def run_timed(argv: list[str], env: dict) -> dict:
    """Run to the end; wall s, CPU s and peak RSS MB of that one process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*TIME, *argv], env=env, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        said = err.read()
        if code:
            raise SystemExit(f"{' '.join(argv)} failed ({code}): {said.decode(errors='replace')[-2000:]}")
        out.seek(0)
        return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak_rss_mb(said),
                "out": out.read().decode(errors="replace")}


def follow_until(argv: list[str], env: dict, lines: int, last: str) -> dict:
    """Start a follow; the time until its `lines`-th line is on stdout, then stop it."""
    import psutil

    err = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen([*TIME, *argv], env=env, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
    n, tail = 0, b""
    while n < lines:
        chunk = proc.stdout.read1(1 << 20)
        if not chunk:
            break
        n += chunk.count(b"\n")
        tail = (tail + chunk)[-200:]
    wall = time.perf_counter() - t0
    for child in psutil.Process(proc.pid).children():  # the command under time, which then reports
        child.terminate()
    _, _, usage = os.wait4(proc.pid, 0)
    proc.stdout.close()
    err.seek(0)
    rss = peak_rss_mb(err.read())
    err.close()
    if n != lines or not tail.rstrip(b"\n").endswith(last.encode()):
        raise SystemExit(f"{' '.join(argv)}: {n} lines, ending {tail[-80:]!r}; expected {lines} ending {last!r}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": rss}


def summarize(name: str, rs: list[dict]) -> dict:
    return {"command": name, "runs": len(rs), **{k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "peak_rss_mb")},
            "min_wall_s": min(r["wall_s"] for r in rs)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt-mb", type=int, default=1024)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--status-runs", type=int, default=10)
    ap.add_argument("--only", default="fetch,logs,status")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cluster", help="the --dir of a running `tests/cluster/controlplane.py up` (default: start one)")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    sys.path.insert(0, str(ROOT / "tests" / "cluster"))
    sys.path.insert(0, str(ROOT / "tests"))
    from ckpt_helpers import write_checkpoints
    from cluster_kit import control_plane, fresh_namespace
    from controlplane import CLAIMS, build_dir, create_bound_claims, pv_name
    from waiting import wait_for
    from nodeside import append_log

    built = build_dir()
    kubectl = str(built / "bin" / "kubectl")
    sys.path.insert(0, str(ROOT / "bench"))
    from plain_install import plain_kjob

    kjob = [str(plain_kjob())]  # as a user installs it, not the tests' editable .venv
    results: dict[str, list[dict]] = {}

    def record(name: str, res: dict) -> None:
        results.setdefault(name, []).append(res)
        print(f"  {name:34s} {res['wall_s']:7.3f} s  cpu {res['cpu_s']:6.2f} s  peak RSS {res['peak_rss_mb']:6.1f} MB"
              f"  (load {os.getloadavg()[0]:.1f})", flush=True)

    with tempfile.TemporaryDirectory(prefix="kjob-bench-kubectl-") as tmp, control_plane(args.cluster, with_operators=True) as plane:
        tmp = Path(tmp)
        api = plane.api
        fresh_namespace(api, NAMESPACE)
        try:
            for claim in CLAIMS:
                api.delete(f"/api/v1/persistentvolumes/{pv_name(NAMESPACE, claim)}")  # left by an interrupted run
            create_bound_claims(api, NAMESPACE)
            kubeconfig = plane.kubeconfig_for(tmp / "kubeconfig", NAMESPACE)
            env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
            run_timed([*kjob, "submit", "examples/smoke.yaml"], env)

            def launcher():
                pods = api.items(f"/api/v1/namespaces/{NAMESPACE}/pods", labelSelector=f"{JOB_LABEL}={JOB}")
                ok = [p for p in pods if p["metadata"]["name"].startswith(f"{JOB}-launcher") and p["status"].get("phase") == "Running"]
                return ok[0] if ok else None
            pod = wait_for("the launcher pod Running", launcher, 120, interval=0.2)
            name, container = pod["metadata"]["name"], pod["spec"]["containers"][0]["name"]
            version = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True).stdout
            print(f"# {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
                  f"kubectl {json.loads(version)['clientVersion']['gitVersion']}; MPIJob {JOB}, launcher pod {name}; "
                  f"load average {os.getloadavg()[0]:.1f} at start", flush=True)

            if "status" in only:
                print(f"status ({args.status_runs} runs each, alternating):", flush=True)
                for i in range(args.status_runs):
                    pair = ["kjob", "kubectl"] if i % 2 == 0 else ["kubectl", "kjob"]
                    for tool in pair:
                        if tool == "kjob":
                            record("kjob status", run_timed([*kjob, "status", JOB], env))
                        else:
                            a = run_timed([kubectl, "get", "mpijob", JOB], env)
                            b = run_timed([kubectl, "get", "pods", "-l", f"{JOB_LABEL}={JOB}"], env)
                            record("kubectl get mpijob + get pods", {
                                "wall_s": a["wall_s"] + b["wall_s"], "cpu_s": a["cpu_s"] + b["cpu_s"],
                                "peak_rss_mb": max(a["peak_rss_mb"], b["peak_rss_mb"])})
                            record("kubectl get pods (alone)", b)

            if "logs" in only:
                lines = [f"epoch {i // 1000} step {i} loss {1.0 / (i + 1):.6f} top1 {i % 100}.0" for i in range(args.lines)]
                append_log(plane.root, NAMESPACE, name, container, lines)
                print(f"logs -f of {args.lines} lines ({args.runs} runs each, alternating):", flush=True)
                for i in range(args.runs):
                    pair = ["kjob", "kubectl"] if i % 2 == 0 else ["kubectl", "kjob"]
                    for tool in pair:
                        if tool == "kjob":
                            record("kjob logs -f", follow_until([*kjob, "logs", JOB, "-f"], env, args.lines, lines[-1]))
                        else:
                            record("kubectl logs -f", follow_until([kubectl, "logs", "-f", name, "-c", container], env, args.lines, lines[-1]))

            if "fetch" in only:
                n = 4
                each = (args.ckpt_mb << 20) // n
                write_checkpoints(plane.root / "checkpoints" / JOB / "checkpoints", [each] * n)
                print(f"fetch of {n} x {each >> 20} MiB ({args.runs} runs each, alternating):", flush=True)
                for i in range(args.runs):
                    pair = ["kjob", "kubectl"] if i % 2 == 0 else ["kubectl", "kjob"]
                    for tool in pair:
                        dest = tmp / f"dest-{tool}"
                        shutil.rmtree(dest, ignore_errors=True)
                        if tool == "kjob":
                            record("kjob fetch-ckpt --all", run_timed([*kjob, "fetch-ckpt", JOB, "--all", "--dest", str(dest)], env))
                        else:
                            src = f"{NAMESPACE}/{name}:/checkpoints/{JOB}/checkpoints"
                            record("kubectl cp", run_timed([kubectl, "cp", "-c", container, src, str(dest)], env))
                        got = sum(f.stat().st_size for f in dest.glob("epoch-*.pt"))
                        if got != each * n:
                            raise SystemExit(f"{tool}: {got} bytes in {dest}, expected {each * n}")
                        shutil.rmtree(dest)
        finally:
            api.delete(f"/api/v1/namespaces/{NAMESPACE}")
            for claim in CLAIMS:
                api.delete(f"/api/v1/persistentvolumes/{pv_name(NAMESPACE, claim)}")

    table = [summarize(k, v) for k, v in results.items()]
    print("\ncommand                             median wall s   min wall s   median CPU s   median peak RSS MB")
    for s in table:
        print(f"{s['command']:34s} {s['wall_s']:14.3f} {s['min_wall_s']:12.3f} {s['cpu_s']:14.2f} {s['peak_rss_mb']:20.1f}")
    by = {s["command"]: s for s in table}
    for a, b in (("kjob fetch-ckpt --all", "kubectl cp"), ("kjob logs -f", "kubectl logs -f"),
                 ("kjob status", "kubectl get mpijob + get pods")):
        if a in by and b in by:
            print(f"ratio {a} / {b}: {by[a]['wall_s'] / by[b]['wall_s']:.2f} (below 1: kjob faster)")
    if args.json:
        print(json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
