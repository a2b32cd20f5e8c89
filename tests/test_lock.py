"""requirements.lock pins what pyproject.toml asks for, and every install path uses it.

pyproject.toml keeps ranges (kjob is also a library); the lock fixes the whole tree for
`make test`, `make demo`, the images and the benchmarks. `make lock` regenerates it.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# uv's line annotation names the project for a requirement that pyproject.toml states itself.
FROM_PYPROJECT = "kjob (pyproject.toml)"


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [Requirement(r) for r in project["dependencies"]] + [Requirement(r) for group in extras.values() for r in group]


def lock_entries() -> list[tuple[str, Version, Marker | None, str]]:
    """(name, pinned version, marker, annotation) for every line of the lock."""
    entries = []
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, _, note = line.partition("#")
        req = Requirement(spec.strip())
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"not an exact pin: {line}"
        entries.append((canonicalize_name(req.name), Version(pins[0].version), req.marker, note.strip()))
    return entries


def applies(marker: Marker | None, python: str) -> bool:
    env = {"python_full_version": python, "python_version": ".".join(python.split(".")[:2])}
    return marker is None or marker.evaluate(env)


@pytest.mark.parametrize("python", ["3.10.12", "3.11.7", "3.12.3"])
def test_every_requirement_of_pyproject_is_pinned_in_the_lock_within_its_range(python):
    # The three Pythons kjob runs on: the MindSpore image's (Ubuntu 22.04), this machine's,
    # and the PyTorch image's (Ubuntu 24.04).
    pins: dict[str, list[Version]] = {}
    for name, version, marker, _ in lock_entries():
        if applies(marker, python):
            pins.setdefault(name, []).append(version)
    for req in pyproject_requirements():
        name = canonicalize_name(req.name)
        assert len(pins.get(name, [])) == 1, f"{req}: the lock has {pins.get(name)} for Python {python}; run `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), \
            f"{req}: the lock pins {pins[name][0]}, outside the range; run `make lock`"


def test_the_lock_was_compiled_from_this_pyproject():
    # A dependency added to or removed from pyproject.toml without `make lock` shows here:
    # uv marks every package that pyproject.toml asks for by name.
    direct = {canonicalize_name(r.name) for r in pyproject_requirements()}
    marked = {name for name, _, _, note in lock_entries() if FROM_PYPROJECT in note}
    assert marked == direct, f"only in pyproject.toml: {sorted(direct - marked)}; only in the lock: {sorted(marked - direct)}; run `make lock`"


def test_this_environment_is_the_lock():
    # `make test` installs with `uv pip sync requirements.lock`: what runs the tests is
    # exactly what the lock says, for this Python.
    python = ".".join(map(str, sys.version_info[:3]))
    wrong = []
    for name, version, marker, _ in lock_entries():
        if not applies(marker, python):
            continue
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed, locked {version}")
            continue
        if installed != version:
            wrong.append(f"{name}: installed {installed}, locked {version}")
    assert wrong == [], "the environment differs from requirements.lock (run `make test`, which syncs it):\n" + "\n".join(wrong)


INSTALLS = re.compile(r"\b(?:pip|uv pip) (?:install|sync)\b[^\n]*")


@pytest.mark.parametrize("path", ["Makefile", "images/pytorch/Dockerfile", "images/mindspore/Dockerfile", "BENCHMARKS.md"])
def test_every_install_path_takes_its_versions_from_the_lock(path):
    text = (ROOT / path).read_text().replace("\\\n", " ")
    # Commands, not prose: recipe lines of the Makefile, RUN lines, indented code in Markdown.
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    if path.endswith(".md"):
        lines = [line for line in lines if line.startswith("    ")]
    installs = INSTALLS.findall("\n".join(lines))
    assert installs, f"{path}: no install command found"
    for command in installs:
        if '"uv==$(UV_VERSION)"' in command:  # the installer itself, pinned beside the lock
            continue
        uses_lock = re.search(r"(?:-c|--constraint|-r) +(?:\$\(LOCK\)|requirements\.lock)(?![\w.])|sync .*(?:\$\(LOCK\)|requirements\.lock)", command)
        assert uses_lock or "--no-deps" in command, f"{path}: installs without the lock: {command}"
    if path.startswith("images/"):
        assert "requirements.lock" in (ROOT / path).read_text().split("COPY pyproject.toml", 1)[1].splitlines()[0]
        assert "!requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()
