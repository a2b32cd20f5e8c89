"""Shared fixtures. `kube`: a Kubernetes API server over real HTTP (tests/kubefake)."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# In CI the property tests replay a fixed set of examples, so a red run is reproducible
# and never depends on a lucky draw; on a developer's machine they keep exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from kubefake import FakeServer, KubeHandle
from timing import TIME_SCALE


def pytest_configure(config):
    """Mark every process this session starts (KJOB_TEST_SESSION in the environment they
    inherit) and start the reaper that ends the marked ones still running once the session
    is gone, however it ended: a detached local run leaves the test's process group on
    purpose, and nothing else would stop it (tests/session_reaper.py)."""
    import sys
    import time
    from pathlib import Path

    token = f"{os.getpid()}-{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if k != "KJOB_TEST_SESSION"}
    # posix_spawn, not Popen: the session never waits for it (it outlives the session).
    os.posix_spawn(sys.executable, [sys.executable, str(Path(__file__).with_name("session_reaper.py")),
                                    "--owner", str(os.getpid()), "--mark", token],
                   env, setsid=True, file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
    os.environ["KJOB_TEST_SESSION"] = token


def pytest_collection_modifyitems(items):
    """Each test's pytest-timeout is a bound against hangs, never the check itself: scale it
    with KJOB_TEST_TIME_SCALE like every other bound (timing.py). Slow tests are named so in
    the JUnit report, for make test's time summary (tests/time_summary.py)."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.user_properties.append(("slow", "1"))
    if TIME_SCALE == 1:
        return
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is not None and marker.args:
            item.add_marker(pytest.mark.timeout(marker.args[0] * TIME_SCALE), append=False)


@pytest.fixture
def kube(tmp_path, monkeypatch):
    """A fresh API server per test; yields a KubeHandle (`.kubeconfig`, operator/kubelet
    methods, faults). KUBECONFIG points at it and kjob's retries/polls are made fast."""
    server = FakeServer().start()
    handle = KubeHandle(server, tmp_path)
    monkeypatch.setenv("KUBECONFIG", handle.kubeconfig)
    monkeypatch.setenv("KJOB_RETRY_BACKOFF", "0.01")
    monkeypatch.setenv("KJOB_POLL_SECONDS", "0.05")
    try:
        yield handle
    finally:
        server.stop()


class KjobRun:
    """What one in-process `kjob ...` call did."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"KjobRun(code={self.code}, out={self.out[-800:]!r}, err={self.err[-800:]!r})"


@pytest.fixture
def run_kjob(capsys, monkeypatch):
    """Run `kjob ARGS...` in this process through kjob.cli.main (the same error handling
    and exit codes as the installed script); returns a KjobRun."""
    from kjob.cli import main

    def run(*args: str) -> KjobRun:
        capsys.readouterr()
        monkeypatch.setattr("sys.argv", ["kjob", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        # main()'s last line of defence caught something that is not a KjobError: a bug.
        assert "internal error:" not in captured.err, captured.err
        return KjobRun(code, captured.out, captured.err)

    return run


@pytest.fixture
def reap_stray_processes():
    """Kill what the test started and left running, even after a failed assertion (the
    launch-wrapper tests opt in with usefixtures)."""
    from trainer_utils import no_stray_processes

    with no_stray_processes():
        yield
