"""fetch-ckpt throughput and memory: `kjob fetch-ckpt` as its own process against the
test API server (tests/kubefake), whose exec runs real GNU tar over a folder standing in
for the checkpoint PVC and sends 32 KiB websocket frames like kube-apiserver.

Prints, per run: the transfer rate (kjob's own summary line: first exec byte to last
rename), the wall time of the whole command (Python start-up, kubeconfig, job lookup
included), the peak RSS of the kjob process (os.wait4's ru_maxrss of that one child),
and where the CPU went: the kjob process, tar, and the server (this process).

    .venv/bin/python bench/bench_fetch.py [--mb 200] [--files 4] [--runs 3] [--helper] [--json]

Targets (issue 5): >= 200 MB/s, peak RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ckpt_helpers import CLAIM, HelperKubelet, create_job, mpijob, write_checkpoints  # noqa: E402
from kubefake import FakeServer, KubeHandle  # noqa: E402

JOB = "bench"
SUMMARY = re.compile(r"transferred (\d+) file\(s\), ([\d.]+) (\w+) in ([\d.]+) s")
UNITS = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run(kube: KubeHandle, dest: Path, use_helper: bool) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    argv = [str(ROOT / ".venv" / "bin" / "kjob"), "fetch-ckpt", JOB, "--all", "--dest", str(dest)]
    if not Path(argv[0]).exists():
        argv[0:1] = [sys.executable, "-m", "kjob"]
    self0, child0 = cpu_self(), cpu_children()
    t0 = time.perf_counter()
    with HelperKubelet(kube, JOB, start=use_helper):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"kjob fetch-ckpt failed ({proc.returncode}): {err.strip()}")
    m = SUMMARY.search(err)
    if not m:
        raise SystemExit(f"no transfer summary in kjob's output: {err.strip()}")
    mb = float(m.group(2)) * UNITS[m.group(3)]
    secs = float(m.group(4))
    kjob_cpu = usage.ru_utime + usage.ru_stime
    return {
        "mb": mb,
        "transfer_s": secs,
        "transfer_mb_s": mb / secs,
        "wall_s": wall,
        "wall_mb_s": mb / wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB
        "cpu_kjob_s": kjob_cpu,
        "cpu_tar_s": cpu_children() - child0 - kjob_cpu,  # tar is the server's child, i.e. ours
        "cpu_server_s": cpu_self() - self0,  # includes this script's polling, which is tiny
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="total checkpoint size in MB (default 200)")
    ap.add_argument("--files", type=int, default=4, help="number of checkpoint files (default 4)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--helper", action="store_true", help="fetch through a helper pod instead of a running worker")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kjob-bench-fetch-"))
    server = FakeServer().start()
    try:
        kube = KubeHandle(server, tmp)
        pvc = tmp / "pvc"
        size = args.mb * 1_000_000 // args.files
        write_checkpoints(pvc / JOB / "checkpoints", [size] * args.files)
        kube.exec.provide_claim("default", CLAIM, pvc)
        create_job(kube, mpijob(JOB))
        if not args.helper:
            for pod in kube.start_job(JOB):
                kube.pod_running(pod)
        runs = [one_run(kube, tmp / "dest", args.helper) for _ in range(args.runs)]
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}",
        "source": "helper pod" if args.helper else "running worker pod",
        "files": args.files,
        "runs": runs,
        "median": med,
        "best_transfer_mb_s": max(r["transfer_mb_s"] for r in runs),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"fetch-ckpt: {med['mb']:.0f} MB in {args.files} files from a {result['source']}; {result['machine']}")
    for i, r in enumerate(runs, 1):
        print(f"  run {i}: transfer {r['transfer_mb_s']:6.1f} MB/s ({r['transfer_s']:.2f} s), whole command "
              f"{r['wall_s']:.2f} s ({r['wall_mb_s']:.1f} MB/s), peak RSS {r['peak_rss_mb']:.1f} MB, "
              f"CPU s: kjob {r['cpu_kjob_s']:.2f} tar {r['cpu_tar_s']:.2f} server {r['cpu_server_s']:.2f}")
    print(f"  median transfer {med['transfer_mb_s']:.1f} MB/s (target >= 200), best {result['best_transfer_mb_s']:.1f} MB/s; "
          f"peak RSS max {result['max_peak_rss_mb']:.1f} MB (target < 150)")


if __name__ == "__main__":
    main()
