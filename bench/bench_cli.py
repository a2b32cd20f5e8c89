"""Wall time of whole `kjob` processes (targets: `kjob --help` < 0.1 s, `kjob render` < 0.25 s on the dev VM).

    python bench/bench_cli.py [--runs N]

Runs each command N times (after one warm-up run that fills the OS page cache) and
prints the median, min and max wall time, the median CPU time (user+sys of the child,
less sensitive to other load on the machine) and the load average at the start, since
the machine is shared. Also prints where the import time of `kjob render` goes
(`python -X importtime`, the largest cumulative entries).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from plain_install import plain_kjob, plain_python  # noqa: E402
# Targets on a quiet machine (wall seconds, median).
HELP_TARGET_S = 0.1
RENDER_TARGET_S = 0.25


def kjob_executable() -> list[str]:
    """kjob as a user installs it (plain_install.py), not the tests' editable .venv."""
    return [str(plain_kjob())]


def time_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def bench(name: str, cmd: list[str], runs: int, target: float | None = None) -> None:
    time_once(cmd)  # warm-up
    walls, cpus = zip(*(time_once(cmd) for _ in range(runs)))
    med = statistics.median(walls)
    verdict = "" if target is None else f"< {target:g} s: " + ("met" if med < target else "not met")
    print(f"| `{name}` | {med:.3f} | {min(walls):.3f} | {max(walls):.3f} | {statistics.median(cpus):.3f} | {runs} | {verdict} |")


def import_profile(top: int = 8) -> None:
    code = "import sys; sys.argv=['kjob','render','examples/resnext50.yaml']; from kjob.cli import main; main()"
    r = subprocess.run([str(plain_python()), "-X", "importtime", "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name.startswith("    "):
                rows.append((int(cumulative), name.strip()))
    print("\nLargest top-level imports of `kjob render` (cumulative, ms):")
    for us, name in sorted(rows, reverse=True)[:top]:
        print(f"  {us / 1000:7.1f}  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    kjob = kjob_executable()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, kjob = {' '.join(kjob)}\n")
    print("| command | median s | min s | max s | median CPU s | runs | target |")
    print("|---|---|---|---|---|---|---|")
    bench("kjob --help", kjob + ["--help"], args.runs, HELP_TARGET_S)
    bench("kjob render examples/resnext50.yaml", kjob + ["render", "examples/resnext50.yaml"], args.runs, RENDER_TARGET_S)
    bench("kjob validate examples/*.yaml", kjob + ["validate"] + sorted(str(p) for p in (ROOT / "examples").glob("*.yaml")), args.runs, RENDER_TARGET_S)
    bench("kjob submit examples/smoke.yaml --local --dry-run", kjob + ["submit", "examples/smoke.yaml", "--local", "--dry-run"], args.runs)
    bench("python -c pass (interpreter floor)", [str(plain_python()), "-c", "pass"], args.runs)
    import_profile()
    return 0


if __name__ == "__main__":
    sys.exit(main())
