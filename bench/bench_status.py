"""Wall time of `kjob status NAME` as a process, against the test API server.

    python bench/bench_status.py [--workers 8] [--repeat 10]

A job of 1 launcher + N workers with a pending worker (so Events are read and a reason
is computed) is put on the server in this process; `kjob status` runs as a new process
each time, as a user or a script would run it. Prints each run's wall time, the median
and the minimum, and for scale the time of a bare `python -c "import kubernetes"`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_logs import JOB, create_job  # noqa: E402
from kubefake import FakeServer, KubeHandle  # noqa: E402
from plain_install import plain_kjob, plain_python  # noqa: E402


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    JOB["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] = args.workers
    server = FakeServer().start()
    try:
        kube = KubeHandle(server, Path(tempfile.mkdtemp()))
        create_job(kube)
        pods = kube.run_job("bench")
        kube.unschedulable(pods[-1], "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
        env = {**os.environ, "KUBECONFIG": kube.kubeconfig}
        kjob = str(plain_kjob())  # as a user installs it, not the tests' editable .venv
        timed([kjob, "status", "bench"], env)  # warm the page cache
        runs = [timed([kjob, "status", "bench"], env) for _ in range(args.repeat)]
        for i, t in enumerate(runs, 1):
            print(f"run {i}: kjob status bench ({args.workers + 1} pods): {t * 1000:.0f} ms")
        imports = statistics.median(timed([str(plain_python()), "-c", "import kubernetes.client"], env) for _ in range(3))
        print(f"median {statistics.median(runs) * 1000:.0f} ms, min {min(runs) * 1000:.0f} ms over {args.repeat} runs; "
              f"`python -c 'import kubernetes.client'` alone: {imports * 1000:.0f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
