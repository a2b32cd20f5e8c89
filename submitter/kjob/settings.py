"""The KJOB_* environment settings: every one named, defaulted and checked in one place.

`current()` reads them all and checks them all, so a bad value is reported once, as bad
input (exit 2), before a command does anything, instead of as a traceback from whichever
module happened to read it. The result is cached for as long as the KJOB_* variables do
not change (tests change them between calls).

Flags have environment variables of their own (KJOB_<COMMAND>_<OPTION>, from Click's
auto_envvar_prefix); Click checks those with the flags, so they are not listed here.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

from kjob.errors import InvalidInput


@dataclass(frozen=True)
class Setting:
    """One variable: its name, default, what it means, and the smallest value allowed."""

    env: str
    default: float | int | str | None
    meaning: str
    minimum: float | None = None  # numbers only; None: any text
    integer: bool = False
    above_minimum: bool = False  # True: the value must be greater than `minimum`


SETTINGS = (
    Setting("KJOB_POLL_SECONDS", 2.0, "how often waiting loops (wait, logs -f, delete) look again", 0, above_minimum=True),
    Setting("KJOB_RETRIES", 4, "tries of one API request before its failure is reported", 1, integer=True),
    Setting("KJOB_RETRY_BACKOFF", 0.5, "seconds before the first retry; doubled for each next one (at most 8 s)", 0),
    Setting("KJOB_CONNECT_TIMEOUT", 10.0, "seconds to connect to the API server", 0, above_minimum=True),
    Setting("KJOB_READ_TIMEOUT", 60.0, "seconds to wait for an API answer", 0, above_minimum=True),
    Setting("KJOB_LOG_IDLE_SECONDS", 10.0, "a followed log stream silent this long is reconnected", 0, above_minimum=True),
    Setting("KJOB_FETCH_POD_TIMEOUT", 180.0, "seconds fetch-ckpt waits for its helper pod to start", 0, above_minimum=True),
    Setting("KJOB_FETCH_IDLE_TIMEOUT", 120.0, "a checkpoint transfer without a byte this long is dead", 0, above_minimum=True),
    Setting("KJOB_FETCH_IMAGE", None, "image of the fetch-ckpt helper pod (default: the job's own image)"),
)


@dataclass(frozen=True)
class Settings:
    """The checked values of SETTINGS (attribute = the name without KJOB_, lowercased)."""

    poll_seconds: float
    retries: int
    retry_backoff: float
    connect_timeout: float
    read_timeout: float
    log_idle_seconds: float
    fetch_pod_timeout: float
    fetch_idle_timeout: float
    fetch_image: str | None


def debug() -> bool:
    """KJOB_DEBUG set (to anything): errors show their traceback. Never invalid, so the
    error handler itself can ask it."""
    return bool(os.environ.get("KJOB_DEBUG"))


def current() -> Settings:
    """The settings of the current environment. Raises InvalidInput naming every bad
    variable and what it must be."""
    return _parse(tuple((s.env, os.environ.get(s.env)) for s in SETTINGS))


@functools.lru_cache(maxsize=8)
def _parse(raw: tuple[tuple[str, str | None], ...]) -> Settings:
    values, problems = {}, []
    for setting, (_, text) in zip(SETTINGS, raw):
        try:
            values[setting.env.removeprefix("KJOB_").lower()] = _value(setting, text)
        except ValueError as e:
            problems.append(f"${setting.env}: {e}")
    if problems:
        raise InvalidInput(problems[0], problems=problems)
    return Settings(**values)


def _value(setting: Setting, text: str | None):
    if text is None or text.strip() == "":
        return setting.default
    if setting.minimum is None:
        return text.strip()
    kind = "a whole number" if setting.integer else "a number"
    try:
        value = int(text) if setting.integer else float(text)
    except ValueError:
        raise ValueError(f"must be {kind} ({setting.meaning}), got {text!r}") from None
    low = setting.minimum
    if not math.isfinite(value) or value < low or (setting.above_minimum and value == low):
        bound = f"greater than {low:g}" if setting.above_minimum else f"at least {low:g}"
        raise ValueError(f"must be {kind} {bound} ({setting.meaning}), got {text!r}")
    return value
