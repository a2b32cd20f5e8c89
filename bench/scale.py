"""kjob's commands at 2, 32 and 128 workers on the real control plane (issue 24 point 3).

Starts the real control plane of tests/cluster with 129 kwok nodes of 8 GPUs each and the
API server's audit log on, and per worker count submits examples/resnext50.yaml (8 GPUs a
worker: one worker per node) with that many workers, waits until every pod is Running,
writes a few log lines per pod and then times whole `kjob` processes:

  status               kjob status JOB
  logs --all           kjob logs JOB --all --tail 5
  logs -f --all        kjob logs JOB -f --all for --follow-s seconds (default 60): every
                       stream silent after its first lines, so each is reconnected every
                       KJOB_LOG_IDLE_SECONDS (10 s), as sshd workers' are
  fetch-ckpt           kjob fetch-ckpt JOB (the latest of 3 x 1 MiB checkpoints)
  delete               kjob delete JOB (asks the launcher for a checkpoint through exec;
                       this script plays the trainer, which exits 143 on SIGUSR1)

Per command: wall s, CPU s (os.wait4), peak RSS (GNU time), and the API requests the
command made, read from the audit log (stage RequestReceived; kjob's client by its
user agent): all of them, and those other than log streams and exec. For the follow,
also its CPU while the streams are silent (psutil, from 15 s in to the end) as a share
of one core, and the requests per minute. `--before DIR` follows with another
checkout's submitter/ too (e.g. `git archive COMMIT submitter | tar -x -C DIR`), in the
same cluster and minutes.

    .venv/bin/python bench/scale.py [--workers 2,32,128] [--follow-s 60] [--before DIR/submitter] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
JOB = "resnext50"
NODES = 129
JOB_LABEL = "training.kubeflow.org/job-name"
KJOB_AGENT = "OpenAPI-Generator/"  # the kubernetes client's user agent; the harness uses python-requests
STREAMS = {"log", "exec"}  # subresources that are streams: counted apart
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                "omitStages": ["ResponseStarted", "ResponseComplete", "Panic"],  # one event per request, on arrival
                "rules": [{"level": "Metadata"}]}
STEADY_FROM_S = 15.0  # the follow's start-up (imports, first connections) is over by then
# kwok serves the log follows of every node from one process, and each follow holds an
# inotify instance (the kubelet's log reader, k8s.io/cri-client): past this limit, which
# is per user and often 128, the follows end at once, which no kubelet does.
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")


class Audit:
    """kjob's requests in the API server's audit log, from a point on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self, namespace: str) -> collections.Counter:
        """(verb, resource[/subresource]) -> count of kjob's requests since mark(): those of
        its client, and the execs in `namespace` (kjob's websocket sends no user agent; only
        kjob execs there)."""
        seen: collections.Counter = collections.Counter()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for raw in f:
                if KJOB_AGENT.encode() not in raw and b'"exec"' not in raw:
                    continue
                ev = json.loads(raw)
                ref = ev.get("objectRef") or {}
                exec_here = ref.get("subresource") == "exec" and ref.get("namespace") == namespace
                if not (ev.get("userAgent", "").startswith(KJOB_AGENT) or exec_here):
                    continue
                what = ref.get("resource", ev.get("requestURI", "?").split("?")[0]) + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                seen[(ev["verb"], what)] += 1
        return seen


def counted(requests: collections.Counter) -> dict:
    streams = sum(n for (_, what), n in requests.items() if what.partition("/")[2] in STREAMS)
    return {"requests": sum(requests.values()) - streams, "streams": streams,
            "by_kind": {f"{verb} {what}": n for (verb, what), n in sorted(requests.items())}}


