"""The Argo CD health checks under gopher-lua, the Lua 5.1 interpreter Argo CD embeds, not
only under lupa (tests/test_argocd_health.py), whose Lua differs.

Every test of tests/test_argocd_health.py runs again here, each parametrized case too,
with its `health` helper replaced by one that runs the same object through both: lupa (the
helper itself) and the gopher-lua runner (tools/gopher-lua: lua-health, built by
`build.sh --set trainer`). The two answers must be equal, and the test's own assertions
then hold the gopher-lua answer to what that test expects.

Without the runner built this module is skipped, saying how to build it, unless a build
of it is under way (make test's background one: it is waited for) or under CI, where it
is built (or its build's failure is the failure).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builds import build_dir, building, cached_dir

CASES_FILE = Path(__file__).resolve().parents[1] / "test_argocd_health.py"


def _load_cases():
    spec = importlib.util.spec_from_file_location("argocd_health_cases", CASES_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cases = _load_cases()


def _expand(name: str, fn) -> list:
    """pytest.param per case: one for a plain test, one per value set of its parametrize
    marks (stacked marks multiply, as pytest does)."""
    combos: list[tuple[dict, str]] = [({}, name)]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        argnames, argvalues = mark.args[0], mark.args[1]
        names = [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
        ids = mark.kwargs.get("ids")
        expanded = []
        for kwargs, label in combos:
            for i, values in enumerate(argvalues):
                if hasattr(values, "values") and hasattr(values, "marks"):  # a pytest.param
                    values = values.values
                    values = values[0] if len(names) == 1 else values
                row = dict(zip(names, [values] if len(names) == 1 else values))
                case_id = ids[i] if isinstance(ids, (list, tuple)) else str(i)
                expanded.append(({**kwargs, **row}, f"{label}[{case_id}]"))
        combos = expanded
    return [pytest.param(fn, kwargs, id=label) for kwargs, label in combos]


def _asks_health(fn, seen=()) -> bool:
    """Whether fn calls the module's `health`, itself or through a module function it
    calls: a test of something else there (the ConfigMap patch, say) is no case here."""
    if "health" in fn.__code__.co_names:
        return True
    helpers = [getattr(cases, n) for n in fn.__code__.co_names if inspect.isfunction(getattr(cases, n, None))]
    return any(_asks_health(h, (*seen, fn)) for h in helpers if h not in seen and h is not fn)


TESTS = {name: fn for name, fn in vars(cases).items() if name.startswith("test_") and inspect.isfunction(fn)}
CASES = [p for name, fn in TESTS.items() if _asks_health(fn) for p in _expand(name, fn)]


@pytest.fixture(scope="module")
def lua_health() -> Path:
    if shutil.which("go") is None:  # build.sh's cache key names the Go version
        if os.environ.get("CI"):
            pytest.fail("the gopher-lua runner is built with Go, which is not on PATH; CI must run these tests")
        pytest.skip("the gopher-lua runner is built with Go, which is not on PATH")
    folder = cached_dir("trainer")
    if folder is None and (os.environ.get("CI") or building("trainer")):
        folder = build_dir("trainer")
    if folder is None:
        pytest.skip("the gopher-lua runner is not built: `make trainer-bin` (bash tests/cluster/build.sh --set trainer) builds it")
    return folder / "bin" / "lua-health"


def gopher_lua(runner: Path, script: str, obj: dict, tmp: Path) -> tuple[str, str]:
    (tmp / "health.lua").write_text(script)
    r = subprocess.run([str(runner), str(tmp / "health.lua")], input=json.dumps(obj), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"lua-health failed under gopher-lua: {r.stderr.strip()}"
    got = json.loads(r.stdout)
    return got["status"], got["message"]


def test_the_cases_were_found():
    asking = [name for name, fn in TESTS.items() if _asks_health(fn)]
    assert asking and len(CASES) >= len(asking), [p.id for p in CASES]
    assert {p.id.split("[")[0] for p in CASES} == set(asking)


@pytest.mark.parametrize("test, kwargs", CASES)
def test_same_answer_under_gopher_lua(test, kwargs, lua_health, monkeypatch, tmp_path):
    lupa_health = cases.health
    answers = []

    def both(obj, *args, **kw):
        under_lupa = lupa_health(obj, *args, **kw)
        under_gopher = gopher_lua(lua_health, cases.SCRIPT, obj, tmp_path)
        assert under_gopher == tuple(under_lupa), f"gopher-lua {under_gopher} != lupa {tuple(under_lupa)} for {obj}"
        answers.append(under_gopher)
        return under_gopher

    monkeypatch.setattr(cases, "health", both)
    test(**kwargs)
    assert answers, f"{test.__name__} asked no health: nothing was compared"


def test_the_runner_reports_an_invalid_status_as_argo_cd_does(lua_health, tmp_path):
    script = 'return {status = "Fine", message = "x"}'
    assert gopher_lua(lua_health, script, {}, tmp_path) == ("Unknown", "Lua returned an invalid health status")


def test_the_runner_offers_only_argo_cd_s_libraries(lua_health, tmp_path):
    # Argo CD opens package, base, table and an os of time and date only (useOpenLibs off):
    # a script calling string.format or os.getenv fails there, and here.
    for call in ("string.format('%d', 1)", "os.getenv('HOME')", "io.write('x')"):
        (tmp_path / "s.lua").write_text(f"local x = {call}\nreturn {{status = 'Healthy', message = ''}}")
        r = subprocess.run([str(lua_health), str(tmp_path / "s.lua")], input="{}", capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "attempt to" in r.stderr, (call, r.stdout, r.stderr)
    script = "return {status = 'Healthy', message = table.concat({'a', 'b'}, ',') .. os.date('!%Y', 0)}"
    assert gopher_lua(lua_health, script, {}, tmp_path) == ("Healthy", "a,b1970")
