"""`pip install .` (a real wheel, not the editable install the tests run from) gives a
working `kjob render`: the templates and trainer configs travel as package data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from timing import scaled

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_the_wheel_renders_from_its_own_files(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=scaled(240))
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("kjob-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"kjob/templates/mpijob.yaml.j2", "kjob/templates/pytorchjob.yaml.j2"} <= set(names)
    assert "kjob_trainer/configs/resnext50_mindcv.yaml" in names
    # Every room of the house travels; the repository tools (tools/) do not.
    for package in ("spec", "render", "cluster", "local", "transfer"):
        assert f"kjob/{package}/__init__.py" in names, package
    assert not [n for n in names if "render_examples" in n or "spec_docs" in n]
    # ...and so does every room of the trainer, with the launcher's `python -m` entry.
    for package in ("common", "torch", "mindspore", "launch"):
        assert f"kjob_trainer/{package}/__init__.py" in names, package
    assert {"kjob_trainer/launch/__main__.py", "kjob_trainer/torch/train.py", "kjob_trainer/train.py"} <= set(names)

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # The unpacked wheel comes first on sys.path, ahead of the editable install's finder.
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import kjob, sys; from kjob.cli import main; "
            "assert kjob.__file__.startswith(sys.argv[1]), kjob.__file__; "
            "sys.argv = ['kjob', 'render', sys.argv[2]]; main()")
    out = subprocess.run([sys.executable, "-c", code, str(target), str(ROOT / "examples" / "resnext50.yaml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=scaled(60))
    assert out.returncode == 0, out.stderr
    assert "kind: MPIJob" in out.stdout and "kjob_trainer.train" in out.stdout
    # ...and exactly what the source tree renders.
    editable = subprocess.run([sys.executable, "-m", "kjob", "render", str(ROOT / "examples" / "resnext50.yaml")],
                              capture_output=True, text=True, timeout=scaled(60))
    assert out.stdout == editable.stdout


def test_each_framework_extra_has_what_the_shared_trainer_modules_import():
    """The trainer's framework-neutral modules (every one outside torch/ and mindspore/) run
    in both images: what they import from outside the standard library must come with the
    base dependencies or with each framework's extra. (The MindSpore image had no
    tensorboard, which rank 0 imports for its scalars: tests/node/test_e2e.py found it.)"""
    import ast
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name_of = lambda req: re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
    dists = packages_distributions()
    imported = set()
    package = ROOT / "trainer" / "kjob_trainer"
    for path in package.rglob("*.py"):
        if path.relative_to(package).parts[0] in ("torch", "mindspore"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("kjob_trainer", "__future__")}
    needed = {dists[m][0].lower().replace("_", "-") for m in third_party}
    assert "tensorboard" in needed
    for extra in ("pytorch", "mindspore"):
        provided = {name_of(r) for r in project["dependencies"] + project["optional-dependencies"][extra]}
        assert needed <= provided, f"extra {extra} lacks {sorted(needed - provided)}"