def follow_for(argv: list[str], env: dict, seconds: float) -> dict:
    """Run a follow for `seconds`, then stop it as Ctrl-C does; wall, CPU, steady CPU, RSS."""
    import psutil
    from kjob_vs_kubectl import TIME, peak_rss_mb

    err = tempfile.TemporaryFile()
    out = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen([*TIME, *argv], env=env, stdout=out, stderr=err, cwd=ROOT)
    kjob = None
    while kjob is None and proc.poll() is None:
        kids = psutil.Process(proc.pid).children()
        kjob = kids[0] if kids else None
        time.sleep(0.01)
    steady = None
    deadline = t0 + seconds
    while time.perf_counter() < deadline and proc.poll() is None:
        time.sleep(min(0.5, max(deadline - time.perf_counter(), 0)))
        if steady is None and time.perf_counter() - t0 >= STEADY_FROM_S and kjob is not None:
            steady = (time.perf_counter(), sum(kjob.cpu_times()[:2]))
    end = (time.perf_counter(), sum(kjob.cpu_times()[:2])) if kjob is not None and proc.poll() is None else None
    if kjob is not None and proc.poll() is None:
        kjob.send_signal(signal.SIGINT)
        try:
            kjob.wait(10)
        except psutil.TimeoutExpired:
            kjob.kill()
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err.seek(0)
    said = err.read()
    out.seek(0)
    lines = out.read().count(b"\n")
    err.close()
    out.close()
    share = (end[1] - steady[1]) / (end[0] - steady[0]) if steady and end else float("nan")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "steady_cpu_share": share,
            "peak_rss_mb": peak_rss_mb(said), "lines": lines}


