"""make test's closing summary (tests/time_summary.py) reads what make_test.sh wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from time_summary import render

SCRIPT = Path(__file__).with_name("time_summary.py")

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.test_spec" name="test_fast" time="0.25"/>
  <testcase classname="tests.test_trainer_mpi" name="test_eight_ranks" time="95.5">
    <properties><property name="slow" value="1"/></properties>
  </testcase>
  <testcase classname="tests.test_trainer_mpi" name="test_units" time="1.5"/>
  <testcase classname="tests.cluster.test_real_jobs" name="test_mpijob" time="200"><failure message="x"/></testcase>
  <testcase classname="tests.cluster.test_real_jobs" name="test_gone" time="0"><skipped message="y"/></testcase>
</testsuite></testsuites>
"""


def test_each_tier_has_its_counts_and_time_and_the_slowest_come_first(tmp_path):
    (tmp_path / "suite.xml").write_text(REPORT)
    (tmp_path / "builds.tsv").write_text("control plane binaries\t412\tbuilt\ntrainer images\t1\tcached\n")
    (tmp_path / "started").write_text("1000")
    lines = render(tmp_path, now=1000 + 3725).splitlines()
    assert "total wall time 62:05" in lines
    rows = {line[:26].strip(): line[26:].split() for line in lines}
    assert rows["pure and faults"] == ["2", "2", "0", "0", "1.8s"]
    assert rows["real OpenMPI (slow)"] == ["1", "1", "0", "0", "1:35"]
    assert rows["real control plane"] == ["2", "0", "1", "1", "3:20"]
    assert rows["real node"] == ["-", "(not", "run)"]
    assert rows["control plane binaries"] == ["built", "6:52"]
    assert rows["trainer images"] == ["cached", "1.0s"]
    slowest = lines[lines.index("the 15 slowest tests:") + 1:]
    assert [s.split()[-1] for s in slowest[:2]] == ["test_real_jobs::test_mpijob", "test_trainer_mpi::test_eight_ranks"]
    assert len(slowest) == 5


def test_a_summary_never_fails_the_run(tmp_path):
    (tmp_path / "suite.xml").write_text("<testsuites><testcase")  # a run killed mid-write
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stderr.startswith("make test: no time summary (")


def test_without_its_folder_it_says_how_to_call_it(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, "usage: time_summary.py DIR (the folder tests/make_test.sh writes)\n")
