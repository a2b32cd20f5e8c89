"""Log-following throughput through the test API server (tests/kubefake).

    python bench/bench_logs.py [--lines 200000] [--cuts 0] [--repeat 3]

The server runs in this process; `kjob logs NAME -f` runs as its own process (as a user
runs it) with stdout on a pipe that this script drains and counts. Half the lines are in
the log before kjob connects, the other half arrive while it follows; then the job
finishes and kjob exits. Prints lines/s and MB/s per run and the median, and checks that
every line arrived exactly once in order (a benchmark of a wrong result is worthless).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kubefake import FakeServer, KubeHandle  # noqa: E402

JOB = {
    "apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob",
    "metadata": {"name": "bench", "namespace": "default", "labels": {"app.kubernetes.io/managed-by": "kjob"}},
    "spec": {"mpiReplicaSpecs": {
        "Launcher": {"replicas": 1, "template": {"spec": {"containers": [{"name": "launcher", "image": "img"}]}}},
        "Worker": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker", "image": "img"}]}}},
    }},
}


def create_job(kube: KubeHandle) -> None:
    from kubernetes import client, config

    api = config.new_client_from_config(kube.kubeconfig)
    client.CustomObjectsApi(api).create_namespaced_custom_object("kubeflow.org", "v2beta1", "default", "mpijobs", JOB)
    api.close()


def one_run(n_lines: int, cuts: int) -> tuple[float, int]:
    server = FakeServer().start()
    try:
        kube = KubeHandle(server, Path(tempfile.mkdtemp()))
        create_job(kube)
        pods = kube.run_job("bench")
        # ~80-byte lines, like a trainer's progress output.
        lines = [f"epoch 3 step {i:07d}/1251 loss 4.{i % 9973:04d} top1 31.25 lr 0.4000 img/s 2841.7" for i in range(n_lines)]
        half = n_lines // 2
        for i in range(0, half, 5000):
            kube.append_log(pods[0], lines[i : min(i + 5000, half)])
        for k in range(cuts):
            kube.fault("get", "pods/log", cut_after_bytes=1_000_000 + 7919 * k)
        env = {**os.environ, "KUBECONFIG": kube.kubeconfig, "KJOB_POLL_SECONDS": "0.05", "KJOB_RETRY_BACKOFF": "0.01"}
        start = time.perf_counter()
        proc = subprocess.Popen([str(Path(sys.executable).with_name("kjob")), "logs", "bench", "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

        def produce():
            for i in range(half, n_lines, 5000):
                kube.append_log(pods[0], lines[i : min(i + 5000, n_lines)])
            kube.finish_job("bench")

        threading.Thread(target=produce, daemon=True).start()
        got = proc.stdout.read().decode().splitlines()
        proc.wait(timeout=600)
        elapsed = time.perf_counter() - start
        if got != lines:
            raise SystemExit(f"wrong output: {len(got)} lines, expected {n_lines}; stderr: {proc.stderr.read().decode()[-500:]}")
        return elapsed, sum(len(line) + 1 for line in lines)
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--cuts", type=int, default=0, help="inject this many stream cuts (~1 MB apart)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rates = []
    for r in range(args.repeat):
        secs, nbytes = one_run(args.lines, args.cuts)
        rates.append(args.lines / secs)
        print(f"run {r + 1}: {args.lines} lines ({nbytes / 1e6:.1f} MB) in {secs:.2f} s = {args.lines / secs:,.0f} lines/s, {nbytes / secs / 1e6:.1f} MB/s (cuts: {args.cuts})")
    print(f"median: {statistics.median(rates):,.0f} lines/s over {args.repeat} runs, {args.cuts} injected cuts, every line exactly once")


if __name__ == "__main__":
    main()
