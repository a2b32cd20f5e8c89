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
