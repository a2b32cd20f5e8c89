"""kjob.settings: every KJOB_* setting is read in one place, and a bad value is one
`Error:` line and exit 2 (bad input) before a command does anything."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kjob import settings
from kjob.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "examples" / "smoke.yaml")
NUMBERS = [s for s in settings.SETTINGS if s.minimum is not None]


@pytest.mark.parametrize("setting", NUMBERS, ids=lambda s: s.env)
def test_a_bad_number_is_one_error_line_and_exit_2(run_kjob, monkeypatch, setting):
    kind = "a whole number" if setting.integer else "a number"
    monkeypatch.setenv(setting.env, "abc")
    done = run_kjob("render", SPEC)
    assert (done.code, done.out) == (2, "")
    assert done.err == f"Error: ${setting.env}: must be {kind} ({setting.meaning}), got 'abc'\n"


@pytest.mark.parametrize("setting", NUMBERS, ids=lambda s: s.env)
def test_a_number_out_of_range_is_one_error_line_and_exit_2(run_kjob, monkeypatch, setting):
    kind = "a whole number" if setting.integer else "a number"
    low = setting.minimum if setting.above_minimum else setting.minimum - 1
    text = str(int(low))
    bound = f"greater than {setting.minimum:g}" if setting.above_minimum else f"at least {setting.minimum:g}"
    monkeypatch.setenv(setting.env, text)
    done = run_kjob("list", "--local")
    assert (done.code, done.out) == (2, "")
    assert done.err == f"Error: ${setting.env}: must be {kind} {bound} ({setting.meaning}), got '{text}'\n"


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.env)
def test_every_setting_is_read_with_its_default(monkeypatch, setting):
    attr = setting.env.removeprefix("KJOB_").lower()
    monkeypatch.delenv(setting.env, raising=False)
    assert getattr(settings.current(), attr) == setting.default
    value = "registry.example/tools:1" if setting.minimum is None else "3"
    monkeypatch.setenv(setting.env, value)
    assert getattr(settings.current(), attr) == (value if setting.minimum is None else 3)


def test_every_bad_setting_is_reported_at_once(monkeypatch):
    monkeypatch.setenv("KJOB_POLL_SECONDS", "soon")
    monkeypatch.setenv("KJOB_RETRIES", "2.5")
    with pytest.raises(InvalidInput) as err:
        settings.current()
    assert [line.split(":")[0] for line in err.value.lines()] == ["$KJOB_POLL_SECONDS", "$KJOB_RETRIES"]


def test_help_works_whatever_the_settings(run_kjob, monkeypatch):
    monkeypatch.setenv("KJOB_READ_TIMEOUT", "never")
    assert run_kjob("--help").code == 0


def test_no_module_reads_a_kjob_variable_itself():
    """The library reads KJOB_* settings only through kjob.settings (KJOB_DEBUG included)."""
    readers = {}
    for path in (ROOT / "submitter" / "kjob").rglob("*.py"):
        if path.name == "settings.py":
            continue
        if re.search(r"environ(\.get)?[\[(]\s*[\"']KJOB_", path.read_text(encoding="utf-8")):
            readers[path.name] = True
    assert readers == {}
