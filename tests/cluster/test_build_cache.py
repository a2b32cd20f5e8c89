"""build.sh keeps the cache from growing forever: other keys' build folders that nobody
holds in use are removed, saying how much was freed; one held (builds.hold) stays until it
is let go; the current keys and anything that is not a key folder stay; a second build.sh
of a key being built waits for the first and then finds it built. No Go build: the current
keys are made to look built, so build.sh takes its cached path."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from builds import BUILD, BuildGone, hold

pytestmark = pytest.mark.skipif(not (shutil.which("go") and shutil.which("flock")), reason="build.sh needs Go (its key) and flock")

OLD = "0123456789abcdef"
HELD = "fedcba9876543210"


def run_build(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KJOB_CACHE": str(cache)}
    env.pop("KJOB_CACHE_PRUNE", None)
    return subprocess.run(["bash", str(BUILD), *args], env=env, capture_output=True, text=True, timeout=60)


def folder(path: Path, size: int = 0, *, complete: bool = True) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "tool").write_bytes(b"x" * size)
    if complete:
        (path / "complete").touch()
    return path


@pytest.fixture
def cache(tmp_path) -> Path:
    cache = tmp_path / "cache"
    for s in ("cluster", "node", "trainer"):
        current = Path(run_build(cache, "--set", s, "--print-dir").stdout.strip())
        assert current.parent == cache / s
        folder(current, 10)
    return cache


def test_unused_folders_of_other_keys_go_the_held_and_current_ones_stay(cache):
    current = {s: Path(run_build(cache, "--set", s, "--print-dir").stdout.strip()) for s in ("cluster", "node")}
    old = folder(cache / "cluster" / OLD, 3 * 1024 * 1024)
    half_pruned = folder(cache / "node" / f".pruned-{OLD}-123", 1024 * 1024, complete=False)
    held = folder(cache / "node" / HELD, 5 * 1024 * 1024)
    containerd = folder(cache / "node" / "containerd", 1)  # the node's image store, not a key
    lock = hold(held)
    try:
        r = run_build(cache, "--set", "cluster")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == str(current["cluster"])
        assert not old.exists() and not half_pruned.exists()
        assert held.exists() and containerd.exists() and current["cluster"].exists() and current["node"].exists()
        (line,) = [line for line in r.stderr.splitlines() if "freed" in line]
        assert re.fullmatch(rf"build\.sh: freed 4\.1MiB in {re.escape(str(cache))}: .*\(other keys' builds, unused\)", line), line
        assert set(line.split(": ")[2].split(" (")[0].split()) == {f"cluster/{OLD}", f"node/.pruned-{OLD}-123"}
    finally:
        os.close(lock)
    r = run_build(cache, "--set", "node")  # let go: the next build of either set removes it
    assert r.returncode == 0, r.stderr
    assert not held.exists() and containerd.exists() and current["node"].exists()
    assert f"freed 5.1MiB in {cache}: node/{HELD} " in r.stderr
    r = run_build(cache, "--set", "node")
    assert "freed" not in r.stderr  # nothing left to free: no line


def test_an_unfinished_folder_goes_only_after_a_day_untouched(cache):
    # A build.sh from before the locks holds none while it builds: its folder, unfinished
    # and recently written, stays; one untouched for a day is an interrupted build.
    building = folder(cache / "cluster" / OLD, 1, complete=False)
    interrupted = folder(cache / "node" / HELD, 1, complete=False)
    for path in (interrupted, *interrupted.rglob("*")):
        os.utime(path, (time.time() - 25 * 3600,) * 2)
    r = run_build(cache, "--set", "cluster")
    assert r.returncode == 0, r.stderr
    assert building.exists() and not interrupted.exists()
    assert f": node/{HELD} (other keys' builds, unused)" in r.stderr


def test_prune_can_be_turned_off(cache):
    old = folder(cache / "cluster" / OLD, 1)
    env = {**os.environ, "KJOB_CACHE": str(cache), "KJOB_CACHE_PRUNE": "0"}
    r = subprocess.run(["bash", str(BUILD), "--set", "cluster"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "freed" not in r.stderr
    assert old.exists()


def test_holding_a_folder_that_was_removed_meanwhile_says_so(tmp_path):
    with pytest.raises(BuildGone, match="is gone or incomplete"):
        hold(tmp_path / "gone")
    incomplete = folder(tmp_path / "half", complete=False)
    with pytest.raises(BuildGone, match="is gone or incomplete"):
        hold(incomplete)


def test_a_bad_set_is_refused_with_its_choices(tmp_path):
    r = run_build(tmp_path, "--set", "nodes")
    assert r.returncode == 2
    assert r.stderr.strip() == "build.sh: --set must be one of: cluster node trainer kueue (not 'nodes')"


def test_kueue_is_a_set_of_its_own_pruned_like_the_others(cache):
    # Its tool folder sits in tests/cluster/tools, but its key hashes only its own folder:
    # not the cluster set's key, and a cluster build prunes its other keys too.
    cluster, kueue = (Path(run_build(cache, "--set", s, "--print-dir").stdout.strip()) for s in ("cluster", "kueue"))
    assert kueue.parent == cache / "kueue" and kueue.name != cluster.name
    old = folder(cache / "kueue" / OLD, 1)
    r = run_build(cache, "--set", "cluster")
    assert r.returncode == 0, r.stderr
    assert not old.exists() and f"kueue/{OLD}" in r.stderr


def test_the_trainer_set_s_other_keys_are_pruned_too(cache):
    old = folder(cache / "trainer" / OLD, 1024)
    current = Path(run_build(cache, "--set", "trainer", "--print-dir").stdout.strip())
    r = run_build(cache, "--set", "cluster")
    assert r.returncode == 0, r.stderr
    assert not old.exists() and current.exists()
    assert f"trainer/{OLD}" in r.stderr


def test_a_second_build_of_the_same_key_waits_for_the_first_and_finds_it_built(cache):
    # The first build is played by this test: it holds the key's build lock, as build.sh
    # does while it builds, with the folder not yet complete.
    current = Path(run_build(cache, "--set", "trainer", "--print-dir").stdout.strip())
    (current / "complete").unlink()
    fd = os.open(current / "build.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    env = {**os.environ, "KJOB_CACHE": str(cache), "PATH": f"{cache / 'no-go'}:{os.environ['PATH']}"}
    # A `go` that fails loudly: the waiting build.sh must not start building once let in.
    (cache / "no-go").mkdir()
    real_go = shutil.which("go")
    (cache / "no-go" / "go").write_text(f'#!/bin/sh\n[ "$1" = build ] && {{ echo "go build ran" >&2; exit 99; }}\nexec {real_go} "$@"\n')
    (cache / "no-go" / "go").chmod(0o755)
    second = subprocess.Popen(["bash", str(BUILD), "--set", "trainer"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _waiting(second) and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert second.poll() is None, f"it did not wait: {second.communicate()}"
        assert _waiting(second), "it is not waiting on the build lock"
        (current / "complete").touch()  # the first build finishes ...
    finally:
        os.close(fd)  # ... and lets go of the lock
    out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    assert "another build.sh is building" in err and "built by another build.sh meanwhile" in err and "go build ran" not in err
    assert out.strip().splitlines()[-1] == str(current)


def _waiting(proc: subprocess.Popen) -> bool:
    """Whether proc (a build.sh) has a child sitting in flock, waiting."""
    try:
        return any(c.name() == "flock" for c in psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return False
