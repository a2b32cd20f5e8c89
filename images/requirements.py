"""Prints the requirements pyproject.toml declares for kjob and the extras named on the
command line, one a line, for the images' dependency layer:

    python3 images/requirements.py pyproject.toml pytorch mpi dali > /tmp/requirements.txt
    pip install -c requirements.lock -r /tmp/requirements.txt

That layer copies only pyproject.toml, requirements.lock and this file, so a change to the
sources does not reinstall torch; the project itself follows with `pip install --no-deps`.
Runs on the images' system Python (3.10 on Ubuntu 22.04 has no tomllib: pip's vendored
tomli reads the file there)."""

from __future__ import annotations

import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    """The project's dependencies, then each extra's, in file order.

    Raises KeyError for an extra pyproject.toml does not define."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        for req in project["optional-dependencies"][extra]:
            # A self-reference ("kjob[mpi]") would install the project itself.
            if re.match(rf"{re.escape(project['name'])}\b", req):
                raise ValueError(f"extra {extra} refers to the project itself: {req}")
            lines.append(req)
    return lines


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2:])))
