"""kjob's exec stream against the `kubernetes` client's own, on the real API server (issue 16 item 8).

Starts the real control plane of tests/cluster (API server, etcd, scheduler, kwok; no
operators), makes one pod, puts a file of --mb megabytes in its folder, and reads
`cat FILE` through the API server's exec websocket in a fresh process per run, with:

  kjob          kjob.cluster.exec_stream.open_exec (what fetch-ckpt and delete use)
  stream        kubernetes.stream.stream(connect_get_namespaced_pod_exec, binary=True,
                _preload_content=False), read with update() / read_stdout() as its
                documentation shows
  wsclient      the same WSClient opened with capture_all=False (ws_client.websocket_call),
                read the same way: the library without its copy of everything read

Each child counts the bytes (and checks the count); the parent reports per run the MB/s
from the child's first request to the last byte, the child's CPU seconds (os.wait4) and
its peak RSS (GNU time's %M). Runs alternate between the variants.

    .venv/bin/python bench/exec_stream_vs_client.py [--mb 1024] [--runs 3] [--variants kjob,stream,wsclient] [--cluster DIR]

Needs root (the control plane runs kwok in its own PID namespace) and the binaries of
tests/cluster/build.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("kjob", "stream", "wsclient")
NAMESPACE = "bench"
POD = "p"


# -- the child: one read of the whole file ----------------------------------------------------
def _child_kjob(kubeconfig: str, path: str) -> int:
    from kjob.cluster.api import connect
    from kjob.cluster.exec_stream import open_exec

    kube = connect(kubeconfig)
    n = 0
    stream = open_exec(kube, NAMESPACE, POD, "main", ["cat", path], 60.0)
    with stream:
        for chunk in stream:
            n += len(chunk)
    assert stream.exit_code() == 0, stream.stderr_text()
    return n


def _read_wsclient(ws) -> int:
    n = 0
    while ws.is_open():
        ws.update(timeout=1)
        if ws.peek_stdout():
            n += len(ws.read_stdout())
    n += len(ws.read_stdout() or b"")
    assert ws.returncode == 0, ws.read_stderr()
    ws.close()
    return n


def _child_stream(kubeconfig: str, path: str) -> int:
    from kubernetes import client, config
    from kubernetes.stream import stream

    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    ws = stream(api.connect_get_namespaced_pod_exec, POD, NAMESPACE, container="main", command=["cat", path],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False, binary=True)
    return _read_wsclient(ws)


def _child_wsclient(kubeconfig: str, path: str) -> int:
    from kubernetes import config
    from kubernetes.stream.ws_client import websocket_call

    api_client = config.new_client_from_config(config_file=kubeconfig)
    query = [("container", "main"), ("command", "cat"), ("command", path), ("stdout", "true"), ("stderr", "true")]
    _, url, headers, _, _ = api_client.param_serialize(method="GET", resource_path=f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}/exec",
                                                       query_params=query, header_params={}, auth_settings=["BearerToken"])
    ws = websocket_call(api_client.configuration, "GET", url, headers=headers, _preload_content=False, binary=True, capture_all=False)
    return _read_wsclient(ws)


def child(variant: str, kubeconfig: str, path: str, size: int) -> None:
    # Imports outside the timed part (importing the kubernetes client takes about a second here).
    import kjob.cluster.api  # noqa: F401
    import kjob.cluster.exec_stream  # noqa: F401
    import kubernetes.stream  # noqa: F401

    t0 = time.perf_counter()
    n = {"kjob": _child_kjob, "stream": _child_stream, "wsclient": _child_wsclient}[variant](kubeconfig, path)
    secs = time.perf_counter() - t0
    if n != size:
        raise SystemExit(f"{variant}: got {n} bytes, expected {size}")
    print(json.dumps({"bytes": n, "secs": secs}))


# -- the parent -------------------------------------------------------------------------------
def run_child(variant: str, kubeconfig: Path, path: str, size: int) -> dict:
    """One child process; its peak RSS and CPU from wait4 (Popen.wait would reap it first)."""
    # GNU time for the peak RSS: a child's own ru_maxrss starts at this parent's RSS.
    argv = ["/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, __file__, "--child", variant, "--kubeconfig", str(kubeconfig), "--path", path, "--size", str(size)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{variant} failed ({proc.returncode}): {err.read().strip()[-2000:]}")
        res = json.loads(out.read().strip().splitlines()[-1])
        rss = re.findall(r"maxrss_kb=(\d+)", err.read())
    return {"variant": variant, "mb_s": res["bytes"] / 1e6 / res["secs"], "secs": res["secs"],
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": int(rss[-1]) / 1024}


def write_file(path: Path, mb: int) -> int:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(mb):
            f.write(i.to_bytes(8, "little") + block[8:])
    return mb << 20


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cluster", help="the --dir of a running `tests/cluster/controlplane.py up` (default: start one)")
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--kubeconfig")
    ap.add_argument("--path")
    ap.add_argument("--size", type=int)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.kubeconfig, args.path, args.size)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    sys.path.insert(0, str(ROOT / "tests" / "cluster"))
    from cluster_kit import control_plane, fresh_namespace
    from waiting import wait_for
    from nodeside import pod_dir

    import kubernetes
    import websocket

    results = []
    with tempfile.TemporaryDirectory(prefix="kjob-bench-exec-") as tmp, control_plane(args.cluster, with_operators=False) as plane:
        api = plane.api
        fresh_namespace(api, NAMESPACE)
        try:
            api.create(f"/api/v1/namespaces/{NAMESPACE}/pods", {"metadata": {"name": POD}, "spec": {
                "containers": [{"name": "main", "image": "busybox:1"}], "restartPolicy": "Never"}})
            wait_for("pod Running", lambda: (api.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}") or {}).get("status", {}).get("phase") == "Running", 60)
            size = write_file(pod_dir(plane.root, NAMESPACE, POD) / "blob", args.mb)
            kubeconfig = plane.kubeconfig_for(Path(tmp) / "kubeconfig", NAMESPACE)
            print(f"# {platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}, kubernetes {kubernetes.__version__}, "
                  f"websocket-client {websocket.__version__}; cat of {args.mb} MiB through kube-apiserver -> kwok exec; "
                  f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
            for r in range(args.runs):
                order = variants if r % 2 == 0 else variants[::-1]
                for v in order:
                    res = run_child(v, kubeconfig, "blob", size)
                    results.append(res)
                    print(f"run {r + 1} {v:9s} {res['mb_s']:7.1f} MB/s  {res['secs']:6.2f} s  cpu {res['cpu_s']:6.2f} s  "
                          f"peak RSS {res['peak_rss_mb']:7.1f} MB  (load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            api.delete(f"/api/v1/namespaces/{NAMESPACE}")
    print("\nvariant     median MB/s   best MB/s   median CPU s   median peak RSS MB")
    summary = {}
    for v in variants:
        rs = [x for x in results if x["variant"] == v]
        summary[v] = {k: statistics.median(x[k] for x in rs) for k in ("mb_s", "cpu_s", "peak_rss_mb")}
        summary[v]["best_mb_s"] = max(x["mb_s"] for x in rs)
        s = summary[v]
        print(f"{v:10s} {s['mb_s']:12.1f} {s['best_mb_s']:11.1f} {s['cpu_s']:14.2f} {s['peak_rss_mb']:20.1f}")
    if args.json:
        print(json.dumps({"runs": results, "summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
