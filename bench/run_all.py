"""Run every benchmark once, in a row, with settings that fit a 2-core machine.

`make bench` calls this. Each script prints its own machine/version banner and results;
copy the figures into BENCHMARKS.md. Pass `--gpu` on a GPU node for the issue-7 settings
(batch 256, bf16, more steps). A script that fails is reported and the rest still run.
On a lent GPU machine with only minutes to spend, `bench/gpu_session.sh` runs just the GPU
parts, each under its own time limit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, arguments on a small CPU machine, arguments on a GPU node)
BENCHES = [
    ("bench_cli.py", [], []),
    ("bench_status.py", [], []),
    ("bench_logs.py", ["--lines", "100000", "--cuts", "5"], ["--lines", "100000", "--cuts", "5"]),
    ("bench_fetch.py", ["--mb", "200"], ["--mb", "200"]),
    # These three start the real control plane of tests/cluster (root, one per machine at a time).
    ("exec_stream_vs_client.py", ["--mb", "1024", "--runs", "3", "--variants", "kjob"], ["--mb", "1024", "--runs", "3", "--variants", "kjob"]),
    ("kjob_vs_kubectl.py", ["--runs", "2", "--status-runs", "6"], ["--runs", "2", "--status-runs", "6"]),
    ("scale.py", [], []),  # 129 kwok nodes, 2/32/128 workers: about 15 minutes
    ("bench_trainer.py", [], ["--device", "gpu", "--amp", "bf16", "--image-size", "224", "--batch-size", "128"]),
    ("bench_trainer_mindspore.py", [], []),
    ("bench_input.py", ["--images", "300"], ["--images", "1000"]),
    ("bench_gpu_step.py", ["--batch", "8", "--threads", "1", "--steps", "3", "--warmup", "1"], ["--batch", "256"]),
    ("bench_end_to_end.py", ["--batch", "8", "--workers", "1", "--steps", "4", "--warmup", "1", "--compare"], ["--batch", "256"]),
]


def main(argv: list[str]) -> int:
    gpu = "--gpu" in argv
    failed = []
    for script, cpu_args, gpu_args in BENCHES:
        args = gpu_args if gpu else cpu_args
        print(f"\n===== {script} {' '.join(args)}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / script), *args])
        print(f"===== {script}: exit {code}, {time.monotonic() - start:.0f} s", flush=True)
        if code:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
