"""The one-screen summary that ends `make test`: where the time went.

    python tests/time_summary.py DIR

DIR is the folder tests/make_test.sh fills while it runs:
  builds.tsv    one line per build step: name, seconds, cached|built|failed|skipped, note
  *.xml         pytest's JUnit reports, one per pytest run (--junitxml)
  started       the run's start, in seconds since the epoch

Tiers are told apart by where a test lives (tests/cluster, tests/node) and by the `slow`
marker (real mpirun training), so one pytest run can hold several tiers.
A JUnit test time is setup + call + teardown, so a session fixture (a control plane
starting) is counted in the first test that uses it, and a tier's sum is its wall time.
Standard library only: it must run even where the suite's environment is broken.
"""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

SLOWEST = 15
@dataclass(frozen=True)
class Case:
    name: str
    tier: str
    seconds: float
    outcome: str  # passed | failed | skipped


def tier_of(classname: str, slow: bool) -> str:
    """'tests.cluster.test_real_jobs' -> 'real control plane'; a test of the top folder
    marked slow (real mpirun training, tests/conftest.py names it) -> 'real OpenMPI'."""
    parts = classname.split(".")
    folder = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
    if folder == "node":
        return "real node"
    if folder == "cluster":
        return "real control plane"
    return "real OpenMPI (slow)" if slow else "pure and faults"


def read_cases(report: Path) -> list[Case]:
    root = ET.parse(report).getroot()
    cases = []
    for tc in root.iter("testcase"):
        outcome = "passed"
        if tc.find("failure") is not None or tc.find("error") is not None:
            outcome = "failed"
        elif tc.find("skipped") is not None:
            outcome = "skipped"
        classname = tc.get("classname", "")
        slow = any(p.get("name") == "slow" for p in tc.iter("property"))
        name = f"{classname.split('.')[-1]}::{tc.get('name', '?')}"
        cases.append(Case(name, tier_of(classname, slow), float(tc.get("time", 0) or 0), outcome))
    return cases


def read_builds(path: Path) -> list[tuple[str, float, str, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        name, seconds, state, *note = line.split("\t") + [""]
        rows.append((name, float(seconds or 0), state, note[0]))
    return rows


def minutes(seconds: float) -> str:
    """41.25 -> '41.2s', 185 -> '3:05'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def render(folder: Path, now: float) -> str:
    cases = [c for report in sorted(folder.glob("*.xml")) for c in read_cases(report)]
    lines = ["", "=" * 25 + " make test: where the time went " + "=" * 25]
    started = folder / "started"
    if started.exists():
        lines.append(f"total wall time {minutes(now - float(started.read_text()))}")
    lines.append(f"{'tier':<26}{'tests':>7}{'passed':>8}{'failed':>8}{'skipped':>9}{'time':>9}")
    for tier in ("pure and faults", "real OpenMPI (slow)", "real control plane", "real node"):
        these = [c for c in cases if c.tier == tier]
        if not these:
            lines.append(f"{tier:<26}{'-':>7}   (not run)")
            continue
        count = {o: sum(c.outcome == o for c in these) for o in ("passed", "failed", "skipped")}
        lines.append(f"{tier:<26}{len(these):>7}{count['passed']:>8}{count['failed']:>8}{count['skipped']:>9}"
                     f"{minutes(sum(c.seconds for c in these)):>9}")
    builds = read_builds(folder / "builds.tsv")
    if builds:
        lines.append(f"{'build':<26}{'state':>9}{'time':>9}")
        for name, seconds, state, note in builds:
            lines.append(f"{name:<26}{state:>9}{minutes(seconds):>9}" + (f"   {note}" if note else ""))
    if cases:
        lines.append(f"the {SLOWEST} slowest tests:")
        for c in sorted(cases, key=lambda c: -c.seconds)[:SLOWEST]:
            lines.append(f"{minutes(c.seconds):>7}  {c.tier:<24}{c.name}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: time_summary.py DIR (the folder tests/make_test.sh writes)", file=sys.stderr)
        return 2
    try:
        print(render(Path(argv[0]), time.time()))
    except (OSError, ValueError, ET.ParseError) as e:  # a summary must never fail the run
        print(f"make test: no time summary ({e})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
