"""Start-up time of the kjob commands that talk to a cluster (target: `kjob status` < 0.25 s).

    python bench/cli_startup.py [--runs N] [--against DIR]

Whole processes of kjob as users install it (bench/plain_install.py: `pip install .`
into a venv of its own, not the tests' editable install): `kjob --help`, `kjob status NAME` (1 launcher + 2
workers, 3 API calls) and `kjob list` against the test API server (tests/kubefake, in
this process); and for the breakdown, processes that only import: `import kubernetes`,
`kjob.cluster.api.connect()` (kjob's imports plus the kubeconfig, no request), and the
interpreter floor. Each is run once to warm the page cache, then N times; prints the
median, min and max wall time and the median CPU time of the child (user+sys, less
sensitive to other load on a shared machine).

With --against DIR (the submitter/ folder of another checkout, e.g. of main:
`git worktree add /tmp/before main`), every kjob command also runs with DIR first on
PYTHONPATH, alternately with this tree in the same rounds, so that the machine's load
falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_logs import create_job  # noqa: E402
from kubefake import FakeServer, KubeHandle  # noqa: E402
from plain_install import plain_kjob, plain_python  # noqa: E402




def time_once(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall s, child CPU s) of one run; exits with its stderr if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cases() -> list[tuple[str, list[str], bool]]:
    """(label, command, whether it runs kjob code) of each row: kjob as a user installs it
    (plain_install.py), and for comparison `kjob status` from the tests' editable `.venv`."""
    kjob, python = str(plain_kjob()), str(plain_python())
    connect = "from kjob.cluster.api import connect; connect()"
    return [
        ("`kjob --help`", [kjob, "--help"], True),
        ("`kjob status bench`", [kjob, "status", "bench"], True),
        ("`kjob status bench` from the editable .venv", [str(Path(sys.executable).with_name("kjob")), "status", "bench"], True),
        ("`kjob list`", [kjob, "list"], True),
        ("`python -c 'kjob.cluster.api.connect()'`", [python, "-c", connect], True),
        ("`python -c 'import kubernetes'`", [python, "-c", "import kubernetes"], False),
        ("`python -c pass` (interpreter floor)", [python, "-c", "pass"], False),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="Timed runs of each command (default 10).")
    ap.add_argument("--against", type=Path, metavar="DIR", help="Also time the kjob commands with DIR (another checkout's submitter/) first on PYTHONPATH.")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.against is not None and not (args.against / "kjob" / "cli.py").is_file():
        ap.error(f"--against {args.against}: no kjob/cli.py there (give a checkout's submitter/ folder)")
    server = FakeServer().start()
    try:
        kube = KubeHandle(server, Path(tempfile.mkdtemp()))
        create_job(kube)
        kube.run_job("bench")
        env = {**os.environ, "KUBECONFIG": kube.kubeconfig}
        trees = {"this tree": env}
        if args.against is not None:
            trees[str(args.against)] = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(args.against.resolve()), env.get("PYTHONPATH")]))}
        rows = [(label, cmd, tree) for label, cmd, runs_kjob in cases() for tree in (trees if runs_kjob else ["this tree"])]
        for _label, cmd, tree in rows:
            time_once(cmd, trees[tree])  # warm-up: page cache, .pyc files
        times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(rows))}
        for _ in range(args.runs):  # rounds: every row once per round, so load drifts hit all rows alike
            for i, (_label, cmd, tree) in enumerate(rows):
                times[i].append(time_once(cmd, trees[tree]))
    finally:
        server.stop()
    print(f"load average {os.getloadavg()[0]:.2f}, {args.runs} runs each, Python {sys.version.split()[0]}")
    print("| command | code | median wall s | min s | max s | median CPU s |")
    print("|---|---|---|---|---|---|")
    for i, (label, _cmd, tree) in enumerate(rows):
        walls = [w for w, _ in times[i]]
        cpu = statistics.median(c for _, c in times[i])
        print(f"| {label} | {tree} | {statistics.median(walls):.3f} | {min(walls):.3f} | {max(walls):.3f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