def worker_spec(tmp: Path, workers: int) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / f"{JOB}.yaml").read_text())
    spec["workers"] = workers
    path = tmp / f"{JOB}-{workers}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_at(plane, audit: Audit, workers: int, args, tmp: Path) -> list[dict]:
    """Every command at one worker count; returns one row per command."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ckpt_helpers import write_checkpoints
    from cluster_kit import fresh_namespace
    from controlplane import CLAIMS, create_bound_claims, pv_name
    from waiting import wait_for
    from kjob_vs_kubectl import run_timed
    from nodeside import append_log

    api, ns = plane.api, f"scale-{workers}"
    fresh_namespace(api, ns)
    for claim in CLAIMS:
        api.delete(f"/api/v1/persistentvolumes/{pv_name(ns, claim)}")  # left by an interrupted run
    create_bound_claims(api, ns)
    kubeconfig = plane.kubeconfig_for(tmp / f"kubeconfig-{ns}", ns)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KJOB_")}
    env |= {"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT / "submitter")}
    kjob = [sys.executable, "-m", "kjob"]
    rows = []

    def measure(command: str, res: dict) -> None:
        row = {"workers": workers, "command": command, **{k: v for k, v in res.items() if k != "out"}, **counted(audit.since_mark(ns))}
        rows.append(row)
        extra = f"  steady CPU {row['steady_cpu_share']:.1%} of a core" if "steady_cpu_share" in row else ""
        print(f"  {workers:4d} workers  {command:24s} {row['wall_s']:7.2f} s  cpu {row['cpu_s']:6.2f} s  "
              f"RSS {row['peak_rss_mb']:6.1f} MB  requests {row['requests']:4d}  streams {row['streams']:4d}{extra}"
              f"  (load {os.getloadavg()[0]:.1f})", flush=True)
        print(f"        {row['by_kind']}", flush=True)

    try:
        ckpt = plane.root / "checkpoints" / JOB / "checkpoints"
        write_checkpoints(ckpt, [1 << 20] * 3)
        run_timed([*kjob, "submit", str(worker_spec(tmp, workers))], env)
        t0 = time.monotonic()

        def all_running():
            pods = api.items(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"{JOB_LABEL}={JOB}")
            up = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
            return up if len(up) == workers + 1 else None
        pods = wait_for(f"{workers + 1} pods Running", all_running, 900, interval=1.0)
        print(f"  {workers} workers: {len(pods)} pods Running after {time.monotonic() - t0:.0f} s", flush=True)
        for pod in pods:
            append_log(plane.root, ns, pod["metadata"]["name"], pod["spec"]["containers"][0]["name"],
                       [f"{pod['metadata']['name']} line {i}" for i in range(5)])

        audit.mark()
        measure("status", run_timed([*kjob, "status", JOB], env))
        audit.mark()
        measure("logs --all --tail 5", run_timed([*kjob, "logs", JOB, "--all", "--tail", "5"], env))
        audit.mark()
        measure(f"logs -f --all ({args.follow_s:g} s)", follow_for([*kjob, "logs", JOB, "-f", "--all"], env, args.follow_s))
        if args.before:
            audit.mark()
            measure(f"before: logs -f --all ({args.follow_s:g} s)",
                    follow_for([*kjob, "logs", JOB, "-f", "--all"], {**env, "PYTHONPATH": args.before}, args.follow_s))
        audit.mark()
        measure("fetch-ckpt", run_timed([*kjob, "fetch-ckpt", JOB, "--dest", str(tmp / f"ckpt-{workers}")], env))

        launcher = next(p["metadata"]["name"] for p in pods if "-launcher" in p["metadata"]["name"])
        signals = plane.root / "pid1-signals.log"  # what the stand-in PID 1 of exec'd commands received (tests/cluster/pid1.py)
        before = signals.read_text().count("SIGUSR1") if signals.exists() else 0

        def trainer():  # the launcher's PID 1 answers SIGUSR1 by checkpointing and exiting 143
            wait_for("SIGUSR1 at the launcher", lambda: signals.exists() and signals.read_text().count("SIGUSR1") > before, 120, interval=0.1)
            from nodeside import end_pod
            end_pod(api, ns, launcher, 143)
        threading.Thread(target=trainer, daemon=True).start()
        audit.mark()
        measure("delete", run_timed([*kjob, "delete", JOB], env))
        wait_for(f"the pods of {ns} gone", lambda: not api.items(f"/api/v1/namespaces/{ns}/pods"), 600, interval=1.0)
    finally:
        api.delete(f"/api/v1/namespaces/{ns}")
        for claim in CLAIMS:
            api.delete(f"/api/v1/persistentvolumes/{pv_name(ns, claim)}")
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="2,32,128")
    ap.add_argument("--follow-s", type=float, default=60.0)
    ap.add_argument("--before", help="another checkout's submitter/ folder: its logs -f --all is measured too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests" / "cluster"))
    from cluster_kit import control_plane

    most = max(int(w) for w in args.workers.split(","))
    limit = int(INOTIFY_LIMIT.read_text()) if INOTIFY_LIMIT.exists() else None
    if limit is not None and limit < 2 * (most + 1):
        print(f"warning: {INOTIFY_LIMIT} is {limit}: kwok's log follows past it end at once, so logs -f at {most} workers "
              f"measures that; raise it first (sysctl fs.inotify.max_user_instances={max(1024, 4 * most)})", flush=True)

    with tempfile.TemporaryDirectory(prefix="kjob-bench-scale-") as tmp:
        tmp = Path(tmp)
        (tmp / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        audit_log = tmp / "audit.log"
        flags = [f"--audit-policy-file={tmp / 'audit-policy.yaml'}", f"--audit-log-path={audit_log}", "--audit-log-maxsize=0"]
        t0 = time.monotonic()
        with control_plane(None, with_operators=True, kwok_nodes=NODES, extra_args={"kube-apiserver": flags}) as plane:
            print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; control plane with {NODES} kwok nodes "
                  f"up in {time.monotonic() - t0:.0f} s; inotify instances {limit}; load average {os.getloadavg()[0]:.1f}; "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                  flush=True)
            audit = Audit(audit_log)
            rows = []
            for workers in (int(w) for w in args.workers.split(",")):
                rows += run_at(plane, audit, workers, args, tmp)

    print("\nworkers  command                           wall s   CPU s  RSS MB  requests  req/min  streams")
    for r in rows:
        per_min = r["requests"] / r["wall_s"] * 60
        print(f"{r['workers']:7d}  {r['command']:32s} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} {r['peak_rss_mb']:7.1f} "
              f"{r['requests']:9d} {per_min:8.1f} {r['streams']:8d}" + (f"  steady CPU {r['steady_cpu_share']:.1%}" if "steady_cpu_share" in r else ""))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
