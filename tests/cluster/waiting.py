"""Waiting on a condition, for every process the real tiers start (tests/cluster and
tests/node): never a fixed sleep, every bound multiplied by KJOB_TEST_TIME_SCALE (a float,
default 1) for slow machines."""

from __future__ import annotations

import os
import time


def time_scale() -> float:
    return float(os.environ.get("KJOB_TEST_TIME_SCALE", "1"))


def wait_for(what: str, check, timeout: float, *, alive=None, interval: float = 0.1):
    """Call check() until it returns something truthy (returned). Raises TimeoutError after
    timeout * KJOB_TEST_TIME_SCALE seconds, or whatever alive() raises (called first on
    every round: e.g. a process that died, named with its log)."""
    deadline = time.monotonic() + timeout * time_scale()
    last = None
    while True:
        if alive:
            alive()
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # not there yet: connection refused, 404, no such file, ...
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout * time_scale():g} s" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)
