"""Time bounds for the tests, all scaled by one setting.

A bound here only stops a test that would otherwise hang; what a test checks is waited on
as a condition. On a slow or loaded machine, raise every bound at once with
KJOB_TEST_TIME_SCALE (e.g. 3); it also scales each test's pytest-timeout (conftest.py).
"""

from __future__ import annotations

import os
import time

import pytest


def _scale() -> float:
    raw = os.environ.get("KJOB_TEST_TIME_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"KJOB_TEST_TIME_SCALE={raw!r}: expected a number such as 1 or 2.5") from None
    if not value > 0:
        raise pytest.UsageError(f"KJOB_TEST_TIME_SCALE={raw!r}: must be above 0")
    return value


TIME_SCALE = _scale()


def scaled(seconds: float) -> float:
    """A bound of `seconds` on a quiet machine, times KJOB_TEST_TIME_SCALE."""
    return seconds * TIME_SCALE


def wait_until(predicate, what: str, timeout: float = 30, interval: float = 0.01) -> None:
    """Poll `predicate` until it is true; fail the test after scaled(timeout) seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {scaled(timeout):.0f} s waiting for {what}")
        time.sleep(interval)
